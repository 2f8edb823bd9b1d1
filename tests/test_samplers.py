"""Samplers on fields with known solutions; bit-identical sampling across meshes,
batch positions, and identity_strength = 0 vs no references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idjax import sharding
from idjax.sampling import samplers
from idjax.sampling.generator import Generator

from helpers import one_device_mesh, random_refs, tiny_parts


def test_timesteps_grid_and_shift():
  grid = samplers.timesteps(4)
  np.testing.assert_allclose(grid, [1, .75, .5, .25, 0])
  low = samplers.timesteps(4, shift=0.5)
  assert low[0] == 1 and low[-1] == 0 and np.all(np.diff(low) < 0)
  assert np.all(low[1:-1] < grid[1:-1])       # more of the grid near t = 0
  with pytest.raises(ValueError):
    samplers.timesteps(0)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_straight_flow_recovers_x0(method):
  """On x_t = (1 - t) x0 + t noise the velocity noise - x0 is constant, so any
  grid integrates it exactly."""
  k1, k2 = jax.random.split(jax.random.key(0))
  x0 = jax.random.normal(k1, (3, 5))
  noise = jax.random.normal(k2, (3, 5))
  field = lambda x, t: noise - x0
  out = jax.jit(lambda n: samplers.sample(field, n, samplers.timesteps(7, 0.7), method))(noise)
  np.testing.assert_allclose(out, x0, atol=1e-6)


def test_heun_beats_euler_on_a_curved_field():
  """dx/dt = x: from x(1) the exact x(0) is x(1) / e."""
  field = lambda x, t: x
  x1 = jnp.ones((4,))
  exact = np.exp(-1.0)
  err = {m: float(jnp.abs(samplers.sample(field, x1, samplers.timesteps(8), m) - exact).max())
         for m in samplers.METHODS}
  assert err["heun"] < err["euler"] / 10
  # Euler's value is the closed form (1 - 1/8)^8.
  np.testing.assert_allclose(
      samplers.sample(field, x1, samplers.timesteps(8), "euler"), (7 / 8) ** 8, rtol=1e-6)


def test_time_dependent_field_heun_second_order():
  """dx/dt = 2t: x(0) = x(1) - 1 exactly for Heun (trapezoid is exact for linear v)."""
  field = lambda x, t: 2.0 * t * jnp.ones_like(x)
  out = samplers.sample(field, jnp.zeros((2,)), samplers.timesteps(3), "heun")
  np.testing.assert_allclose(out, -1.0, atol=1e-6)


@pytest.fixture(scope="module")
def generators():
  cfg, params, fe = tiny_parts()
  one = Generator(cfg, params, fe, mesh=one_device_mesh())
  eight = Generator(cfg, params, fe, mesh=sharding.make_mesh({"data": 8}))
  return one, eight


def _batch():
  rng = np.random.default_rng(11)
  prompts = ["a person with pale skin", "a person with blue eyes", "a person", "glasses"]
  refs = [[random_refs(rng, 1)], [random_refs(rng, 2, size=23)], [], [random_refs(rng, 2)]]
  layout = [[[.1, .1, .7, .7]], [[[0, 0, .5, .5], [.4, .4, .9, .9]]], [], [[.2, .2, .8, .8]]]
  return prompts, refs, layout


@pytest.mark.parametrize("guided", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bit_identical_on_1_and_8_devices(generators, guided):
  one, eight = generators
  prompts, refs, layout = _batch()
  kw = dict(seed=9, layout=layout, progress=False)
  if guided:
    kw.update(text_guidance=2.0, identity_guidance=1.5, sampler="heun")
  a = one.generate(prompts, refs, **kw)["frames"]
  b = eight.generate(prompts, refs, **kw)["frames"]
  assert len(np.unique(a)) > 10                    # not a degenerate constant clip
  np.testing.assert_array_equal(a, b)


def test_sample_alone_equals_sample_in_batch(generators):
  one, eight = generators
  prompts, refs, layout = _batch()
  batch = one.generate(prompts, refs, seed=20, layout=layout, progress=False)["frames"]
  for i in (1, 3):
    alone = eight.generate([prompts[i]], [refs[i]], seed=20 + i, layout=[layout[i]],
                           progress=False)["frames"]
    np.testing.assert_array_equal(alone[0], batch[i])


def test_identity_strength_zero_equals_no_references(generators):
  one, _ = generators
  prompts, refs, layout = _batch()
  zero = one.generate(prompts, refs, seed=4, identity_strength=0.0, progress=False)["frames"]
  none = one.generate(prompts, None, seed=4, progress=False)["frames"]
  full = one.generate(prompts, refs, seed=4, identity_strength=1.0, progress=False)["frames"]
  np.testing.assert_array_equal(zero, none)
  assert not np.array_equal(full[0], none[0])      # the identity path does act


def test_guide_scales_identity_inside_faces_and_leaves_the_rest():
  rng = np.random.default_rng(0)
  v_full, v_text, v_null = (rng.normal(size=(1, 2, 4, 4, 3)).astype(np.float32) for _ in range(3))
  faces = np.zeros((1, 2, 4, 4, 1), np.float32)
  faces[:, :, 1:3, 1:3] = 1.0
  faces[:, :, 0, 0] = 0.5
  out = np.asarray(samplers.guide(v_full, v_text, v_null, 2.0, 3.0, faces))
  text_cfg = v_null + 2.0 * (v_text - v_null)
  # Inside a face: the full dual-scale formula; outside: the identity pass unscaled.
  np.testing.assert_allclose(out[:, :, 1:3, 1:3], (text_cfg + 3.0 * (v_full - v_text))[:, :, 1:3, 1:3],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[:, :, 3], (text_cfg + v_full - v_text)[:, :, 3], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[:, :, 0, 0], (text_cfg + 2.0 * (v_full - v_text))[:, :, 0, 0],
                             rtol=1e-6, atol=1e-6)  # a soft edge: halfway
  # Without text guidance (v_null None) and with all-ones masks: plain identity CFG.
  ones = np.ones_like(faces)
  np.testing.assert_allclose(samplers.guide(v_full, v_text, None, 1.0, 3.0, ones),
                             v_text + 3.0 * (v_full - v_text), rtol=1e-6, atol=1e-6)


def test_per_frame_step_leaves_clean_context_frames_where_they_are():
  x = jax.random.normal(jax.random.key(0), (2, 4, 3, 3, 2))
  v = lambda x, t: 2.0 * x + jnp.reshape(t, (1, -1, 1, 1, 1)) if jnp.ndim(t) else 2.0 * x + t
  t = jnp.array([0.0, 0.0, 0.7, 0.7])
  t_next = jnp.array([0.0, 0.0, 0.4, 0.4])
  for method in ("euler", "heun"):
    out = samplers.step(v, x, t, t_next, method)
    np.testing.assert_array_equal(out[:, :2], x[:, :2])          # the context: not moved
    alone = samplers.step(v, x[:, 2:], jnp.float32(0.7), jnp.float32(0.4), method)
    np.testing.assert_allclose(out[:, 2:], alone, rtol=1e-6)     # the rest: a plain step


def test_renoise_step_against_its_formula():
  rng = np.random.default_rng(5)
  x, fresh, v = (rng.normal(size=(2, 3, 4)).astype(np.float32) for _ in range(3))
  field = lambda x_, t_: jnp.asarray(v)
  t, t_next = 0.6, 0.35
  clean, implied = x - t * v, x + (1 - t) * v  # x = (1 - t) clean + t implied
  np.testing.assert_allclose((1 - t) * clean + t * implied, x, atol=1e-6)
  for eta in (0.0, 0.5, 1.0):
    expected = (1 - t_next) * clean + t_next * (np.sqrt(1 - eta**2) * implied + eta * fresh)
    got = samplers.renoise_step(field, jnp.asarray(x), t, t_next, jnp.asarray(fresh), eta)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # eta = 0 is the Euler step; the last step lands on the clean estimate.
  euler = samplers.step(field, jnp.asarray(x), jnp.float32(t), jnp.float32(t_next))
  np.testing.assert_allclose(samplers.renoise_step(field, x, t, t_next, fresh, 0.0), euler,
                             atol=1e-6)
  np.testing.assert_allclose(samplers.renoise_step(field, x, t, 0.0, fresh, 1.0), clean,
                             atol=1e-6)


def test_renoise_step_per_frame_leaves_clean_frames_alone():
  rng = np.random.default_rng(6)
  x, fresh, v = (rng.normal(size=(2, 4, 3, 3, 2)).astype(np.float32) for _ in range(3))
  field = lambda x_, t_: jnp.asarray(v)
  t = jnp.array([0.0, 0.0, 0.7, 0.7], jnp.float32)       # two clean context frames
  t_next = jnp.array([0.0, 0.0, 0.4, 0.4], jnp.float32)
  out = samplers.renoise_step(field, jnp.asarray(x), t, t_next, jnp.asarray(fresh), 1.0)
  np.testing.assert_array_equal(out[:, :2], x[:, :2])
  alone = samplers.renoise_step(lambda x_, t_: jnp.asarray(v[:, 2:]), jnp.asarray(x[:, 2:]),
                                0.7, 0.4, jnp.asarray(fresh[:, 2:]), 1.0)
  np.testing.assert_allclose(out[:, 2:], alone, rtol=1e-6)


def test_renoised_sampling_is_per_example_and_the_same_on_1_and_8_devices(generators):
  one, eight = generators
  prompts, refs, layout = _batch()
  kw = dict(seed=9, layout=layout, progress=False, steps=3)
  plain = one.generate(prompts, refs, **kw)["frames"]
  a = one.generate(prompts, refs, renoise=1.0, **kw)["frames"]
  b = eight.generate(prompts, refs, renoise=1.0, **kw)["frames"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, plain)  # the fresh noise acts
  # A sample's fresh noise comes from its own seed, not its batch slot.
  alone = eight.generate([prompts[1]], [refs[1]], seed=10, layout=[layout[1]], progress=False,
                         steps=3, renoise=1.0)["frames"]
  np.testing.assert_array_equal(alone[0], a[1])
  # renoise = 0 is the ODE sampler, bit for bit.
  np.testing.assert_array_equal(one.generate(prompts, refs, renoise=0.0, **kw)["frames"], plain)
  with pytest.raises(ValueError, match="euler"):
    one.generate(prompts, refs, renoise=0.5, sampler="heun", **kw)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    one.generate(prompts, refs, renoise=1.5, **kw)
