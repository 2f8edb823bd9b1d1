"""Identity encoder (vs. NumPy), mask routing, character permutation, the bank."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idjax import models
from idjax.models import blocks, dit, identity
from helpers import model_setup, randomize, tiny_model_config


def _encoder(cfg):
  """The IdentityEncoder that VideoDiT builds for a model config."""
  return identity.IdentityEncoder(cfg.width, cfg.num_identity_tokens, cfg.identity_layers,
                                  cfg.num_heads, cfg.mlp_ratio, cfg.reference_mode, "xla")


# ---------------------------------------------------------------- NumPy reference


def _ln(x, p=None):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(var + 1e-6)
  return y if p is None else y * p["scale"] + p["bias"]


def _gelu(x):  # flax's default (tanh approximation)
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _attend(x, kv, p, mask):
  """x [Lq, D], kv [Lk, D], mask [Lk] bool -> [Lq, D] (no row is fully masked here)."""
  q = np.einsum("ld,dnh->lnh", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("ld,dnh->lnh", kv, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("ld,dnh->lnh", kv, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("qnh,knh->nqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[None, None, :], logits, -np.inf)
  with np.errstate(invalid="ignore"):  # fully masked rows (unused) give NaN
    w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  o = np.einsum("nqk,knh->qnh", w, v)
  return np.einsum("qnh,nhd->qd", o, p["out"]["kernel"])


def _resample(keys, mask, p, layers):
  x = p["queries"].copy()
  for i in range(layers):
    x = x + _attend(_ln(x, p[f"norm_q_{i}"]), _ln(keys, p[f"norm_kv_{i}"]), p[f"attn_{i}"], mask)
    m = p[f"mlp_{i}"]
    h = _gelu(_ln(x, p[f"norm_mlp_{i}"]) @ m["fc1"]["kernel"] + m["fc1"]["bias"])
    x = x + h @ m["fc2"]["kernel"] + m["fc2"]["bias"]
  return _ln(x, p["norm_out"])


def numpy_identity_tokens(p, emb, feats, ref_valid, mode, layers):
  """Independent reference of IdentityEncoder for one sample: [C, Q, D]."""
  out = []
  for c in range(emb.shape[0]):
    keys = [np.concatenate([feats[c, k] @ p["cell_proj"]["kernel"] + p["cell_proj"]["bias"],
                            (emb[c, k] @ p["embedding_proj"]["kernel"]
                             + p["embedding_proj"]["bias"])[None]]) + p["key_slot"]
            for k in range(emb.shape[1])]
    if mode == "mean":
      per_ref = [_resample(kk, np.ones(len(kk), bool), p["resampler"], layers) for kk in keys]
      valid = [r for r, ok in zip(per_ref, ref_valid[c]) if ok]
      out.append(np.mean(valid, axis=0) if valid else np.zeros_like(per_ref[0]))
    else:
      mask = np.repeat(ref_valid[c], len(keys[0]))
      out.append(_resample(np.concatenate(keys), mask, p["resampler"], layers))
  return np.stack(out)


@pytest.mark.parametrize("mode", ["mean", "joint"])
def test_identity_tokens_match_numpy(mode):
  cfg = tiny_model_config(reference_mode=mode, identity_layers=2)
  rng = np.random.default_rng(0)
  b, c, k, cells, f, d_face = 2, 2, 3, 4, 5, 6
  inputs = models.IdentityInputs(
      ref_embeddings=jnp.asarray(rng.normal(size=(b, c, k, d_face)), jnp.float32),
      ref_features=jnp.asarray(rng.normal(size=(b, c, k, cells, f)), jnp.float32),
      ref_valid=jnp.array([[[True, False, True], [True, True, True]],
                           [[False, False, True], [False, False, False]]]),
      char_valid=jnp.array([[True, True], [True, True]]),
      face_masks=None)
  enc = _encoder(cfg)
  shapes = jax.eval_shape(enc.init, jax.random.key(0), inputs)["params"]
  params = randomize(nn.meta.unbox(shapes), seed=3, scale=0.5)
  tokens, valid = jax.jit(enc.apply)({"params": params}, inputs)
  chex.assert_shape(tokens, (b, c, cfg.num_identity_tokens, cfg.width))
  np.testing.assert_array_equal(valid, [[True, True], [True, False]])
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  for i in range(b):
    ref = numpy_identity_tokens(p, np.asarray(inputs.ref_embeddings[i], np.float64),
                                np.asarray(inputs.ref_features[i], np.float64),
                                np.asarray(inputs.ref_valid[i]), mode, cfg.identity_layers)
    for ch in range(c):
      if valid[i, ch]:
        np.testing.assert_allclose(tokens[i, ch], ref[ch], rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------- routing


def _two_faces(b=1, t=2, size=16):
  """Character 0 in the left half, character 1 in the top-right quarter."""
  m = np.zeros((b, 2, t, size, size), np.float32)
  m[:, 0, :, :, : size // 2] = 1
  m[:, 1, :, : size // 2, size // 2:] = 1
  return jnp.asarray(m)


@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_other_character_does_not_reach_this_face(routing):
  cfg = tiny_model_config(identity_routing=routing)
  rng = np.random.default_rng(0)
  b, t, size, q, d = 1, 2, 16, cfg.num_identity_tokens, cfg.width
  masks = _two_faces(b, t, size)
  x = jnp.asarray(rng.normal(size=(b, t, 16, d)), jnp.float32)
  tokens = jnp.asarray(rng.normal(size=(b, 2, q, d)), jnp.float32)
  valid = jnp.ones((b, 2), bool)
  layer = blocks.IdentityAttention(cfg.num_heads, "xla")
  ident = dit.route_by_masks(masks, tokens, valid, routing, cfg.patch_size)
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x, ident, jnp.ones((b,)))["params"]
  params = randomize(nn.meta.unbox(shapes), seed=5)
  run = jax.jit(lambda tok: layer.apply(
      {"params": params}, x, dit.route_by_masks(masks, tok, valid, routing, cfg.patch_size),
      jnp.ones((b,))))
  y0 = np.asarray(run(tokens))
  y1 = np.asarray(run(tokens.at[:, 1].add(1.0)))        # character B's tokens change
  coverage = np.asarray(dit.pool_masks(masks, cfg.patch_size))[0]    # [T, P, C]
  face_a, face_b = coverage[..., 0] >= 0.5, coverage[..., 1] >= 0.5
  outside = ~face_a & ~face_b
  assert face_a.any() and face_b.any() and outside.any()
  np.testing.assert_array_equal(y1[0][face_a], y0[0][face_a])
  assert np.abs(y1[0][face_b] - y0[0][face_b]).max() > 1e-3
  np.testing.assert_array_equal(y0[0][outside], 0.0)    # no face, no identity update


def test_character_references_do_not_reach_other_face_through_encoder():
  """End to end through the identity encoder: B's references -> only B's face."""
  model, _, params, args = model_setup()
  identity_in = args[3]
  cfg = tiny_model_config()   # model_setup's
  masks = _two_faces(b=2, t=4)
  identity_in = identity_in.replace(face_masks=masks)
  enc = _encoder(cfg)

  def update(ident_in):
    tokens, valid = enc.apply({"params": params["identity"]}, ident_in)
    ctx = dit.route_by_masks(ident_in.face_masks, tokens, valid, "hard", cfg.patch_size)
    x = jnp.ones((2, 4, 16, cfg.width)) * jnp.arange(cfg.width) / cfg.width
    layer_params = jax.tree.map(lambda p: p[0], params["blocks"]["identity"])
    return blocks.IdentityAttention(cfg.num_heads, "xla").apply({"params": layer_params}, x, ctx, jnp.ones((2,)))

  update = jax.jit(update)
  y0 = np.asarray(update(identity_in))
  moved = identity_in.replace(ref_features=identity_in.ref_features.at[:, 1].add(2.0))
  y1 = np.asarray(update(moved))
  face_a = np.asarray(dit.pool_masks(masks, cfg.patch_size))[..., 0] >= 0.5
  np.testing.assert_array_equal(y1[face_a], y0[face_a])
  assert np.abs(y1 - y0).max() > 1e-3


def _permute(ident, perm):
  take = lambda a: a[:, perm]
  return ident.replace(ref_embeddings=take(ident.ref_embeddings),
                       ref_features=take(ident.ref_features), ref_valid=take(ident.ref_valid),
                       char_valid=take(ident.char_valid), face_masks=take(ident.face_masks))


def test_permuting_characters_leaves_output_unchanged_under_hard_routing():
  _, apply, params, (x, t, tokens, ident, s) = model_setup()
  y = apply({"params": params}, x, t, tokens, ident, s)
  y_perm = apply({"params": params}, x, t, tokens, _permute(ident, [1, 0]), s)
  np.testing.assert_allclose(y_perm, y, atol=1e-5, rtol=1e-5)
  # Swapping references WITHOUT their masks does change it (routing is live).
  swapped = ident.replace(face_masks=ident.face_masks[:, ::-1])
  y_swap = apply({"params": params}, x, t, tokens, swapped, s)
  assert np.abs(np.asarray(y_swap - y)).max() > 1e-3


def test_character_bank_layout():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.normal(size=(2, 3, 4, 8)), jnp.float32)
  valid = jnp.array([[True, False, True], [False, False, False]])
  bank_mod = identity.CharacterBank(max_characters=4, use_separator=True)
  variables = bank_mod.init(jax.random.key(0), tokens, valid)
  bank, mask = bank_mod.apply(variables, tokens, valid)
  chex.assert_shape(bank, (2, 3 * 5, 8))
  p = nn.meta.unbox(variables)["params"]
  for c in range(3):
    np.testing.assert_allclose(bank[:, c * 5:c * 5 + 4],
                               tokens[:, c] + p["character_index"][c], atol=1e-6)
    np.testing.assert_allclose(bank[:, c * 5 + 4], np.broadcast_to(p["separator"][0], (2, 8)))
  np.testing.assert_array_equal(mask, np.repeat(np.asarray(valid), 5, axis=1))
  no_sep = identity.CharacterBank(max_characters=4, use_separator=False)
  bank2, _ = no_sep.apply({"params": {"character_index": p["character_index"]}}, tokens, valid)
  chex.assert_shape(bank2, (2, 12, 8))
  with pytest.raises(ValueError, match="max_characters"):
    bank_mod.init(jax.random.key(0), jnp.zeros((1, 5, 4, 8)), jnp.ones((1, 5), bool))


def _layout_inputs(masks, char_valid):
  b, c = char_valid.shape
  return identity.IdentityInputs(
      ref_embeddings=jnp.zeros((b, c, 1, 4)), ref_features=jnp.zeros((b, c, 1, 1, 4)),
      ref_valid=jnp.ones((b, c, 1), bool), char_valid=jnp.asarray(char_valid),
      face_masks=jnp.asarray(masks))


def test_layout_map_gives_face_relative_coordinates():
  """A hard rectangle of rows 4..11, columns 2..9 on 16x16: coverage 1 inside,
  u and v are (coord - centre) / (2 std) of the rectangle, zero outside."""
  masks = np.zeros((1, 1, 2, 16, 16), np.float32)
  masks[..., 4:12, 2:10] = 1
  got = np.asarray(dit.layout_map(_layout_inputs(masks, np.ones((1, 1), bool)),
                                  jnp.ones((1,)), (1, 2, 16, 16, 3)))
  chex.assert_shape(got, (1, 2, 16, 16, 3))
  centres = (np.arange(16) + 0.5) / 16
  rows, cols = centres[4:12], centres[2:10]
  u = (centres - rows.mean()) / (2 * rows.std() + 1e-3)
  v = (centres - cols.mean()) / (2 * cols.std() + 1e-3)
  inside = masks[0, 0, 0] > 0
  np.testing.assert_array_equal(got[0, 1, ..., 0], masks[0, 0, 0])
  np.testing.assert_allclose(got[0, 0, ..., 1], np.where(inside, u[:, None], 0), atol=1e-5)
  np.testing.assert_allclose(got[0, 0, ..., 2], np.where(inside, v[None, :], 0), atol=1e-5)
  # The extreme rows of an 8-row rectangle sit at +-3.5 / (2 sqrt(63 / 12)) = +-0.76
  # (the 1e-3 keeps a one-pixel face finite).
  edge = (3.5 / 16) / (2 * np.sqrt(63 / 12) / 16 + 1e-3)
  np.testing.assert_allclose(got[0, 0, [4, 11], 5, 1], [-edge, edge], atol=1e-5)


def test_layout_map_is_zero_without_a_usable_layout():
  masks = np.zeros((3, 2, 1, 8, 8), np.float32)
  masks[:, 0, :, 2:6, 2:6] = 1
  masks[:, 1, :, 0:4, 4:8] = 1
  masks[1] = 1.0                                    # all-ones: "no layout given"
  valid = np.array([[True, False], [True, True], [True, True]])
  strength = jnp.array([1.0, 1.0, 0.0])
  got = np.asarray(dit.layout_map(_layout_inputs(masks, valid), strength, (3, 1, 8, 8, 3)))
  np.testing.assert_array_equal(got[0, ..., 0], masks[0, 0])   # invalid character 1 left out
  np.testing.assert_array_equal(got[1], 0.0)                   # all-ones masks
  np.testing.assert_array_equal(got[2], 0.0)                   # identity_strength 0
  none = dit.layout_map(None, None, (3, 1, 8, 8, 3))
  np.testing.assert_array_equal(np.asarray(none), 0.0)


def test_train_masks_are_the_sampling_masks():
  """The trainer's jnp masks from boxes equal the sampler's NumPy masks."""
  from idjax import layout
  boxes = np.array([[[0.1, 0.2, 0.6, 0.7], [0.3, 0.35, 0.9, 0.8], [0, 0, 0, 0]]], np.float32)
  np.testing.assert_allclose(np.asarray(layout.face_masks(boxes, 32, 32, xp=jnp)),
                             layout.face_masks(boxes, 32, 32), atol=1e-6)
