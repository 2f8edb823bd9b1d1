"""The sharded train step: mesh invariance, non-finite guard, accumulation.

Most tests use a small stand-in for VideoDiT with the same call signature and
logical axis names (it compiles in seconds); `test_real_model_step` runs the
real model and is marked slow (its compile takes a minute on 2 busy cores).
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from idjax import configlib, sharding
from idjax.face.encoder import encoder_from_config
from idjax.face.frozen import FrozenFaceEncoder
from idjax.train import trainer

B, C, T, H, K, L = 8, 1, 4, 16, 2, 8


def _dense(features, names, name):
  return nn.Dense(features, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[-1:]))


class TinyVideoModel(nn.Module):
  """VideoDiT's interface on a per-pixel MLP conditioned on t, text and identity."""
  width: int = 16

  @nn.compact
  def __call__(self, x, t, text_tokens, identity=None, identity_strength=None, *,
               deterministic=True):
    h = _dense(self.width, ("conv_in", "embed"), "embed_in")(x)
    h = nn.with_logical_constraint(h, ("batch", "frames", None, None, "embed"))
    cond = _dense(self.width, (None, "embed"), "time")(t[:, None])
    text = jnp.mean((text_tokens > 0).astype(jnp.float32) * text_tokens, axis=1, keepdims=True)
    cond = cond + _dense(self.width, (None, "embed"), "text")(text / 10.0)
    if identity is not None:
      valid = (identity.ref_valid & identity.char_valid[..., None]).astype(jnp.float32)
      ref = jnp.sum(identity.ref_embeddings * valid[..., None], axis=(1, 2))
      ref = ref / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1.0)[:, None]
      cond = cond + identity_strength[:, None] * _dense(self.width, (None, "embed"), "id")(ref)
      mask = jnp.max(identity.face_masks, axis=1)[..., None]          # [B, T, H, W, 1]
      h = h * (1.0 + mask)
    h = nn.gelu(h + cond[:, None, None, None, :])
    h = nn.gelu(_dense(2 * self.width, ("embed", "mlp"), "hidden")(h))
    return _dense(x.shape[-1], ("mlp", None), "out")(h)


def tiny_config():
  config = configlib.load_config_file("configs/tiny.py")
  d = config.data
  d.resolution, d.num_frames, d.reference_resolution = H, T, H
  d.text_len, d.num_references, d.max_characters = L, K, C
  m = config.model
  m.width, m.depth, m.num_heads, m.text_width, m.text_layers = 32, 1, 2, 32, 1
  m.num_identity_tokens, m.identity_layers = 4, 1
  tc = config.train
  tc.batch_size, tc.steps, tc.warmup_steps, tc.lr = B, 6, 2, 1e-2
  tc.id_loss_max_t, tc.id_loss_frames = 0.9, 3
  tc.log_every, tc.checkpoint_every = 1, 3
  return config


def tiny_encoder():
  fcfg = ml_collections.ConfigDict(dict(
      kind="face_encoder", architecture="resnet", input_size=8, width=4, num_stages=2,
      blocks_per_stage=1, groups=2, embed_dim=8))
  module = encoder_from_config(fcfg)
  params = nn.unbox(module.init(jax.random.key(7), jnp.zeros((1, 8, 8, 3))))["params"]
  return FrozenFaceEncoder(fcfg, params)


def numpy_batch(step, frames_dtype=np.uint8):
  """A deterministic batch of `B` examples for `step` (indices step*B ...)."""
  rng = np.random.default_rng(step)
  frames = rng.integers(0, 256, (B, T, H, H, 3), dtype=np.uint8)
  return dict(
      frames=frames if frames_dtype == np.uint8 else (frames / 127.5 - 1).astype(frames_dtype),
      boxes=np.tile(np.array([0.2, 0.2, 0.8, 0.8], np.float32), (B, C, T, 1)),
      identity_ids=np.zeros((B, C), np.int32),
      character_valid=np.ones((B, C), bool),
      references=rng.integers(0, 256, (B, C, K, H, H, 3), dtype=np.uint8),
      reference_valid=np.ones((B, C, K), bool),
      text_tokens=rng.integers(0, 20, (B, L)).astype(np.int32),
      index=np.arange(step * B, (step + 1) * B, dtype=np.int32))


def put_batch(batch, mesh, rules=sharding.DEFAULT_RULES):
  return {k: jax.device_put(v, sharding.batch_sharding(mesh, np.ndim(v), rules))
          for k, v in batch.items()}


class FakeBatches:
  """`batch_at(step)` like idjax.data.pipeline.GlobalBatches, from numpy_batch."""

  def __init__(self, mesh, nan_steps=()):
    self.mesh, self.nan_steps = mesh, set(nan_steps)

  def batch_at(self, step):
    batch = numpy_batch(step, np.float32)
    if step in self.nan_steps:
      batch["frames"][0, 0, 0, 0, 0] = np.nan
    return put_batch(batch, self.mesh)


def mesh_for(config, sizes):
  full = {**dict(data=1, fsdp=1, tensor=1, sequence=1), **sizes}
  config.mesh = ml_collections.ConfigDict(full)
  return trainer.build_mesh(config, jax.devices()[:int(np.prod(list(full.values())))])


def one_step(config, model, encoder, sizes, batch=None):
  mesh = mesh_for(config, sizes)
  setup = trainer.make_setup(config, model, encoder, mesh)
  state = setup.init()
  batch = put_batch(numpy_batch(0) if batch is None else batch, mesh)
  new_state, metrics = setup.run_step(state, batch)
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def encoder():
  return tiny_encoder()


# The default run checks one mesh mixing three axes; the rest are slow
# (each mesh is a fresh compile).
MESHES = [dict(data=2, fsdp=2, tensor=2),
          pytest.param(dict(data=8), marks=pytest.mark.slow),
          pytest.param(dict(fsdp=8), marks=pytest.mark.slow),
          pytest.param(dict(data=2, sequence=4), marks=pytest.mark.slow)]


@pytest.mark.parametrize("sizes", MESHES)
def test_step_is_mesh_invariant(encoder, sizes):
  config = tiny_config()
  model = TinyVideoModel()
  ref_state, ref_metrics = one_step(config, model, encoder, {})
  assert ref_metrics["applied"] == 1.0 and ref_metrics["identity_loss"] > 0
  init_state = jax.device_get(trainer.make_setup(
      config, model, encoder, mesh_for(config, {})).init())
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ref_state.params, init_state.params)
  assert max(jax.tree.leaves(moved)) > 1e-4  # the step did change the params
  state, metrics = one_step(config, model, encoder, sizes)
  for key in ("loss", "denoise_loss", "identity_loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=2e-5, err_msg=key)
  chex.assert_trees_all_close(state.params, ref_state.params, atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(state.ema_params, ref_state.ema_params, atol=1e-6, rtol=1e-5)


def test_nonfinite_batch_is_skipped(encoder):
  config = tiny_config()
  model = TinyVideoModel()
  mesh = mesh_for(config, dict(data=8))
  setup = trainer.make_setup(config, model, encoder, mesh)
  state = setup.init()
  before = jax.device_get(state)
  bad = numpy_batch(0, np.float32)
  bad["frames"][3, 1, 2, 2, 0] = np.nan
  state, metrics = setup.run_step(state, put_batch(bad, mesh))
  after = jax.device_get(state)
  assert not np.isfinite(metrics["loss"]) and float(metrics["applied"]) == 0.0
  assert int(after.step) == 1 and int(after.skipped) == 1 and int(after.nonfinite) == 1
  chex.assert_trees_all_equal(after.params, before.params)
  chex.assert_trees_all_equal(after.opt_state, before.opt_state)
  state, metrics = setup.run_step(state, put_batch(numpy_batch(1, np.float32), mesh))
  after = jax.device_get(state)
  assert float(metrics["applied"]) == 1.0
  assert int(after.nonfinite) == 0 and int(after.skipped) == 1


def test_grad_accumulation_matches_full_batch(encoder):
  config = tiny_config()
  config.train.lambda_id = 0.0  # identity weights are pooled per micro-batch
  model = TinyVideoModel()
  full_state, full = one_step(config, model, encoder, dict(data=2))
  config.train.grad_accum = 2
  acc_state, acc = one_step(config, model, encoder, dict(data=2))
  np.testing.assert_allclose(acc["loss"], full["loss"], rtol=1e-5)
  np.testing.assert_allclose(acc["grad_norm"], full["grad_norm"], rtol=1e-4)
  chex.assert_trees_all_close(acc_state.params, full_state.params, atol=1e-6, rtol=1e-5)


def test_randomness_follows_example_index(encoder):
  """Reordering the examples of a batch permutes the draws with them."""
  from idjax.train.step import draw_example_randomness
  config = tiny_config()
  root = jax.random.key(3)
  index = jnp.arange(8, dtype=jnp.int32)
  perm = np.array([3, 1, 7, 0, 2, 6, 5, 4])
  a = draw_example_randomness(config.train, root, 5, index, (8, T, H, H, 3))
  b = draw_example_randomness(config.train, root, 5, index[perm], (8, T, H, H, 3))
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key])[perm], b[key])


@pytest.mark.slow
def test_real_model_step(encoder):
  from idjax.models import build_model
  config = tiny_config()
  model = build_model(config.model)
  ref_state, ref = one_step(config, model, encoder, {})
  state, metrics = one_step(config, model, encoder, dict(data=2, fsdp=2, tensor=2))
  assert ref["applied"] == 1.0 and np.isfinite(ref["identity_loss"])
  np.testing.assert_allclose(metrics["loss"], ref["loss"], rtol=1e-4)
  chex.assert_trees_all_close(state.params, ref_state.params, atol=1e-5, rtol=1e-4)
