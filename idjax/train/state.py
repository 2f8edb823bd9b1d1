"""The train state and the optimizer that updates it.

Everything a bit-identical resume needs is in `TrainState`: the step (which,
with `rng`, addresses every random draw and, with the data seed, every batch),
params, their EMA, the optimizer state, and the non-finite counters.
"""

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 [], steps taken (skipped ones included)
  params: dict
  ema_params: dict
  opt_state: optax.OptState
  rng: jax.Array           # uint32 [2], raw key data of the run's root key
  nonfinite: jax.Array     # int32 [], consecutive steps with a non-finite loss/grad
  skipped: jax.Array       # int32 [], total steps not applied

  @property
  def root_key(self):
    return jax.random.wrap_key_data(self.rng)


def learning_rate_schedule(train_config):
  """Linear warmup to `lr`, then cosine decay to 0 at `steps`.

  Warmup starts at lr / warmup (not 0) so that the first step already moves
  the params.
  """
  warmup = max(int(train_config.warmup_steps), 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=train_config.lr / warmup, peak_value=train_config.lr, warmup_steps=warmup,
      decay_steps=max(int(train_config.steps), warmup + 1), end_value=0.0)


def make_optimizer(train_config):
  """AdamW after global-norm clipping; returns (tx, schedule)."""
  schedule = learning_rate_schedule(train_config)
  tx = optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=train_config.weight_decay))
  return tx, schedule


def create_state(params, tx, seed: int) -> TrainState:
  """A fresh state. Works on boxed (logically partitioned) params too: optax
  maps over the boxes, so the Adam moments inherit the params' axis names and
  `nn.get_partition_spec` of the state lays out every leaf."""
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
      opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)),
      nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32))


def ema_update(ema, params, decay):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
