"""Triple-attention layers, RoPE, masking and the DiT's structural promises."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idjax import models
from idjax.models import attention, blocks, dit, rope
from helpers import model_setup, random_inputs, randomize, tiny_model_config


def _bump(x, index):
  """x with random noise added at `index` (a constant would vanish in LayerNorm)."""
  noise = jax.random.normal(jax.random.key(42), x[index].shape)
  return x.at[index].add(noise)


def _apply_layer(module, x, seed=3, scale=0.1):
  d = x.shape[-1]
  mods = [jnp.full((x.shape[0], d), v, jnp.float32) for v in (0.1, 0.2, 1.0)]
  params = randomize(nn.meta.unbox(module.init(jax.random.key(0), x, *mods)["params"]), seed, scale)
  return jax.jit(lambda y: module.apply({"params": params}, y, *mods))


def test_spatial_attention_never_mixes_frames():
  cfg = tiny_model_config()
  x = jax.random.normal(jax.random.key(0), (2, 4, 16, 32))
  f = _apply_layer(blocks.SpatialAttention((4, 4), cfg.num_heads, "xla"), x)
  y0, y1 = f(x), f(_bump(x, (slice(None), 2)))
  changed = np.abs(np.asarray(y1 - y0)).max(axis=(0, 2, 3))
  # The perturbed frame moves by more than its own residual: attention saw it.
  delta = np.asarray(y1 - y0 - (_bump(x, (slice(None), 2)) - x))
  assert np.abs(delta[:, 2]).max() > 1e-3
  np.testing.assert_array_equal(changed[[0, 1, 3]], 0.0)


def test_temporal_attention_never_mixes_locations():
  cfg = tiny_model_config()
  x = jax.random.normal(jax.random.key(0), (2, 4, 16, 32))
  f = _apply_layer(blocks.TemporalAttention(cfg.num_heads, cfg.temporal_causal, "xla"), x)
  y0, y1 = f(x), f(_bump(x, (slice(None), slice(None), 5)))
  changed = np.abs(np.asarray(y1 - y0)).max(axis=(0, 1, 3))
  assert changed[5] > 1e-3
  np.testing.assert_array_equal(np.delete(changed, 5), 0.0)
  # ... and it does mix frames (otherwise the test above proves nothing).
  per_frame = np.abs(np.asarray(y1 - y0))[:, :, 5].max(axis=(0, 2))
  assert (per_frame > 1e-4).all()


def test_causal_temporal_attention_ignores_later_frames():
  cfg = tiny_model_config(temporal_causal=True)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16, 32))
  f = _apply_layer(blocks.TemporalAttention(cfg.num_heads, cfg.temporal_causal, "xla"), x)
  y0, y1 = f(x), f(_bump(x, (slice(None), 3)))
  changed = np.abs(np.asarray(y1 - y0)).max(axis=(0, 2, 3))
  np.testing.assert_array_equal(changed[:3], 0.0)
  assert (changed[3:] > 1e-4).all()


def test_causal_model_frame_does_not_depend_on_later_frames():
  _, apply, params, args = model_setup(temporal_causal=True)
  y0 = apply({"params": params}, *args)
  y1 = apply({"params": params}, _bump(args[0], (slice(None), 2)), *args[1:])
  changed = np.abs(np.asarray(y1 - y0)).max(axis=(0, 2, 3, 4))
  np.testing.assert_array_equal(changed[:2], 0.0)
  assert changed[3] > 1e-4


# Soft and none share the strength multiply with hard; they cost one compile
# each on 2 cores, so they run with the slow tests.
ROUTINGS = ["hard", pytest.param("soft", marks=pytest.mark.slow),
            pytest.param("none", marks=pytest.mark.slow)]


@pytest.mark.parametrize("routing", ROUTINGS)
def test_identity_strength_zero_is_bitwise_no_identity(routing):
  _, apply, params, args = model_setup(identity_routing=routing)
  x, t, tokens, identity, _ = args
  zero = apply({"params": params}, x, t, tokens, identity, jnp.zeros((2,)))
  none = apply({"params": params}, x, t, tokens, None, None)
  full = apply({"params": params}, x, t, tokens, identity, jnp.ones((2,)))
  assert np.array_equal(np.asarray(zero), np.asarray(none))
  assert np.abs(np.asarray(full - none)).max() > 1e-3     # the identity path is live
  # Per sample: strength 0 for sample 0 only leaves sample 0 untouched.
  mixed = apply({"params": params}, x, t, tokens, identity, jnp.array([0.0, 1.0]))
  assert np.array_equal(np.asarray(mixed[0]), np.asarray(none[0]))
  np.testing.assert_allclose(mixed[1], full[1], atol=1e-5)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_no_valid_character_is_the_null_condition(routing):
  _, apply, params, args = model_setup(identity_routing=routing)
  x, t, tokens, identity, strength = args
  null = identity.replace(char_valid=jnp.zeros_like(identity.char_valid))
  y = apply({"params": params}, x, t, tokens, null, strength)
  none = apply({"params": params}, x, t, tokens, None, None)
  assert np.array_equal(np.asarray(y), np.asarray(none))


def test_no_text_does_not_depend_on_text_encoder():
  _, apply, params, (x, t, tokens, identity, s) = model_setup()
  empty = jnp.zeros_like(tokens)
  y0 = apply({"params": params}, x, t, empty, identity, s)
  other = dict(params, text=randomize(params["text"], seed=7))
  y1 = apply({"params": other}, x, t, empty, identity, s)
  assert np.array_equal(np.asarray(y0), np.asarray(y1))
  # With text, the text encoder matters.
  y2 = apply({"params": params}, x, t, tokens, identity, s)
  y3 = apply({"params": other}, x, t, tokens, identity, s)
  assert np.abs(np.asarray(y2 - y3)).max() > 1e-4


def test_precomputed_text_embeddings_match_tokens():
  model, apply, params, (x, t, tokens, identity, s) = model_setup()
  encoder = models.text.TextEncoder(model.text_vocab_size, model.text_width, model.text_layers,
                                    model.num_heads, model.mlp_ratio, "xla")
  emb, _ = jax.jit(encoder.apply)({"params": params["text"]}, tokens)
  chex.assert_shape(emb, (2, tokens.shape[1], model.text_width))
  y_tok = apply({"params": params}, x, t, tokens, identity, s)
  y_emb = jax.jit(functools.partial(model.apply, text_embeddings=emb))(
      {"params": params}, x, t, tokens, identity, s)
  np.testing.assert_allclose(y_tok, y_emb, atol=1e-6)


def test_fully_masked_rows_are_zero_with_finite_gradients():
  q = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
  k = jax.random.normal(jax.random.key(1), (1, 5, 2, 4))
  mask = jnp.array([[True] * 5, [False] * 5, [True, False, False, False, False]])[None, None]
  out = attention.dot_product_attention(q, k, k, mask)
  np.testing.assert_array_equal(out[:, 1], 0.0)
  # Row 2 sees only key 0: the output is exactly value 0.
  np.testing.assert_allclose(out[0, 2], k[0, 0], rtol=1e-6)
  grad = jax.grad(lambda q: attention.dot_product_attention(q, k, k, mask).sum())(q)
  assert np.isfinite(np.asarray(grad)).all()
  # The fully-masked row adds nothing to any gradient: dq is zero there, and dk
  # equals the gradient of attention with that row left out.
  np.testing.assert_array_equal(grad[:, 1], 0.0)
  rows = jnp.array([0, 2])
  dk = jax.grad(lambda k: attention.dot_product_attention(q, k, k, mask).sum())(k)
  dk_without = jax.grad(lambda k: attention.dot_product_attention(
      q[:, rows], k, k, mask[:, :, rows]).sum())(k)
  np.testing.assert_allclose(dk, dk_without, atol=1e-6)


# Each case compiles several attention programs (~15 s on 2 CPU cores): the
# default run keeps a masked odd-length case, the rest are slow.
_SLOW = pytest.mark.slow
@pytest.mark.parametrize("lq,lk,causal,with_mask", [
    (3, 5, False, True), pytest.param(4, 51, False, True, marks=_SLOW),
    pytest.param(5, 5, True, False, marks=_SLOW), pytest.param(7, 7, True, True, marks=_SLOW),
    pytest.param(3, 4, False, False, marks=_SLOW)])
def test_even_length_padding_for_cudnn_changes_nothing(lq, lk, causal, with_mask):
  # The cuDNN path pads odd lengths; run that padding through XLA and compare
  # values and gradients with unpadded attention.
  q = jax.random.normal(jax.random.key(0), (2, lq, 2, 8))
  k = jax.random.normal(jax.random.key(1), (2, lk, 2, 8))
  v = jax.random.normal(jax.random.key(2), (2, lk, 2, 8))
  mask = jax.random.bernoulli(jax.random.key(3), 0.6, (2, 2, lq, lk)) if with_mask else None
  plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
  padded = lambda q, k, v: attention._attend_even_lengths(q, k, v, mask, causal, "xla")
  np.testing.assert_allclose(padded(q, k, v), plain(q, k, v), atol=1e-6)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  for g_pad, g_plain in zip(jax.grad(loss(padded), (0, 1, 2))(q, k, v),
                            jax.grad(loss(plain), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(g_pad, g_plain, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  def score(pq, pk):
    aq = rope.rope_angles(np.array([pq], np.float32), 16)
    ak = rope.rope_angles(np.array([pk], np.float32), 16)
    return float((rope.apply_rope(q, aq) * rope.apply_rope(k, ak)).sum())
  np.testing.assert_allclose(score((1, 2), (3, 5)), score((11, 7), (13, 10)), rtol=1e-4)
  assert abs(score((1, 2), (3, 5)) - score((1, 2), (5, 3))) > 1e-3
  # Norm-preserving.
  a = rope.rope_angles(rope.grid_positions(3, 3), 16)
  qs = jnp.broadcast_to(q, (1, 9, 1, 16))
  np.testing.assert_allclose(jnp.linalg.norm(rope.apply_rope(qs, a), axis=-1),
                             jnp.linalg.norm(qs, axis=-1), rtol=1e-5)


def test_runs_on_longer_and_larger_clips_than_trained():
  _, apply, params, _ = model_setup(frames=8, size=32)
  args = random_inputs(tiny_model_config(), batch=1, frames=12, size=48)
  y = apply({"params": params}, *args)
  chex.assert_shape(y, (1, 12, 48, 48, 3))
  chex.assert_type(y, jnp.float32)
  assert np.isfinite(np.asarray(y)).all()


def test_every_param_has_logical_axis_names():
  model, _, _, args = model_setup()
  variables = jax.eval_shape(model.init, jax.random.key(0), *args)
  specs = jax.tree.leaves(nn.get_partition_spec(variables),
                          is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  assert all(isinstance(s, jax.sharding.PartitionSpec) for s in specs)
  boxed = jax.tree.leaves(variables, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert all(isinstance(v, nn.Partitioned) for v in boxed), "every param carries axis names"
  stacked = variables["params"]["blocks"]["mlp"]["fc1"]["kernel"]
  assert stacked.names == ("layers", "embed", "mlp")


def _unstack(params, depth):
  out = {k: v for k, v in params.items() if k != "blocks"}
  for i in range(depth):
    out[f"block_{i}"] = jax.tree.map(lambda p: p[i], params["blocks"])
  return out


def test_unscanned_rematerialised_model_is_the_same_function():
  model, apply, params, args = model_setup()
  ref = apply({"params": params}, *args)
  other = models.build_model(tiny_model_config(scan_blocks=False, remat_policy="dots_saveable"))
  y = jax.jit(other.apply)({"params": _unstack(params, model.depth)}, *args)
  np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_does_not_change_gradients(policy):
  model, _, params, args = model_setup()
  scanned_remat = models.build_model(tiny_model_config(remat_policy=policy))
  loss = lambda m, p: jnp.sum(m.apply({"params": p}, *args) ** 2)
  g_ref = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
  g = jax.jit(jax.grad(lambda p: loss(scanned_remat, p)))(params)
  chex.assert_trees_all_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("field, value", [
    ("remat_policy", "bogus"), ("identity_routing", "hrad"), ("reference_mode", "median"),
    ("prediction", "noise"), ("attention_impl", "flash")])
def test_a_model_built_with_a_bad_option_is_refused_at_construction(field, value):
  # Configs are checked on load (test_config_rules.py); this is the Python API.
  with pytest.raises(ValueError, match=f"{field} must be one of .*{value}"):
    models.build_model(tiny_model_config(**{field: value}))


def test_build_model_maps_every_field_from_its_config_key():
  cfg = tiny_model_config(patch_size=[1, 2, 2], prediction="clean")   # JSON gives lists
  model = models.build_model(cfg)
  fields = [f.name for f in dataclasses.fields(dit.VideoDiT) if f.name not in ("parent", "name")]
  for name in fields:
    assert getattr(model, name) == (tuple(cfg[name]) if name == "patch_size" else cfg[name])
  del cfg.prediction
  with pytest.raises(AttributeError, match="prediction"):
    models.build_model(cfg)      # no hidden default


def test_bad_config_values_are_clear_errors():
  with pytest.raises(ValueError, match="remat_policy"):
    dit.block_class("bogus", True)
  with pytest.raises(ValueError, match="attention_impl"):
    attention.resolve_implementation("flash")
  cfg = tiny_model_config()
  with pytest.raises(ValueError, match="patch size"):
    args = random_inputs(cfg, size=18)
    models.build_model(cfg).init(jax.random.key(0), *args)


def test_clean_prediction_velocity_gives_back_the_clean_estimate():
  """With prediction="clean", x_t - t * v recovers the network's x0 output
  exactly where t >= MIN_T, and the velocity stays bounded below it."""
  from idjax.models.dit import MIN_T, output_to_velocity
  key = jax.random.key(0)
  x = jax.random.normal(key, (3, 2, 4, 4, 3))
  out = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
  t = jnp.array([0.9, 0.3, 0.01])
  v = output_to_velocity(out, x, t, "clean")
  x0_hat = x - t[:, None, None, None, None] * v
  np.testing.assert_allclose(x0_hat[:2], out[:2], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(v[2], (x[2] - out[2]) / MIN_T, rtol=1e-6)
  np.testing.assert_array_equal(output_to_velocity(out, x, t, "velocity"), out)


def test_no_model_module_takes_a_config_dict():
  """Modules declare what they read as typed fields (build_model maps the config)."""
  import inspect
  import ml_collections
  from idjax.models import identity, text
  classes = [c for mod in (attention, blocks, dit, identity, text)
             for _, c in inspect.getmembers(mod, inspect.isclass)
             if issubclass(c, nn.Module) and c.__module__ == mod.__name__]
  assert len(classes) >= 10
  for cls in classes:
    for field in dataclasses.fields(cls):
      if field.name in ("parent", "name"):
        continue
      assert field.type not in (ml_collections.ConfigDict, "ml_collections.ConfigDict"), (cls, field)
      assert field.name != "config", cls


# One case by default (non-square, a partial last block, masked rows); ~9 s each.
@pytest.mark.parametrize("lq, lk, masked", [pytest.param(200, 200, True, marks=_SLOW),
                                            (130, 70, True),
                                            pytest.param(150, 150, False, marks=_SLOW)])
def test_query_blocks_give_the_same_attention(lq, lk, masked):
  """Temporal attention on long clips attends 64 query rows at a time: the
  same numbers (to float rounding), masked rows still exactly zero, and the
  same gradients; rows past the last whole block (lq % 64) included."""
  rng = np.random.default_rng(lq)
  q, k, v = (jnp.asarray(rng.normal(size=(2, n, 3, 8)), jnp.float32) for n in (lq, lk, lk))
  mask = None
  if masked:
    mask = jnp.asarray(rng.random((2, 1, lq, lk)) > 0.3).at[:, :, 5].set(False)
  whole = attention.dot_product_attention(q, k, v, mask)
  blocked = attention.dot_product_attention(q, k, v, mask, query_block=64)
  chex.assert_trees_all_close(blocked, whole, atol=2e-6)
  if masked:
    assert bool(jnp.all(blocked[:, 5] == 0))
  loss = lambda block: lambda q, k, v: jnp.sum(
      jnp.sin(attention.dot_product_attention(q, k, v, mask, query_block=block)))
  chex.assert_trees_all_close(jax.grad(loss(64), argnums=(0, 1, 2))(q, k, v),
                              jax.grad(loss(None), argnums=(0, 1, 2))(q, k, v), atol=1e-5)


def test_query_blocks_keep_attention_memory_linear():
  """XLA's temporaries: the whole [B, N, L, L] score matrix without blocks,
  [B, N, 64, L] with them (compiled memory analysis, nothing timed)."""
  def temp_bytes(length, block):
    x = jax.ShapeDtypeStruct((1, length, 4, 16), jnp.float32)
    fn = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, query_block=block))
    return fn.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

  scores = lambda length: 4 * length * length * 4  # N x L x L float32
  assert temp_bytes(1024, None) >= scores(1024)
  assert temp_bytes(1024, 64) < scores(1024) / 4
  assert temp_bytes(2048, 64) < 2.5 * temp_bytes(1024, 64)   # linear, not x4


def test_per_frame_timesteps_equal_to_one_t_are_the_per_example_model():
  _, apply, params, args = model_setup()
  x, t = args[0], args[1]
  per_frame = jnp.broadcast_to(t[:, None], x.shape[:2])
  np.testing.assert_allclose(apply({"params": params}, x, per_frame, *args[2:]),
                             apply({"params": params}, *args), rtol=1e-6, atol=1e-6)


def test_a_frames_timestep_reaches_only_later_frames_of_a_causal_model():
  """Per-frame t conditions each frame's own tokens: with causal temporal
  attention, frame 2's t changes frames 2.. and leaves frames 0, 1 alone."""
  _, apply, params, args = model_setup(temporal_causal=True)
  x, t = args[0], args[1]
  per_frame = jnp.broadcast_to(t[:, None], x.shape[:2])
  y0 = apply({"params": params}, x, per_frame, *args[2:])
  y1 = apply({"params": params}, x, per_frame.at[:, 2].set(0.0), *args[2:])
  changed = np.abs(np.asarray(y1 - y0)).max(axis=(0, 2, 3, 4))
  np.testing.assert_array_equal(changed[:2], 0.0)
  assert changed[2] > 1e-3 and changed[3] > 1e-4


def test_per_frame_timesteps_of_the_wrong_shape_are_refused():
  _, apply, params, args = model_setup()
  with pytest.raises(ValueError, match="per-frame timesteps must be"):
    apply({"params": params}, args[0], jnp.zeros((args[0].shape[0], 3)), *args[2:])


def test_position_embedding_is_the_sin_cos_of_row_and_column():
  emb = np.asarray(dit.position_embedding_2d(2, 3, 8))
  chex.assert_shape(emb, (6, 8))
  freqs = np.array([1.0, 1e-2])  # 10000 ** (-k / 2), k = 0, 1
  for i in range(2):
    for j in range(3):
      want = np.concatenate([np.sin(i * freqs), np.cos(i * freqs),
                             np.sin(j * freqs), np.cos(j * freqs)])
      np.testing.assert_allclose(emb[i * 3 + j], want, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="divisible by 4"):
    dit.position_embedding_2d(2, 2, 6)


def test_absolute_position_adds_no_params_and_moves_the_output():
  model, apply, params, args = model_setup()
  placed, apply_placed, placed_params, _ = model_setup(absolute_position=True)
  assert placed.absolute_position and not model.absolute_position
  chex.assert_trees_all_equal_shapes(params, placed_params)
  plain, moved = apply({"params": params}, *args), apply_placed({"params": params}, *args)
  assert float(jnp.max(jnp.abs(plain - moved))) > 1e-3
