"""The reference canvas: each character's reference drawn in its face box,
checked against an independent computation, and how the model gates it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from idjax import layout, models
from idjax.conditioning import alpha_to_grid, reference_canvas
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


def test_a_matte_draws_the_reference_only_on_its_head_and_says_so_in_alpha():
  ref = _ramp_reference()
  refs = ref[None, None, None]
  matte = np.zeros((1, 1, 1, R, R), np.uint8)
  matte[..., : R // 2, :] = 1  # the head: the portrait's top half
  box = np.array([0.0, 0.0, 1.0, 1.0], np.float32)  # the portrait fills the frame (H = 1.5 R)
  boxes = jnp.asarray(np.broadcast_to(box, (1, 1, 2, 4)))
  args = (jnp.asarray(refs), jnp.ones((1, 1, 1), bool), jnp.ones((1, 1), bool), boxes, H, H)
  plain = np.asarray(reference_canvas(*args))
  canvas, alpha = (np.asarray(a) for a in reference_canvas(*args, mattes=jnp.asarray(matte)))
  chex.assert_shape(alpha, (1, 2, H, H, 1))
  ellipse = layout.face_masks(box, H, H)
  top, bottom = slice(0, H // 2 - 2), slice(H // 2 + 2, H)  # away from the matte's edge
  # The head: drawn as without a matte, alpha = the ellipse.
  np.testing.assert_allclose(canvas[0, :, top], plain[0, :, top], atol=1e-5)
  np.testing.assert_allclose(
      alpha[0, :, top, :, 0], np.broadcast_to(ellipse[top], (2, H // 2 - 2, H)), atol=1e-5
  )
  # Off the head: nothing drawn (mid grey, 0) and alpha 0.
  np.testing.assert_array_equal(canvas[0, :, bottom], 0.0)
  np.testing.assert_array_equal(alpha[0, :, bottom], 0.0)
  assert np.abs(plain[0, :, bottom]).max() > 0.1
  # An all-ones matte (none known) is the canvas without one, alpha the ellipse.
  ones, ones_alpha = reference_canvas(*args, mattes=jnp.ones_like(matte))
  np.testing.assert_allclose(ones, plain, atol=1e-5)
  np.testing.assert_allclose(ones_alpha[0, 0, ..., 0], ellipse, atol=1e-5)


def test_alpha_at_the_model_grid_is_the_cell_mean_and_the_latent_frames_union():
  rng = np.random.default_rng(5)
  alpha = rng.uniform(size=(1, 5, 8, 8, 1)).astype(np.float32)
  grid = np.asarray(alpha_to_grid(jnp.asarray(alpha), 2, 2, 1))
  np.testing.assert_allclose(grid[0, 3, 1, 0, 0], alpha[0, 3, 4:, :4].mean(), rtol=1e-6)
  packed = np.asarray(alpha_to_grid(jnp.asarray(alpha), 2, 2, 4))  # frames 0 | 1-4
  chex.assert_shape(packed, (1, 2, 2, 2, 1))
  cells = alpha[0].reshape(5, 2, 4, 2, 4).mean(axis=(2, 4))
  np.testing.assert_allclose(packed[0, 0, ..., 0], cells[0], rtol=1e-6)
  np.testing.assert_allclose(packed[0, 1, ..., 0], cells[1:].max(axis=0), rtol=1e-6)


def test_a_model_with_canvas_alpha_reads_one_more_channel():
  cfg = tiny_model_config(reference_canvas=True, canvas_alpha=True)
  model = models.build_model(cfg)
  args = models.dummy_inputs(cfg, batch=1, frames=1, height=16, width=16, text_len=cfg.text_len)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]
  assert params["patch_embed"]["kernel"].value.shape[0] == 16 * (3 + models.dit.LAYOUT_CHANNELS + 4)


def test_training_reads_the_mattes_and_matte_dropout_drops_them():
  """A canvas_alpha model's step depends on the batch's reference mattes; with
  train.matte_dropout = 1 every matte is all ones, bit for bit."""
  from helpers import TinyVideoModel, mesh_for, numpy_batch, put_batch, tiny_encoder
  from helpers import tiny_train_config
  from idjax.train import trainer

  ones = numpy_batch(0)
  half = dict(ones, reference_mattes=ones["reference_mattes"].copy())
  half["reference_mattes"][..., ones["references"].shape[-2] // 2 :, :] = 0

  def losses(dropout, *batches):
    config = tiny_train_config()
    config.model.reference_canvas = config.model.canvas_alpha = True
    config.train.matte_dropout = dropout
    mesh = mesh_for(config, {})
    model = TinyVideoModel(reference_canvas=True, canvas_alpha=True)
    setup = trainer.make_setup(config, model, tiny_encoder(), mesh)
    return [float(setup.run_step(setup.init(), put_batch(b, mesh))[1]["loss"]) for b in batches]

  with_half, with_ones = losses(0.0, half, ones)
  assert abs(with_half - with_ones) > 1e-6
  assert losses(1.0, half) == [with_ones]
