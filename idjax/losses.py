"""Training losses: the rectified-flow denoising loss and the identity loss.

The identity-preservation loss is BRIEF 1.4:

    L_id = mean_t || f(x_t) - mean_r f(ref_r) ||^2
           + lambda_temporal * mean_t || f(x_t) - f(x_{t+1}) ||^2

with f the frozen face encoder applied to face crops of the model's clean
estimate x0_hat. Both terms are *averaged* (over frames, resp. adjacent frame
pairs), as the article's code does, so lambda_temporal does not silently grow
with clip length.
"""

import einops
import jax
import jax.numpy as jnp

from idjax.face.crop import crop_and_resize


def denoising_loss(velocity_pred, velocity_target, example_axes: int = 1):
  """Mean squared velocity error per example: [B, ...] x2 -> float32 [B]; or,
  with example_axes=2, per frame: [B, T, ...] x2 -> [B, T]."""
  err = jnp.square(velocity_pred.astype(jnp.float32) - velocity_target)
  return jnp.mean(err, axis=tuple(range(example_axes, err.ndim)))


def _masked_mean(values, mask, axis):
  """Mean of `values` over `axis` where `mask`; (mean, has_any) with mean 0 if empty."""
  count = jnp.sum(mask, axis=axis)
  total = jnp.sum(jnp.where(mask, values, 0.0), axis=axis)
  return total / jnp.maximum(count, 1), count > 0


def identity_preservation_terms(frame_embeddings, reference_embeddings, mask=None,
                                reference_mask=None):
  """Per-example reference and temporal terms of the identity loss.

  Args:
    frame_embeddings: float [B, T, D], f of each (generated) frame's face.
    reference_embeddings: float [B, R, D], f of each reference image.
    mask: bool [B, T] valid frames (None = all).
    reference_mask: bool [B, R] valid references (None = all).

  Returns:
    dict of float32 [B]: `reference` = mean over valid frames of
    ||f_t - mean_valid_r f_r||^2; `temporal` = mean over adjacent pairs with
    both frames valid of ||f_t - f_{t+1}||^2; `reference_defined` /
    `temporal_defined` (bool [B]) say whether the example has anything to
    average (a valid frame and a valid reference / a valid adjacent pair);
    undefined terms are 0.
  """
  frames = frame_embeddings.astype(jnp.float32)
  refs = reference_embeddings.astype(jnp.float32)
  b, t = frames.shape[:2]
  mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
  reference_mask = (jnp.ones(refs.shape[:2], bool) if reference_mask is None
                    else reference_mask.astype(bool))
  anchor, has_ref = _masked_mean(refs, reference_mask[..., None], axis=1)  # [B, D]
  has_ref = has_ref[:, 0]
  ref_dist = jnp.sum(jnp.square(frames - anchor[:, None]), axis=-1)       # [B, T]
  reference, has_frame = _masked_mean(ref_dist, mask, axis=1)
  pair_dist = jnp.sum(jnp.square(frames[:, 1:] - frames[:, :-1]), axis=-1)  # [B, T-1]
  temporal, has_pair = _masked_mean(pair_dist, mask[:, 1:] & mask[:, :-1], axis=1)
  reference_defined = has_frame & has_ref
  return dict(reference=jnp.where(reference_defined, reference, 0.0),
              temporal=temporal,
              reference_defined=reference_defined,
              temporal_defined=has_pair)


def _weighted_mean(values, weights):
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-6)


def identity_preservation_loss(frame_embeddings, reference_embeddings, lambda_temporal,
                               mask=None, *, reference_mask=None, sample_weight=None,
                               return_terms=False):
  """L_id of BRIEF 1.4 as a scalar (see module docstring for the formula).

  Args:
    frame_embeddings: float [B, T, D].
    reference_embeddings: float [B, R, D].
    lambda_temporal: weight of the adjacent-frame term.
    mask: bool [B, T] valid frames; a masked frame enters neither term (and
      breaks the pairs it belongs to).
    reference_mask: bool [B, R] valid references (the anchor is their mean).
    sample_weight: float [B] (e.g. 0 for high-noise examples or absent
      characters); None = 1.

  Each term is averaged over frames (pairs) within an example, then over the
  examples where it is defined, weighted by `sample_weight`; an example with
  no valid frame or no valid reference adds nothing (and does not dilute the
  mean). If nothing is defined the loss is 0.

  Returns:
    float32 scalar, or (scalar, dict(reference=, temporal=)) with
    `return_terms=True`.
  """
  terms = identity_preservation_terms(frame_embeddings, reference_embeddings, mask,
                                      reference_mask)
  weight = (jnp.ones(frame_embeddings.shape[:1], jnp.float32) if sample_weight is None
            else sample_weight.astype(jnp.float32))
  reference = _weighted_mean(terms["reference"], weight * terms["reference_defined"])
  temporal = _weighted_mean(terms["temporal"], weight * terms["temporal_defined"])
  loss = reference + lambda_temporal * temporal
  if return_terms:
    return loss, dict(reference=reference, temporal=temporal)
  return loss


def frame_window(x, start, length: int, axis: int):
  """Per-example window x[b, ..., start[b] : start[b] + length, ...] along `axis`
  (counted without the batch axis); static length keeps shapes static."""
  return jax.vmap(lambda xb, s: jax.lax.dynamic_slice_in_dim(xb, s, length, axis))(x, start)


def face_embeddings(clip, boxes, encode, size: int):
  """Embeds every character's face crop in every frame of a clip.

  Args:
    clip: float [B, F, H, W, 3] in [-1, 1] (differentiable).
    boxes: float [B, C, F, 4] per-frame face boxes.
    encode: crops float [N, S, S, 3] -> embeddings [N, D] (the frozen encoder).
    size: S.

  Returns:
    float32 [B, C, F, D].
  """
  b, c = boxes.shape[:2]
  crops = crop_and_resize(clip[:, None], boxes, size)                   # [B, C, F, S, S, 3]
  emb = encode(einops.rearrange(crops, "b c f h w x -> (b c f) h w x"))
  return einops.rearrange(emb, "(b c f) d -> b c f d", b=b, c=c)


def latent_face_windows(latents, boxes, cells: int):
  """Each character's square window of latent cells around its face.

  Args:
    latents: float [B, F, h, w, C].
    boxes: float [B, K, F, 4] (y0, x0, y1, x1) fractions of the frame.
    cells: window side in latent cells (<= h, w).

  Returns:
    (windows [B, K, F, cells, cells, C], boxes [B, K, F, 4] as fractions of
    the window). The window sits at the same place in every frame (centred
    on the mean box centre, clamped inside the grid), so a decoder that mixes
    frames sees them aligned.
  """
  _, frames, h, w, channels = latents.shape
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0                          # [B, K, F, 2]
  centre = jnp.mean(centre, axis=2) * jnp.array([h, w], jnp.float32)        # [B, K, 2]
  limit = jnp.array([h - cells, w - cells], jnp.float32)
  origin = jnp.clip(jnp.round(centre - cells / 2.0), 0.0, limit)            # [B, K, 2]

  def cut(clip, yx):
    yx = yx.astype(jnp.int32)
    return jax.lax.dynamic_slice(clip, (0, yx[0], yx[1], 0), (frames, cells, cells, channels))

  windows = jax.vmap(lambda clip, yx: jax.vmap(lambda o: cut(clip, o))(yx))(latents, origin)
  scale = jnp.array([h, w, h, w], jnp.float32)
  shift = jnp.concatenate([origin, origin], axis=-1)[:, :, None]           # [B, K, 1, 4]
  return windows, (boxes * scale - shift) / cells


def decoded_window_embeddings(latents, window_boxes, start, num_frames: int, encode,
                              size: int, to_pixels, latent_window: int = 0):
  """Face embeddings [B, C, F, D] of frames start .. start + F - 1 of the decoded
  clip, for a causal decoder with a temporal factor > 1 (the Wan VAE).

  Every latent frame is decoded, from latent frame 0, and the window's frames
  are cut from the decoded clip. Why from 0: a causal decoder decodes the
  first latent frame it is given as a clip's first frame (1 frame, not 4)
  and carries a cache of the frames before into the later ones, so decoding
  a window of latent frames alone would give frames sampling never makes.
  Decoding the whole clip is the simplest correct choice; the gradient of a
  window's frames still reaches only the latent frames up to the window's
  last (causality). `latent_window` keeps the decode to each face's square
  of latent cells, over all latent frames (`latent_face_windows`).

  Args:
    latents: float [B, T', h, w, C] (gradients flow through it).
    window_boxes: float [B, C, F, 4], the boxes of the window's frames.
    start: int [B], the window's first decoded frame.
    to_pixels: latents [N, T', h, w, C] -> frames [N, 1 + f (T' - 1), H, W, 3].
    The rest: as `identity_loss_on_estimate`.
  """
  if not latent_window:
    clip = frame_window(to_pixels(latents), start, num_frames, axis=0)
    return face_embeddings(clip, window_boxes, encode, size)
  b, c = window_boxes.shape[:2]
  windows, inner = latent_face_windows(latents, window_boxes, latent_window)
  pixels = to_pixels(einops.rearrange(windows, "b c ... -> (b c) ..."))  # [BC, T, S, S, 3]
  pixels = frame_window(pixels, jnp.repeat(start, c), num_frames, axis=0)
  inner = einops.rearrange(inner, "b c f x -> (b c) 1 f x")
  return einops.rearrange(face_embeddings(pixels, inner, encode, size),
                          "(b c) 1 f d -> b c f d", b=b, c=c)


def identity_loss_on_estimate(x0_hat, boxes, start, ref_embeddings, ref_valid, weight,
                              encode, size: int, num_frames: int, lambda_temporal,
                              to_pixels=None, latent_window: int = 0,
                              temporal_factor: int = 1):
  """The identity loss of a batch, per character, on a window of frames.

  Args:
    x0_hat: float [B, T, H, W, C] clean estimate (gradients flow through it):
      pixels, or latents when `to_pixels` is given.
    boxes: float [B, C, T, 4], one box per frame (of the decoded clip).
    start: int [B] first frame of each example's window of `num_frames`
      consecutive frames (consecutive so the temporal term compares neighbours).
    ref_embeddings: float [B, C, K, D]; ref_valid bool [B, C, K].
    weight: float [B, C]: 0 for absent or identity-dropped characters and
      for examples whose t is above the low-noise threshold.
    encode, size: the frozen encoder and its input side.
    to_pixels: None (x0_hat is pixels) or the frozen decoder, latents
      [B, F, h, w, C] -> pixels [B, F, H, W, 3]; only the window's frames are
      decoded, and its gradient reaches x0_hat.
    latent_window: with `to_pixels`, decode only each face's window of this
      many latent cells (`latent_face_windows`) instead of whole frames; 0 =
      whole frames. The decoder is the costliest part of the loss.
    temporal_factor: frames per latent frame of the decoder. 1: a window of
      latent frames decodes to the window's frames, and only those are
      decoded. f > 1 (a causal decoder, T = 1 + f (T' - 1) frames): the whole
      clip is decoded and the window cut from it (`decoded_window_embeddings`).

  Returns:
    (loss scalar, dict(reference=, temporal=)); characters are pooled into the
    example axis, so every present character counts once.
  """
  window_boxes = frame_window(boxes, start, num_frames, axis=1)  # [B, C, F, 4]
  if to_pixels is not None and temporal_factor > 1:
    emb = decoded_window_embeddings(x0_hat, window_boxes, start, num_frames, encode, size,
                                    to_pixels, latent_window)
    return _pooled_identity_loss(emb, ref_embeddings, ref_valid, weight, lambda_temporal)
  clip = frame_window(x0_hat, start, num_frames, axis=0)        # [B, F, H, W, C]
  if to_pixels is None:
    emb = face_embeddings(clip, window_boxes, encode, size)     # [B, C, F, D]
  elif not latent_window:
    emb = face_embeddings(to_pixels(clip), window_boxes, encode, size)
  else:
    b, c = window_boxes.shape[:2]
    windows, inner = latent_face_windows(clip, window_boxes, latent_window)
    pixels = to_pixels(einops.rearrange(windows, "b c ... -> (b c) ..."))  # [BC, F, S, S, 3]
    inner = einops.rearrange(inner, "b c f x -> (b c) 1 f x")
    emb = einops.rearrange(face_embeddings(pixels, inner, encode, size),
                           "(b c) 1 f d -> b c f d", b=b, c=c)
  return _pooled_identity_loss(emb, ref_embeddings, ref_valid, weight, lambda_temporal)


def _pooled_identity_loss(emb, ref_embeddings, ref_valid, weight, lambda_temporal):
  """`identity_preservation_loss` with the characters pooled into the example axis."""
  flat = lambda a: einops.rearrange(a, "b c ... -> (b c) ...")
  return identity_preservation_loss(
      flat(emb), flat(ref_embeddings), lambda_temporal,
      reference_mask=flat(ref_valid), sample_weight=flat(weight), return_terms=True)
