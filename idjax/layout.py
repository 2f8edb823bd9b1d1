"""Where each character's face goes: box trajectories and face masks.

A character's layout is a box trajectory over the clip, boxes being float
(y0, x0, y1, x1) fractions of the frame. Given as
  [4]      one box for every frame,
  [2, 4]   a start and an end box, linearly interpolated over the frames,
  [T, 4]   one box per frame (e.g. the boxes of a rendered clip).
Face masks are soft-edged ellipses inscribed in the boxes, in training and
in sampling alike: the trainer builds its masks from the clip's boxes with
this same function, so the model never sees a mask it could not be given at
sampling time (the data world's pixel-exact head masks would leak the hair
style). The soft edge (about a pixel) keeps masks of sub-pixel moves from
jumping.
"""

import numpy as np


def validate_box(box, what: str = "box") -> np.ndarray:
  """float32 [4]; ValueError (one sentence) unless 0 <= y0 < y1 <= 1 and same for x."""
  box = np.asarray(box, np.float64).reshape(-1)
  if box.shape != (4,) or not np.all(np.isfinite(box)):
    raise ValueError(f"{what} must be four numbers y0,x0,y1,x1, got {box.tolist()}.")
  y0, x0, y1, x1 = box
  if not (0.0 <= y0 < y1 <= 1.0 and 0.0 <= x0 < x1 <= 1.0):
    raise ValueError(f"{what} {box.tolist()} must satisfy 0 <= y0 < y1 <= 1 "
                     "and 0 <= x0 < x1 <= 1 (fractions of the frame).")
  return box.astype(np.float32)


def box_trajectory(spec, num_frames: int) -> np.ndarray:
  """A layout spec ([4], [2, 4] or [T, 4]) -> float32 [T, 4] boxes."""
  spec = np.asarray(spec, np.float32)
  if spec.shape == (4,):
    spec = spec[None]
  if spec.ndim != 2 or spec.shape[-1] != 4:
    raise ValueError(f"A box trajectory must have shape [4], [2, 4] or [T, 4], got {list(spec.shape)}.")
  for i, box in enumerate(spec):
    validate_box(box, f"box {i}")
  if spec.shape[0] == num_frames:
    return spec.copy()
  if spec.shape[0] == 1:
    return np.repeat(spec, num_frames, axis=0)
  if spec.shape[0] == 2:
    w = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)[:, None]
    return (1.0 - w) * spec[0] + w * spec[1]
  raise ValueError(f"A box trajectory has {spec.shape[0]} boxes; expected 1, 2 "
                   f"(start and end) or one per frame ({num_frames}).")


def layout_boxes(layout, num_characters, max_characters: int, num_frames: int) -> np.ndarray:
  """Per-prompt layouts -> float32 [B, C, T, 4] (absent characters: zeros).

  Args:
    layout: per prompt, a list with one box-trajectory spec per character.
    num_characters: per prompt, how many characters it has (its references).
    max_characters: C.
    num_frames: T.
  """
  if len(layout) != len(num_characters):
    raise ValueError(f"layout has {len(layout)} entries for {len(num_characters)} prompts.")
  out = np.zeros((len(layout), max_characters, num_frames, 4), np.float32)
  for b, (chars, count) in enumerate(zip(layout, num_characters)):
    if len(chars) != count:
      raise ValueError(f"Prompt {b} has {count} character(s) but {len(chars)} box trajectories.")
    for c, spec in enumerate(chars):
      out[b, c] = box_trajectory(spec, num_frames)
  return out


def face_masks(boxes, height: int, width: int, shape: str = "ellipse",
               softness: float = 1.0, xp=np):
  """Soft masks of the boxes on the pixel grid.

  The trainer builds its masks with this same function (xp=jax.numpy) from
  the clip's boxes, so the model sees the same kind of mask in training and
  in sampling.

  Args:
    boxes: float [..., 4] fractions (y0, x0, y1, x1).
    height, width: the frame's pixel grid.
    shape: "ellipse" (inscribed in the box) or "box".
    softness: width of the edge ramp in pixels.
    xp: the array module (numpy, or jax.numpy inside a jitted function).

  Returns:
    float32 [..., H, W] in [0, 1]; an all-zero box gives an all-zero mask.
  """
  boxes = xp.asarray(boxes, xp.float32)
  y0, x0, y1, x1 = [boxes[..., i, None, None] * s for i, s in
                    zip(range(4), (height, width, height, width))]  # pixels
  ys = (xp.arange(height, dtype=xp.float32) + 0.5)[:, None]
  xs = (xp.arange(width, dtype=xp.float32) + 0.5)[None, :]
  if shape == "ellipse":
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    ry, rx = xp.maximum((y1 - y0) / 2, 1e-6), xp.maximum((x1 - x0) / 2, 1e-6)
    radius = xp.sqrt(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2)
    inside = (1.0 - radius) * xp.minimum(ry, rx)   # ~ signed distance in pixels
  elif shape == "box":
    inside = xp.minimum(xp.minimum(ys - y0, y1 - ys), xp.minimum(xs - x0, x1 - xs))
  else:
    raise ValueError(f"Unknown mask shape {shape!r}; expected 'ellipse' or 'box'.")
  mask = xp.clip(inside / softness + 0.5, 0.0, 1.0)
  empty = (y1 <= y0) | (x1 <= x0)
  return xp.where(empty, 0.0, mask).astype(xp.float32)


def latent_frame_groups(num_frames: int, temporal_factor: int) -> np.ndarray:
  """The frames each latent frame of a causal video autoencoder covers: int32 [T', f].

  A causal VAE with temporal factor f > 1 (Wan 2.1: 4) encodes frame 0 alone,
  then each following group of f frames, so T = 1 + f k frames make
  T' = 1 + k latent frames: latent frame 0 covers frame 0, latent frame
  j >= 1 frames f (j - 1) + 1 .. f j. Row 0 holds frame 0 f times, so that
  every row has f entries. f = 1: one latent frame per frame ([[0], ..., [T-1]]).

  Raises ValueError (one sentence naming the valid counts) unless T = 1 + f k.
  """
  f = int(temporal_factor)
  if num_frames < 1 or (num_frames - 1) % f:
    raise ValueError(f"An autoencoder with temporal factor {f} takes 1 + {f}k frames "
                     f"({', '.join(str(1 + f * k) for k in range(4))}, ...); got {num_frames}.")
  later = np.arange(1, num_frames, dtype=np.int32).reshape(-1, f)
  return np.concatenate([np.zeros((1, f), np.int32), later])


def latent_face_masks(boxes, height: int, width: int, temporal_factor: int = 1, xp=np):
  """`face_masks` of per-frame boxes [..., T, 4] at the latent frames: float32 [..., T', H, W].

  With temporal factor 1 these are `face_masks` themselves. Otherwise a latent
  frame's mask is the union (the maximum) of the masks of the frames it covers
  (`latent_frame_groups`): its tokens decode to all of those frames, so a
  token that holds the face in any of them may read the identity. Latent
  frame 0 is frame 0's mask alone, as the encoder encodes frame 0 alone.
  """
  masks = face_masks(boxes, height, width, xp=xp)
  if temporal_factor == 1:
    return masks
  groups = latent_frame_groups(np.shape(boxes)[-2], temporal_factor)
  return xp.max(masks[..., groups, :, :], axis=-3)
