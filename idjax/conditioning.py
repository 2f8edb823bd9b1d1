"""Reference images -> the identity conditioning the video model reads.

Training (`idjax.train.step`) and sampling (`idjax.sampling.generator`) both
encode references here, so the model is conditioned the same way in both, and
neither imports the other.
"""

import einops
import jax
import jax.numpy as jnp

from idjax import diffusion, layout
from idjax.face.crop import crop_and_resize


def shrink_boxes(boxes, scale: float, xp=jnp):
  """Boxes [..., 4] (y0, x0, y1, x1) scaled by `scale` about their centres
  (all-zero boxes stay all zero); scale 1 returns them bit for bit."""
  boxes = xp.asarray(boxes, xp.float32)
  if scale == 1.0:
    return boxes
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2
  half = (boxes[..., 2:] - boxes[..., :2]) * (scale / 2)
  return xp.concatenate([centre - half, centre + half], axis=-1)


def model_face_masks(
    boxes, height: int, width: int, temporal_factor: int, mask_scale: float, xp=jnp
):
  """The face masks the model reads, at its (latent) grid: those of the boxes
  shrunk by `mask_scale` (model.face_mask_scale; the identity loss and the
  eval crop faces by the boxes themselves). Training and sampling both build
  them here."""
  return layout.latent_face_masks(
      shrink_boxes(boxes, mask_scale, xp), height, width, temporal_factor, xp=xp
  )


def encode_references(encoder, encoder_params, references):
  """uint8 [B, C, K, R, R, 3] -> (emb [B, C, K, D], fmap [B, C, K, N, F]).

  Each reference is resized whole (box = full image) to the encoder's input;
  no gradient reaches anything here.
  """
  b, c, k = references.shape[:3]
  x = diffusion.to_model_space(references)
  full = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 1.0]), (b, c, k, 4))
  crops = einops.rearrange(
      crop_and_resize(x, full, encoder.input_size), "b c k h w x -> (b c k) h w x"
  )
  emb, fmap = encoder.apply(encoder_params, crops)
  emb = einops.rearrange(emb, "(b c k) d -> b c k d", b=b, c=c)
  fmap = einops.rearrange(fmap, "(b c k) n f -> b c k n f", b=b, c=c)
  return jax.lax.stop_gradient(emb), jax.lax.stop_gradient(fmap)


def reference_canvas(
    references,
    ref_valid,
    char_valid,
    boxes,
    height: int,
    width: int,
    mask_scale: float = 1.0,
    mattes=None,
):
  """Each character's reference drawn where its face goes: float [B, T, H, W, 3].

  A character's first valid reference portrait (framed like a face box: the
  world renders portraits with the head box = the whole image) is resized
  into the character's box on every frame, inside the box's soft ellipse
  mask (layout.face_masks), over the earlier characters, as the world draws
  heads back to front. Zero (mid grey in model space) elsewhere, for
  characters that are not valid and for all-zero boxes.

  This is the identity path's spatially aligned input (reference
  composition, as MAGREF conditions Wan 2.1 by channel concatenation): at
  high noise, where the resampler's identity tokens barely inform the face,
  the face's appearance is there at the right place in the model's input.

  Args:
    references: uint8 [B, C, K, R, R, 3].
    ref_valid: bool [B, C, K]; the first valid reference of a character is drawn.
    char_valid: bool [B, C].
    boxes: float [B, C, T, 4] (y0, x0, y1, x1) fractions of the frame.
    height, width: the frame's pixel grid.
    mask_scale: the portrait is placed in the whole box but drawn only inside
      the ellipse of the box shrunk by this factor: the model's face masks
      (model.face_mask_scale).
    mattes: None, or uint8/float [B, C, K, R, R] head mattes of the
      references (1 on the head). Given, each portrait is drawn only where
      its matte, placed with it, is on (inside the ellipse as well), and the
      function returns (canvas, alpha float [B, T, H, W, 1]): the drawn
      coverage, so the model can tell "mid grey here" from "not known here".
      An all-ones matte (none known) draws the whole ellipse, as without.
  """
  b, c, k, r = references.shape[:4]
  first = jnp.argmax(ref_valid, axis=-1)  # [B, C]
  portrait = jnp.take_along_axis(references, first[:, :, None, None, None, None], axis=2)[:, :, 0]
  portrait = diffusion.to_model_space(portrait)  # [B, C, R, R, 3]
  boxes = jnp.asarray(boxes, jnp.float32)
  y0, x0, y1, x1 = (boxes[..., i] for i in range(4))  # [B, C, T]
  scale = jnp.stack([(y1 - y0) * height / r, (x1 - x0) * width / r], -1)  # [B, C, T, 2]
  shift = jnp.stack([y0 * height, x0 * width], -1)

  def place(image, s, tr):  # [R, R, 3] -> [H, W, 3]
    return jax.image.scale_and_translate(image, (height, width, 3), (0, 1), s, tr, "linear")

  place_frames = jax.vmap(place, in_axes=(None, 0, 0))  # over T
  placed = jax.vmap(jax.vmap(place_frames))(portrait, scale, shift)  # [B, C, T, H, W, 3]
  masks = layout.face_masks(shrink_boxes(boxes, mask_scale), height, width, xp=jnp)
  masks = masks * char_valid[:, :, None, None, None].astype(jnp.float32)
  if mattes is not None:
    matte = jnp.take_along_axis(
        jnp.asarray(mattes, jnp.float32), first[:, :, None, None, None], axis=2
    )[:, :, 0, ..., None]
    place_mattes = jax.vmap(
        jax.vmap(
            jax.vmap(
                lambda image, s, tr: jax.image.scale_and_translate(
                    image, (height, width, 1), (0, 1), s, tr, "linear"
                ),
                in_axes=(None, 0, 0),
            )
        )
    )
    masks = masks * place_mattes(matte, scale, shift)[..., 0]  # [B, C, T, H, W]
  canvas = jnp.zeros(placed.shape[:1] + placed.shape[2:], jnp.float32)
  alpha = jnp.zeros(canvas.shape[:-1] + (1,), jnp.float32)
  for ch in range(c):  # back to front
    m = masks[:, ch, ..., None]
    canvas = canvas * (1.0 - m) + placed[:, ch] * m
    alpha = alpha * (1.0 - m) + m
  return canvas if mattes is None else (canvas, alpha)


def model_canvas(
    references,
    ref_valid,
    char_valid,
    boxes,
    height: int,
    width: int,
    mask_scale: float,
    to_model,
    mattes=None,
    temporal_factor: int = 1,
):
  """The reference canvas as the model reads it: `reference_canvas` in the
  model's space (`to_model`: the autoencoder's encoder, or the identity),
  with its alpha at the model's grid appended as one more channel when
  `mattes` are given (model.canvas_alpha). Training and sampling both call
  this."""
  args = (references, ref_valid, char_valid, boxes, height, width, mask_scale)
  if mattes is None:
    return to_model(reference_canvas(*args))
  canvas, alpha = reference_canvas(*args, mattes=mattes)
  canvas = to_model(canvas)
  alpha = alpha_to_grid(alpha, canvas.shape[2], canvas.shape[3], temporal_factor)
  return jnp.concatenate([canvas, alpha.astype(canvas.dtype)], axis=-1)


def alpha_to_grid(alpha, height: int, width: int, temporal_factor: int):
  """The canvas's alpha [B, T, H, W, 1] at the model's grid [B, T', h, w, 1]:
  the mean over each cell's pixels, and over a latent frame's frames the
  maximum (as `layout.latent_face_masks` takes the union of its masks)."""
  t = alpha.shape[1]
  alpha = einops.reduce(alpha, "b t (h sh) (w sw) one -> b t h w one", "mean", h=height, w=width)
  if temporal_factor == 1:
    return alpha
  groups = layout.latent_frame_groups(t, temporal_factor)
  return jnp.max(alpha[:, groups], axis=2)
