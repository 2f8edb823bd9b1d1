"""crop_and_resize against hand-computed interpolation weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from idjax.face.crop import crop_and_resize, interpolation_matrix


def _bilinear_weights(start, stop, in_size, out_size):
  """Independent NumPy weights: tent of half-width max(1, step) at clamped
  pixel-centre positions, normalised (the documented semantics)."""
  step = (stop - start) * in_size / out_size
  w = np.zeros((out_size, in_size))
  for i in range(out_size):
    y = start * in_size + (i + 0.5) * step
    y = min(max(y, 0.5), in_size - 0.5)
    half = max(abs(step), 1.0)
    for j in range(in_size):
      w[i, j] = max(0.0, 1.0 - abs(y - (j + 0.5)) / half)
    w[i] /= w[i].sum()
  return w


def _image(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_full_box_same_size_is_identity():
  img = _image((12, 12, 3))
  out = crop_and_resize(img, np.array([0, 0, 1, 1], np.float32), 12)
  chex.assert_shape(out, (12, 12, 3))
  np.testing.assert_allclose(out, img, atol=1e-6)


def test_box_on_pixel_grid_returns_that_patch():
  img = _image((16, 20, 3))
  box = np.array([4 / 16, 5 / 20, 12 / 16, 13 / 20], np.float32)  # rows 4..11, cols 5..12
  out = crop_and_resize(img, box, 8)
  np.testing.assert_allclose(out, img[4:12, 5:13], atol=1e-6)


def test_half_pixel_shift_averages_neighbours():
  img = _image((8, 4, 1))
  box = np.array([0.5 / 8, 0.0, 4.5 / 8, 1.0], np.float32)
  out = crop_and_resize(img, box, 4)[..., 0]
  # Output row i samples at y = i + 1, halfway between the centres of input
  # rows i and i + 1; the columns map one to one.
  np.testing.assert_allclose(out, 0.5 * (img[0:4, :, 0] + img[1:5, :, 0]),
                             atol=1e-6)


def test_matches_numpy_weights_for_arbitrary_boxes():
  img = _image((10, 14, 2))
  for box, size in [((0.13, 0.2, 0.77, 0.91), 6),     # downsizing: antialiased
                    ((0.3, 0.25, 0.5, 0.45), 9),      # upsizing: bilinear
                    ((-0.2, 0.7, 0.5, 1.3), 7)]:      # partly outside: edge padding
    wy = _bilinear_weights(box[0], box[2], 10, size)
    wx = _bilinear_weights(box[1], box[3], 14, size)
    expected = np.einsum("sh,hwc,tw->stc", wy, img, wx)
    out = crop_and_resize(img, np.array(box, np.float32), size)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_box_outside_frame_repeats_edge():
  img = _image((6, 6, 3))
  out = crop_and_resize(img, np.array([-1.0, -1.0, -0.5, -0.5], np.float32), 3)
  np.testing.assert_allclose(out, np.broadcast_to(img[0, 0], (3, 3, 3)), atol=1e-6)


def test_downsizing_is_antialiased():
  # A checkerboard has no low-frequency content: an unfiltered 2x point
  # sampler would return all +1 or all -1, a prefiltered one about 0.
  yy, xx = np.mgrid[:32, :32]
  board = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[..., None].astype(np.float32)
  out = crop_and_resize(board, np.array([0, 0, 1, 1], np.float32), 8)
  assert float(jnp.max(jnp.abs(out))) < 0.2


def test_rows_sum_to_one():
  w = interpolation_matrix(jnp.array([0.1, -0.3]), jnp.array([0.4, 1.7]), 9, 5)
  chex.assert_shape(w, (2, 5, 9))
  np.testing.assert_allclose(jnp.sum(w, -1), 1.0, atol=1e-6)


def test_gradient_is_transposed_weights():
  img = jnp.asarray(_image((10, 12, 3)))
  box = np.array([0.15, 0.05, 0.85, 0.7], np.float32)
  cotangent = _image((5, 5, 3), seed=1)
  grad = jax.grad(lambda x: jnp.sum(crop_and_resize(x, box, 5) * cotangent))(img)
  wy = _bilinear_weights(box[0], box[2], 10, 5)
  wx = _bilinear_weights(box[1], box[3], 12, 5)
  expected = np.einsum("sh,stc,tw->hwc", wy, cotangent, wx)  # Wy^T G Wx
  np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_batched_boxes_broadcast_against_frames():
  frames = _image((2, 1, 3, 16, 16, 3))           # [B, 1, T, H, W, 3]
  rng = np.random.default_rng(2)
  y0x0 = rng.uniform(0, 0.5, (2, 4, 3, 2))
  boxes = np.concatenate([y0x0, y0x0 + rng.uniform(0.2, 0.5, (2, 4, 3, 2))],
                         -1).astype(np.float32)   # [B, C, T, 4]
  out = crop_and_resize(frames, boxes, 6)
  chex.assert_shape(out, (2, 4, 3, 6, 6, 3))
  chex.assert_type(out, jnp.float32)
  for b, c, t in [(0, 0, 0), (1, 3, 2), (1, 1, 0)]:
    single = crop_and_resize(frames[b, 0, t], boxes[b, c, t], 6)
    np.testing.assert_allclose(out[b, c, t], single, atol=1e-6)


def test_uint8_input_keeps_values():
  img = np.random.default_rng(3).integers(0, 256, (8, 8, 3)).astype(np.uint8)
  out = crop_and_resize(img, np.array([0, 0, 1, 1], np.float32), 8)
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(out, img.astype(np.float32), atol=1e-4)
