"""Generator: inputs, layouts, guidance passes, outputs."""

import chex
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from idjax import layout as layout_lib
from idjax import models
from idjax.sampling.generator import Generator, prepare_matte, prepare_reference

from helpers import one_device_mesh, random_refs, tiny_parts

@pytest.fixture(scope="module")
def gen():
  cfg, params, fe = tiny_parts()
  return Generator(cfg, params, fe, mesh=one_device_mesh())


def test_output_shapes_layout_and_metadata(gen):
  rng = np.random.default_rng(0)
  refs = [[random_refs(rng, 1)], [], [random_refs(rng, 2)]]
  out = gen.generate(["a person with blue eyes", "a person", "a person with glasses"], refs,
                     seed=5, layout=[[[0.1, 0.1, 0.6, 0.6]], [], [[[0, 0, .5, .5], [.5, .5, 1, 1]]]],
                     progress=False)
  chex.assert_shape(out["frames"], (3, 2, 16, 16, 3))
  chex.assert_type(out["frames"], np.uint8)
  chex.assert_shape(out["boxes"], (3, 1, 2, 4))
  chex.assert_shape(out["masks"], (3, 1, 2, 16, 16))
  # A start and an end box interpolate over the 2 frames.
  np.testing.assert_allclose(out["boxes"][2, 0], [[0, 0, .5, .5], [.5, .5, 1, 1]])
  assert out["masks"][1].max() == 0.0          # a prompt without characters: no mask
  assert [m["seed"] for m in out["metadata"]] == [5, 6, 7]
  assert [m["num_references"] for m in out["metadata"]] == [[1], [], [2]]
  assert out["timings"]["model_passes_per_evaluation"] == 1


def test_references_change_the_sample_and_seeds_are_per_sample(gen):
  rng = np.random.default_rng(1)
  refs = [[random_refs(rng, 2)], [random_refs(rng, 2)]]
  a = gen.generate(["a person", "a person"], refs, seed=[3, 3], progress=False)
  b = gen.generate(["a person", "a person"], [refs[0], []], seed=[3, 3], progress=False)
  assert not np.array_equal(a["frames"][0], a["frames"][1])   # other references
  np.testing.assert_array_equal(a["frames"][0], b["frames"][0])
  assert not np.array_equal(b["frames"][0], b["frames"][1])


def test_guidance_scales_one_equal_single_pass_formula(gen):
  """s_id = 1 in the 2-pass formula is the 1-pass result (to rounding)."""
  rng = np.random.default_rng(2)
  refs = [[random_refs(rng, 2)]]
  one = gen.generate(["a person with red hair"], refs, seed=1, progress=False)
  step2 = gen._step_fn("euler", 2)
  step1 = gen._step_fn("euler", 1)
  host = gen._host_batch(["a person with red hair"], refs, 2, np.ones(1, np.float32), [1], None)
  emb, feat = gen._encode_fn()(gen.face_params, jnp.asarray(host.references))
  ident = models.IdentityInputs(emb, feat, jnp.asarray(host.ref_valid),
                                jnp.asarray(host.char_valid), jnp.asarray(host.face_masks))
  x = jnp.asarray(host.noise)
  args = (jnp.float32(1.0), jnp.float32(0.5), jnp.asarray(host.text), ident,
          jnp.asarray(host.strength), jnp.float32(1.0), jnp.float32(1.0))
  x1 = step1(gen.params, x.copy(), *args)
  x2 = step2(gen.params, x.copy(), *args)
  np.testing.assert_allclose(np.asarray(x1), np.asarray(x2), atol=1e-5)
  assert one["frames"].shape == (1, 2, 16, 16, 3)


def test_identity_guidance_acts_inside_the_face_masks_only(gen):
  """With a layout, a 2-pass step at s_id = 3 equals the 1-pass step where
  the face masks are 0 and moves away from it inside the face."""
  rng = np.random.default_rng(5)
  refs = [[random_refs(rng, 2)]]
  boxes = layout_lib.layout_boxes([[[0.1, 0.1, 0.5, 0.5]]], [1], gen.max_characters, 2)
  host = gen._host_batch(["a person"], refs, 2, np.ones(1, np.float32), [1], boxes)
  emb, feat = gen._encode_fn()(gen.face_params, jnp.asarray(host.references))
  masks = jnp.asarray(host.face_masks)
  ident = models.IdentityInputs(emb, feat, jnp.asarray(host.ref_valid),
                                jnp.asarray(host.char_valid), masks)
  x = jnp.asarray(host.noise)
  args = (jnp.float32(1.0), jnp.float32(0.5), jnp.asarray(host.text), ident,
          jnp.asarray(host.strength), jnp.float32(1.0))
  one = np.asarray(gen._step_fn("euler", 1)(gen.params, x.copy(), *args, jnp.float32(1.0)))
  guided = np.asarray(gen._step_fn("euler", 2)(gen.params, x.copy(), *args, jnp.float32(3.0)))
  face = np.asarray(masks)[0, 0]  # [T, h, w]
  outside, inside = face == 0, face > 0.5
  assert outside.any() and inside.any()
  np.testing.assert_allclose(guided[0][outside], one[0][outside], atol=1e-5)
  assert np.abs(guided[0][inside] - one[0][inside]).mean() > 1e-3


def test_guided_sampling_uses_more_passes_and_differs(gen):
  rng = np.random.default_rng(3)
  refs = [[random_refs(rng, 1)]]
  base = gen.generate(["a person"], refs, seed=0, progress=False)
  guided = gen.generate(["a person"], refs, seed=0, identity_guidance=3.0, progress=False)
  assert guided["timings"]["model_passes_per_evaluation"] == 2
  assert not np.array_equal(base["frames"], guided["frames"])


def test_bad_inputs_raise_value_errors(gen):
  rng = np.random.default_rng(4)
  with pytest.raises(ValueError, match="reference images"):
    gen.generate(["a"], [[random_refs(rng, 3)]], progress=False)   # K = 2
  with pytest.raises(ValueError, match="identity_strength"):
    gen.generate(["a"], None, identity_strength=1.5, progress=False)
  with pytest.raises(ValueError, match="steps"):
    gen.generate(["a"], None, steps=0, progress=False)
  with pytest.raises(ValueError, match="characters"):
    gen.generate(["a"], [[random_refs(rng, 1), random_refs(rng, 1)]], progress=False)
  with pytest.raises(ValueError, match="box"):
    gen.generate(["a"], [[random_refs(rng, 1)]], layout=[[[0.5, 0.5, 0.2, 0.9]]], progress=False)


def test_prepare_reference_modes_and_sizes():
  rgba = np.zeros((30, 20, 4), np.uint8)
  rgba[..., 0] = 200
  out = prepare_reference(rgba, 16)
  chex.assert_shape(out, (16, 16, 3))
  assert out[..., 0].min() == 200 and out[..., 1:].max() == 0
  gray = np.full((9, 9), 77, np.uint8)
  np.testing.assert_array_equal(prepare_reference(gray, 16), np.full((16, 16, 3), 77, np.uint8))


def test_prepare_matte_reads_the_alpha_channel_cropped_like_the_colours():
  rgba = np.zeros((40, 20, 4), np.uint8)  # centre-cropped to rows 10..29
  rgba[:20, :, 3] = 255                   # opaque top half: the cropped square's top half
  matte = prepare_matte(rgba, 10)
  np.testing.assert_array_equal(matte, np.repeat([[1]] * 5 + [[0]] * 5, 10, axis=1))
  np.testing.assert_array_equal(prepare_matte(Image.fromarray(rgba), 10), matte)
  # No alpha channel: the whole portrait may be the head.
  np.testing.assert_array_equal(prepare_matte(rgba[..., :3], 10), np.ones((10, 10), np.uint8))
  np.testing.assert_array_equal(prepare_matte(Image.fromarray(rgba).convert("RGB"), 7),
                                np.ones((7, 7), np.uint8))


def test_layout_masks_match_box_geometry():
  boxes = np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)
  ellipse = layout_lib.face_masks(boxes, 32, 32)[0]
  box = layout_lib.face_masks(boxes, 32, 32, shape="box")[0]
  assert box[8:24, 8:24].min() > 0.99 and box[:7].max() == 0 and box[:, 25:].max() == 0
  np.testing.assert_allclose(box.sum(), 16 * 16, atol=1e-3)
  # The inscribed disc covers about pi/4 of the box.
  np.testing.assert_allclose(ellipse.sum() / (16 * 16), np.pi / 4, atol=0.03)
  assert ellipse[16, 16] == 1.0 and ellipse[8, 8] < 0.5
  np.testing.assert_array_equal(layout_lib.face_masks(np.zeros((1, 4)), 8, 8), 0.0)
  traj = layout_lib.box_trajectory([[0, 0, .5, .5], [.5, .5, 1, 1]], 3)
  np.testing.assert_allclose(traj[1], [.25, .25, .75, .75])
