"""Clips and reference candidates cut out of one video's face tracks.

A clip is `num_frames` frames, `frame_step` apart, inside one track (so
inside one shot: it never spans a cut); windows start at the track's first
frame and every `stride` frames after. Other tracks that cover every frame
of the window join it as further characters (largest first, up to
`max_characters`). The clip is one square window of the frame, fixed over
the clip so motion stays motion: by default the largest square, centred on
the characters' mean box centre; with `face_scale` > 0 a square of
`face_scale` times the largest face side. It is resized (antialiased) to
`resolution`, and the boxes are re-expressed as fractions of the square.

Reference candidates: per track, up to `bank_size` frames (the largest face
of each of `bank_size` equal segments of the track), each the square around
the face box resized to `reference_resolution`: framed as the synthetic
world frames its portraits (the face box is the whole image).
"""

import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass
class ClipPlan:
  frames: np.ndarray  # int64 [T] frame indices
  tracks: list[int]  # the video's track indices, primary first
  window: tuple  # (top, left, side) in pixels of the decoded frame
  boxes: np.ndarray  # float32 [len(tracks), T, 4] in fractions of the window


def _square(cy, cx, side, height, width):
  """(top, left, side) of a square of `side` centred near (cy, cx), inside the frame."""
  side = min(side, height, width)
  top = float(np.clip(cy - side / 2, 0, height - side))
  left = float(np.clip(cx - side / 2, 0, width - side))
  return top, left, float(side)


def plan(
    tracks,
    height: int,
    width: int,
    *,
    num_frames: int,
    frame_step: int = 1,
    stride: int | None = None,
    max_characters: int = 1,
    face_scale: float = 0.0,
) -> list[ClipPlan]:
  span = (num_frames - 1) * frame_step + 1
  stride = stride or span
  scale = np.array([height, width, height, width], np.float64)
  out = []
  for primary, track in enumerate(tracks):
    for start in range(track.first, track.last - span + 2, stride):
      frames = start + frame_step * np.arange(num_frames)
      others = [
          k
          for k, t in enumerate(tracks)
          if k != primary and t.shot == track.shot and t.first <= start and t.last >= frames[-1]
      ]
      others.sort(key=lambda k: -tracks[k].side_px)
      members = [primary] + others[: max_characters - 1]
      boxes = np.stack([tracks[k].boxes[frames - tracks[k].first] for k in members])
      pixels = boxes.astype(np.float64) * scale
      centre = (pixels[..., :2] + pixels[..., 2:]).reshape(-1, 2).mean(0) / 2
      if face_scale > 0:
        face = (pixels[..., 2:] - pixels[..., :2]).max()
        window = _square(centre[0], centre[1], face_scale * face, height, width)
      else:
        window = _square(centre[0], centre[1], min(height, width), height, width)
      top, left, side = window
      local = (pixels - np.array([top, left, top, left])) / side
      out.append(ClipPlan(frames, members, window, local.astype(np.float32)))
  return out


def bank_frames(track, size: int) -> np.ndarray:
  """Frame indices of a track's reference candidates (largest face per segment)."""
  n = len(track.boxes)
  area = (track.boxes[:, 2] - track.boxes[:, 0]) * (track.boxes[:, 3] - track.boxes[:, 1])
  picks = []
  for segment in np.array_split(np.arange(n), min(size, n)):
    picks.append(int(segment[np.argmax(area[segment])]))
  return track.first + np.array(sorted(set(picks)), np.int64)


def face_square(box, height: int, width: int) -> tuple:
  """(top, left, side) of the square around a fraction box, inside the frame."""
  y0, x0, y1, x1 = np.asarray(box, np.float64) * [height, width, height, width]
  return _square((y0 + y1) / 2, (x0 + x1) / 2, max(y1 - y0, x1 - x0), height, width)


def crop(frame: np.ndarray, window: tuple, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: the square (top, left, side) of the frame, resized."""
  top, left, side = window
  image = Image.fromarray(frame)
  return np.asarray(
      image.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
  )


def masks_from_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
  """uint8 [..., size, size]: 1 inside each box (the pixel grid's centres)."""
  centres = (np.arange(size) + 0.5) / size
  b = np.asarray(boxes)[..., None]
  inside_y = (centres >= b[..., 0, :]) & (centres < b[..., 2, :])
  inside_x = (centres >= b[..., 1, :]) & (centres < b[..., 3, :])
  return (inside_y[..., :, None] & inside_x[..., None, :]).astype(np.uint8)
