"""The Wan 2.1 DiT against diffusers' WanTransformer3DModel (fixture from scripts/parity/wan_dit.py)."""

import os
import re

import chex
import einops
import flax.linen as nn
import jax
import numpy as np
import pytest

from idjax import sharding, weight_files
from idjax.models import rope
from idjax.models.wan import transformer
from idjax.models.wan import transformer_weights
from helpers import ROOT

FOLDER = os.path.join(ROOT, "tests", "fixtures", "wan_dit", "transformer")
IO = os.path.join(ROOT, "tests", "fixtures", "wan_dit", "io.npz")
RULES = sharding.DEFAULT_RULES


@pytest.fixture(scope="module")
def loaded():
  return transformer_weights.load_transformer(FOLDER)


def _channels_last(a):
  return einops.rearrange(a, "b c t h w -> b t h w c")


def test_matches_diffusers(loaded):
  model, params = loaded
  io = np.load(IO)
  x = _channels_last(io["latents"])  # [2, 3, 12, 20, 16]: 3 x 6 x 10 patches
  y = jax.jit(model.apply)({"params": params}, x, io["timestep"], io["text"])
  chex.assert_shape(y, x.shape[:4] + (model.out_channels,))
  chex.assert_type(y, np.float32)
  expected = _channels_last(io["output"])
  scale = np.abs(expected).max()
  assert scale > 1.0  # randomised norms: not a trivial output
  rel = np.abs(np.asarray(y) - expected).max() / scale
  print(f"max relative error vs diffusers (float64 reference): {rel:.3g}")
  assert rel <= 1e-4


def test_bfloat16_is_close_to_diffusers():
  """bfloat16 compute (params too) stays within bfloat16's resolution of the reference."""
  model, params = transformer_weights.load_transformer(
      FOLDER, dtype="bfloat16", param_dtype="bfloat16"
  )
  chex.assert_type(params["blocks"]["ffn_fc1"]["kernel"], jax.numpy.bfloat16)
  io = np.load(IO)
  y = jax.jit(model.apply)(
      {"params": params}, _channels_last(io["latents"]), io["timestep"], io["text"]
  )
  chex.assert_type(y, np.float32)
  expected = _channels_last(io["output"])
  rel = np.abs(np.asarray(y) - expected).max() / np.abs(expected).max()
  print(f"max relative error in bfloat16: {rel:.3g}")
  assert rel <= 3e-2


def test_wan_1_3b_config_has_diffusers_parameter_count():
  """Wan2.1-T2V-1.3B's transformer/config.json sizes give diffusers' 1,418,996,800 parameters."""
  fields = transformer_weights.transformer_fields(
      dict(
          num_attention_heads=12,
          attention_head_dim=128,
          ffn_dim=8960,
          num_layers=30,
          text_dim=4096,
          freq_dim=256,
          in_channels=16,
          out_channels=16,
      )
  )
  model = transformer.WanTransformer(**fields)
  x, t, text = np.zeros((1, 1, 2, 2, 16), np.float32), np.zeros((1,)), np.zeros((1, 1, 4096))
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, text)
  assert (
      sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.meta.unbox(abstract))) == 1_418_996_800
  )


def test_params_match_init_layout(loaded):
  """The converted tree is exactly what init makes: names, shapes, stacked layers."""
  model, params = loaded
  x, t, text = np.zeros((1, 1, 2, 2, 16), np.float32), np.zeros((1,)), np.zeros((1, 1, 32))
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x, t, text)["params"])
  chex.assert_trees_all_equal_shapes_and_dtypes(params, abstract)
  chex.assert_shape(params["blocks"]["attn1"]["query"]["kernel"], (2, 40, 2, 20))


def _diffusers_rope(grid, head_dim, theta=10_000.0, max_seq_len=1024):
  """cos, sin [L, head_dim] as diffusers' WanRotaryPosEmbed builds them, restated in NumPy."""
  h_dim = w_dim = 2 * (head_dim // 6)
  dims = (head_dim - h_dim - w_dim, h_dim, w_dim)
  cos, sin = [], []
  for axis, (size, dim) in enumerate(zip(grid, dims)):
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.outer(np.arange(max_seq_len), freqs)[:size]  # [size, dim/2]
    shape = [1, 1, 1, dim]
    shape[axis] = size
    expand = lambda a: np.broadcast_to(np.repeat(a, 2, axis=1).reshape(shape), tuple(grid) + (dim,))
    cos.append(expand(np.cos(table)))
    sin.append(expand(np.sin(table)))
  flat = lambda parts: np.concatenate(parts, -1).reshape(-1, head_dim)
  return flat(cos), flat(sin)


def test_rope_at_non_square_size():
  grid, head_dim = (3, 4, 7), 20
  assert transformer.rope_split(head_dim) == (8, 6, 6)
  assert transformer.rope_split(128) == (44, 42, 42)
  cos, sin = _diffusers_rope(grid, head_dim)
  q = np.random.default_rng(0).normal(size=(2, 3 * 4 * 7, 2, head_dim)).astype(np.float32)
  # diffusers: out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i] sin + x[2i+1] cos.
  even, odd = q[..., 0::2], q[..., 1::2]
  c, s = cos[None, :, None, 0::2], sin[None, :, None, 1::2]
  expected = np.stack([even * c - odd * s, even * s + odd * c], axis=-1).reshape(q.shape)
  angles = transformer.rope_angles(grid, head_dim)
  chex.assert_shape(angles, (3 * 4 * 7, head_dim // 2))
  got = rope.apply_rope(q, angles)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-6)
  # Token (f, h, w) = (2, 3, 5) turns its column channels by 5 * freq, so rows
  # and columns are not swapped at this non-square size.
  token = (2 * 4 + 3) * 7 + 5
  np.testing.assert_allclose(
      angles[token, 7:], 5.0 * 10_000.0 ** (-np.arange(0, 6, 2) / 6), rtol=1e-6
  )


def test_sharded_forward_matches_single_device(loaded, devices):
  model, params = loaded
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 8, 12, 16)).astype(np.float32)  # 4 frames: 2 per sequence shard
  t = np.array([500.0, 20.0], np.float32)
  text = rng.normal(size=(2, 5, 32)).astype(np.float32)
  expected = np.asarray(jax.jit(model.apply)({"params": params}, x, t, text))

  mesh = sharding.make_mesh(dict(fsdp=2, tensor=2, sequence=2), devices)
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, text)
  param_sh = sharding.tree_shardings(nn.get_partition_spec(abstract), mesh, RULES)["params"]
  x_sh = sharding.logical_to_sharding(("batch", "frames", None, None, None), mesh, RULES)
  in_sh = (x_sh, sharding.batch_sharding(mesh, 1, RULES), sharding.batch_sharding(mesh, 3, RULES))
  with sharding.activation_sharding(mesh, RULES):
    fn = jax.jit(
        lambda p, *a: model.apply({"params": p}, *a),
        in_shardings=(param_sh,) + in_sh,
        out_shardings=x_sh,
    )
    sharded_params = jax.device_put(params, param_sh)
    y = fn(sharded_params, *jax.device_put((x, t, text), in_sh))
  # The parameters really are split: ffn kernels (layers, embed, mlp) over fsdp x tensor.
  kernel = sharded_params["blocks"]["ffn_fc1"]["kernel"]
  assert len({str(s.index) for s in kernel.addressable_shards}) == 4
  assert y.sharding.is_equivalent_to(x_sh, y.ndim)
  scale = np.abs(expected).max()
  assert scale > 0.1
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5 * scale, rtol=1e-4)


def _one_sentence(message):
  return "\n" not in message and message.endswith(".") and message.count(". ") == 0


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            "missing",
            r"tensor 'blocks\.1\.attn2\.to_k\.weight' is missing; expected shape \(40, 40\)\.",
        ),
        (
            "misshapen",
            r"tensor 'blocks\.1\.attn2\.to_k\.weight' has shape \(40, 39\), "
            r"expected \(40, 40\)\.",
        ),
        ("unexpected", r"the text-to-video Wan DiT has no place for tensor\(s\) 'extra\.weight'\."),
    ],
)
def test_bad_state_dict_is_one_sentence(change, pattern):
  config, state = weight_files.read_diffusers_folder(FOLDER)
  fields = transformer_weights.transformer_fields(config)
  state = dict(state)
  name = "blocks.1.attn2.to_k.weight"
  if change == "missing":
    del state[name]
  elif change == "misshapen":
    state[name] = state[name][:, :39]
  else:
    state["extra.weight"] = np.zeros((3,), np.float32)
  with pytest.raises(ValueError) as err:
    transformer_weights.params_from_diffusers(state, fields, where="transformer/")
  message = str(err.value)
  assert re.fullmatch(r"transformer/: " + pattern, message), message
  assert _one_sentence(message)


def test_image_to_video_config_is_refused():
  config, _ = weight_files.read_diffusers_folder(FOLDER)
  with pytest.raises(ValueError, match="only the text-to-video variant is supported") as err:
    transformer_weights.transformer_fields(dict(config, image_dim=1280))
  assert "image_dim=1280" in str(err.value)
