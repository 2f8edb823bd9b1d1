"""The train state, the optimizer that updates it, and the guarded update.

Everything a bit-identical resume needs is in `TrainState`: the step (which,
with `rng`, addresses every random draw and, with the data seed, every batch),
params, their EMA, the optimizer state, and the non-finite counters. Both
trainers (the video model's and the face encoder's) keep one and update it
with `apply_gradients`.

Frozen backbone (train.trainable = "adapters"): only the params a
`trainable_filter` keeps are trained. The step differentiates just those
(the backbone's weight gradients are never computed), and the optimizer
state and the EMA hold just those, as a pruned tree of the same nested
dicts: a frozen leaf's EMA is the leaf itself, so it is stored once, in
`params` (readers complete the EMA from there: idjax.restore.restore_ema).
"""

import flax
import jax
import jax.numpy as jnp
import optax

# Pruned-tree helpers, shared with inference (which must not import the trainer).
from idjax.restore import merge, partition, split_by


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 [], steps taken (skipped ones included)
  params: dict
  # None: a run without an EMA (the face encoder). Only the trained params'
  # EMA: all of `params`, or the adapters' pruned tree (module docstring).
  ema_params: dict | None
  opt_state: optax.OptState  # of the trained params only
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
  """AdamW on `learning_rate_schedule`; returns (tx, schedule).

  Reads lr, steps, warmup_steps, weight_decay and grad_clip (global-norm
  clipping before AdamW; None: none, as the face-encoder configs, which have
  no such key, train).
  """
  schedule = learning_rate_schedule(train_config)
  adamw = optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=train_config.weight_decay)
  grad_clip = train_config.get("grad_clip")
  if grad_clip is None:
    return adamw, schedule
  return optax.chain(optax.clip_by_global_norm(grad_clip), adamw), schedule


def trainable_filter(trainable: str, model):
  """None (train every param) or a predicate on param paths (tuples of
  names) that is True for the params to train.

  "adapters": the identity path, the params under a scope the model names
  in its `adapter_scopes` (at any depth, so the per-block identity
  attentions inside scanned blocks count).
  """
  if trainable == "all":
    return None
  if trainable != "adapters":
    raise ValueError(f"train.trainable must be 'all' or 'adapters', got {trainable!r}.")
  scopes = tuple(getattr(model, "adapter_scopes", ()))
  if not scopes:
    raise ValueError(f"{type(model).__name__} names no adapter params (adapter_scopes), so "
                     "train.trainable='adapters' would train nothing.")
  return lambda path: any(name in scopes for name in path)


def create_state(params, tx, seed: int, ema: bool = True, trainable=None) -> TrainState:
  """A fresh state (`ema=False`: no EMA params). Works on boxed (logically
  partitioned) params too: optax maps over the boxes, so the Adam moments
  inherit the params' axis names and `nn.get_partition_spec` of the state
  lays out every leaf.

  `trainable`: a `trainable_filter` predicate (None: all params train); the
  optimizer state and the EMA then cover only the params it keeps.
  """
  trained = params if trainable is None else partition(params, trainable)[0]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, ema_params=trained if ema else None,
      opt_state=tx.init(trained), rng=jax.random.key_data(jax.random.key(seed)),
      nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32))


def ema_update(ema, params, decay):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def apply_gradients(state: TrainState, tx, grads, loss, ema_decay=None):
  """One optax update of `state`, unless the loss or the gradient is not finite.

  `grads` are for all params, or (frozen backbone) a pruned tree of the
  trained ones; the other params are left as they are. A non-finite step
  leaves params, EMA and optimizer state untouched and counts in `nonfinite`
  (consecutive) and `skipped` (total); the step counter moves on either
  way. The EMA (when the state has one) moves with `ema_decay`.

  Returns (new state, metrics: grad_norm, applied, nonfinite, skipped).
  """
  everything = jax.tree.structure(grads) == jax.tree.structure(state.params)
  trained = state.params
  if not everything:
    trained = split_by(state.params, grads)[0]
  grad_norm = optax.global_norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, trained)
  params = optax.apply_updates(trained, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  ema = state.ema_params
  if ema is not None:
    ema = keep(ema_update(ema, params, ema_decay), ema)
  params = keep(params, trained)
  new_state = state.replace(
      step=state.step + 1, params=params if everything else merge(state.params, params),
      ema_params=ema,
      opt_state=keep(opt_state, state.opt_state),
      nonfinite=jnp.where(ok, 0, state.nonfinite + 1),
      skipped=state.skipped + (~ok).astype(jnp.int32))
  return new_state, dict(grad_norm=grad_norm, applied=ok.astype(jnp.float32),
                         nonfinite=new_state.nonfinite, skipped=new_state.skipped)
