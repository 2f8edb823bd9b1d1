"""Differentiable crop-and-resize of face boxes.

A crop is two small matrix products, `out = Wy @ image @ Wx^T`, with
interpolation matrices built from the box. Matrices (rather than gathers) keep
the op one fused einsum on every backend and make its gradient w.r.t. the
pixels simply the transposed weights, which the identity loss relies on.
"""

import jax.numpy as jnp


def interpolation_matrix(start, stop, in_size: int, out_size: int):
  """Weights that resample the span [start, stop) of an axis to `out_size`.

  Args:
    start, stop: float arrays [...], span ends as fractions of the axis.
    in_size: pixels along the input axis.
    out_size: samples along the output axis.

  Returns:
    float32 [..., out_size, in_size]; each row sums to 1.

  Output sample i sits at the centre of the i-th of `out_size` equal cells of
  the span, in pixel units where input pixel j has its centre at j + 0.5. The
  kernel is a triangle of half-width max(1, step): plain bilinear when
  upsampling, and a tent prefilter (as in `jax.image.resize(antialias=True)`)
  when the span holds more pixels than samples, so downsizing does not alias.
  Edge padding: a sample position outside the axis is clamped to the nearest
  pixel centre, so a box partly outside the frame repeats the border pixels.
  """
  start = jnp.asarray(start, jnp.float32)[..., None]
  stop = jnp.asarray(stop, jnp.float32)[..., None]
  step = (stop - start) * in_size / out_size                    # [..., 1] pixels per sample
  centres = start * in_size + (jnp.arange(out_size) + 0.5) * step   # [..., out]
  centres = jnp.clip(centres, 0.5, in_size - 0.5)
  half_width = jnp.maximum(jnp.abs(step), 1.0)[..., None]       # [..., 1, 1]
  distance = centres[..., :, None] - (jnp.arange(in_size) + 0.5)  # [..., out, in]
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(distance) / half_width)
  # The clamped centre lies on the axis, so its nearest pixel has weight > 0.
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def crop_and_resize(images, boxes, size: int):
  """Crops boxes out of images and resizes them to `size` x `size`.

  Args:
    images: float [..., H, W, C] (integers are cast to float32, values kept).
    boxes: float [..., 4] as (y0, x0, y1, x1) fractions of the frame. The
      leading dims of `images` and `boxes` broadcast against each other, e.g.
      frames [B, 1, T, H, W, 3] with boxes [B, C, T, 4] give [B, C, T, S, S, 3].
    size: output side S.

  Returns:
    float32 [..., S, S, C], linear in `images` (differentiable w.r.t. pixels).
  """
  images = jnp.asarray(images)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  boxes = jnp.asarray(boxes, jnp.float32)
  height, width = images.shape[-3], images.shape[-2]
  wy = interpolation_matrix(boxes[..., 0], boxes[..., 2], height, size)  # [..., S, H]
  wx = interpolation_matrix(boxes[..., 1], boxes[..., 3], width, size)   # [..., S, W]
  rows = jnp.einsum("...sh,...hwc->...swc", wy, images)
  return jnp.einsum("...swc,...tw->...stc", rows, wx)
