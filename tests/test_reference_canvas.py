"""The reference canvas: each character's reference drawn in its face box,
checked against an independent computation, and how the model gates it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from idjax import layout, models
from idjax.conditioning import reference_canvas
from helpers import model_setup, tiny_model_config

R, H = 32, 48


def _ramp_reference():
  """uint8 [R, R, 3]: red rises with x, green with y, blue constant."""
  ramp = (np.arange(R) + 0.5) / R
  image = np.zeros((R, R, 3), np.float64)
  image[..., 0] = 40 + 160 * ramp[None, :]
  image[..., 1] = 40 + 160 * ramp[:, None]
  image[..., 2] = 90
  return np.round(image).astype(np.uint8)


def _canvas(refs, ref_valid, char_valid, boxes):
  return np.asarray(
      reference_canvas(
          jnp.asarray(refs),
          jnp.asarray(ref_valid),
          jnp.asarray(char_valid),
          jnp.asarray(boxes),
          H,
          H,
      )
  )


def test_the_reference_lands_in_the_box_as_an_independent_resampling_says():
  ref = _ramp_reference()
  refs = np.zeros((1, 1, 2, R, R, 3), np.uint8)
  refs[0, 0, 1] = ref  # reference 0 is padding
  box = np.array([0.2, 0.3, 0.8, 0.7], np.float32)  # 28.8 x 19.2 px: scaled down
  boxes = np.broadcast_to(box, (1, 1, 3, 4))
  canvas = _canvas(refs, [[[False, True]]], [[True]], boxes)
  chex.assert_shape(canvas, (1, 3, H, H, 3))
  mask = layout.face_masks(box, H, H)
  # Independently: frame pixel centre -> position in the reference, where the
  # ramp is linear, so any normalised resampling kernel returns its value.
  ys = (np.arange(H) + 0.5) / H
  u = (ys - box[0]) / (box[2] - box[0]) * R  # reference pixel coordinates
  v = (ys - box[1]) / (box[3] - box[1]) * R
  expect = np.zeros((H, H, 3))
  expect[..., 0] = 40 + 160 * (v[None, :] / R)
  expect[..., 1] = 40 + 160 * (u[:, None] / R)
  expect[..., 2] = 90
  expect = (expect - 127.5) / 127.5  # model space
  # Away from the box's edge (where the kernel reaches past the reference).
  core = layout.face_masks(np.array([0.3, 0.38, 0.7, 0.62]), H, H) == 1.0
  assert core.sum() > 50
  for frame in canvas[0]:
    np.testing.assert_allclose(frame[core], expect[core], atol=2.5 / 127.5)
    np.testing.assert_array_equal(frame[mask == 0], 0.0)  # nothing outside the mask


def test_first_valid_reference_invalid_characters_and_drawing_order():
  refs = np.zeros((1, 2, 3, R, R, 3), np.uint8)
  refs[0, 0] = np.array([10, 60, 200], np.uint8)[:, None, None, None] * np.ones(
      (1, R, R, 1), np.uint8
  )
  refs[0, 1] = 250
  ref_valid = np.array([[[False, True, True], [True, False, False]]])
  boxes = np.zeros((1, 2, 1, 4), np.float32)
  boxes[0, 0, 0] = [0.1, 0.1, 0.7, 0.7]
  boxes[0, 1, 0] = [0.35, 0.35, 0.95, 0.95]  # overlaps character 0's face
  canvas = _canvas(refs, ref_valid, [[True, True]], boxes)[0, 0]
  grey = lambda v: (v - 127.5) / 127.5
  # Character 0 shows its reference 1 (value 60), character 1 is drawn over it.
  inside0 = layout.face_masks(np.array([0.22, 0.22, 0.42, 0.42]), H, H) == 1  # 0's face only
  inside1 = layout.face_masks(np.array([0.48, 0.48, 0.57, 0.57]), H, H) == 1  # both faces
  np.testing.assert_allclose(canvas[inside0], grey(60), atol=1e-5)
  np.testing.assert_allclose(canvas[inside1], grey(250), atol=1e-5)
  # An invalid character is not drawn: the overlap shows character 0.
  only0 = _canvas(refs, ref_valid, [[True, False]], boxes)[0, 0]
  np.testing.assert_allclose(only0[inside1], grey(60), atol=1e-5)
  none = _canvas(refs, ref_valid, [[False, False]], boxes)
  np.testing.assert_array_equal(none, 0.0)


def test_the_canvas_moves_the_output_and_strength_zero_removes_it():
  _, apply_fn, params, (x, t, tokens, identity, strength) = model_setup(reference_canvas=True)
  canvas = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)
  identity = identity.replace(ref_canvas=canvas)
  apply = lambda ident, s: apply_fn({"params": params}, x, t, tokens, ident, s)
  with_canvas = apply(identity, strength)
  without = apply(identity.replace(ref_canvas=None), strength)
  assert float(jnp.abs(with_canvas - without).max()) > 1e-3
  # identity_strength 0 equals no identity at all, canvas or not.
  zero = jnp.zeros_like(strength)
  np.testing.assert_array_equal(apply(identity, zero), apply(None, zero))
  # The CFG null condition (no valid character) ignores the canvas.
  null = identity.replace(char_valid=jnp.zeros_like(identity.char_valid))
  np.testing.assert_array_equal(
      apply(null, strength), apply(null.replace(ref_canvas=None), strength)
  )


def test_a_model_without_the_canvas_has_the_same_params_as_before():
  """reference_canvas=False keeps the patch embedding's input width, so models
  trained before the canvas existed load unchanged."""
  shapes = {}
  for flag in (False, True):
    cfg = tiny_model_config(reference_canvas=flag)
    model = models.build_model(cfg)
    args = models.dummy_inputs(cfg, batch=1, frames=1, height=16, width=16, text_len=cfg.text_len)
    params = jax.eval_shape(lambda m=model, a=args: m.init(jax.random.key(0), *a))["params"]
    shapes[flag] = params["patch_embed"]["kernel"].value.shape
  layout_channels = models.dit.LAYOUT_CHANNELS
  assert shapes[False][0] == 16 * (3 + layout_channels)
  assert shapes[True][0] == 16 * (3 + layout_channels + 3)
