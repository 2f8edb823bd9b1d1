"""Shared pieces of the model tests: a tiny config, random params, inputs.

(Named test_model_* to live with the model tests; it holds no tests itself.)
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from idjax import models


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      channels=3, patch_size=(1, 4, 4), width=32, depth=2, num_heads=2, mlp_ratio=2.0,
      text_width=32, text_layers=1, text_vocab_size=64, text_len=6, num_identity_tokens=4,
      identity_layers=1, reference_mode="mean", max_characters=2, use_separator=True,
      identity_routing="hard", temporal_causal=False, attention_impl="xla", scan_blocks=True,
      remat_policy="none", param_dtype="float32", dtype="float32"))
  cfg.update(overrides)
  return cfg


def randomize(params, seed=1, scale=0.3):
  """Replaces every parameter by N(0, scale^2) noise (keeping logical boxes).

  Zero-initialised gates and output projections make a fresh model the
  identity map; tests of what mixes with what need every path switched on.
  """
  # NumPy, not jax.random: one threefry kernel per leaf costs far more
  # compile time than the model itself on 2 CPU cores.
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  new = [jnp.asarray(scale * rng.standard_normal(l.shape), l.dtype) for l in leaves]
  return jax.tree.unflatten(treedef, new)


def random_inputs(cfg, *, batch=2, frames=4, size=16, chars=2, refs=3, seed=0,
                  face_dim=8, feat_dim=8, cells=4, masks="boxes"):
  """Random (x, t, text_tokens, identity, strength) with face masks as boxes.

  Character c's face is a square in a different quadrant, so faces do not
  overlap and some tokens are outside every face.
  """
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, frames, size, size, cfg.channels)).astype(np.float32)
  t = rng.uniform(size=(batch,)).astype(np.float32)
  tokens = rng.integers(1, 40, size=(batch, cfg.text_len)).astype(np.int32)
  tokens[:, cfg.text_len // 2:] = 0
  face_masks = None
  if masks == "boxes":
    face_masks = np.zeros((batch, chars, frames, size, size), np.float32)
    half = size // 2
    for c in range(chars):
      y0, x0 = (c // 2) * half, (c % 2) * half
      face_masks[:, c, :, y0:y0 + half, x0:x0 + half] = 1.0
  identity = models.IdentityInputs(
      ref_embeddings=jnp.asarray(rng.normal(size=(batch, chars, refs, face_dim)), jnp.float32),
      ref_features=jnp.asarray(rng.normal(size=(batch, chars, refs, cells, feat_dim)), jnp.float32),
      ref_valid=jnp.ones((batch, chars, refs), bool),
      char_valid=jnp.ones((batch, chars), bool),
      face_masks=None if face_masks is None else jnp.asarray(face_masks))
  return (jnp.asarray(x), jnp.asarray(t), jnp.asarray(tokens), identity,
          jnp.full((batch,), 0.8, jnp.float32))


def init_random(model, args, seed=1, scale=0.3):
  """Random params of the right shapes, without compiling `init`."""
  params = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  return randomize(nn.meta.unbox(params), seed, scale)


def setup(frames=4, size=16, **overrides):
  """(model, jitted apply, random params, random inputs) for a tiny config.

  Cached on the full config, so tests on the same config share one
  compilation (the tests run on 2 shared CPU cores).
  """
  return _setup(frames, size, tuple(sorted(tiny_config(**overrides).items())))


@functools.lru_cache(maxsize=None)
def _setup(frames, size, items):
  cfg = tiny_config(**dict(items))
  model = models.build_model(cfg)
  args = random_inputs(cfg, frames=frames, size=size)
  params = init_random(model, args)
  return model, jax.jit(model.apply), params, args
