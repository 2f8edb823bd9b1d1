"""Shot boundaries from frame-difference statistics.

Each frame is reduced to a 32x32 thumbnail and a colour histogram (8 bins per
channel). The change between consecutive frames is the mean absolute pixel
difference plus half the L1 distance of the histograms, both in [0, 1]. A cut
is a frame whose change is (a) at least `min_score`, (b) at least `ratio`
times the mean change of the `window` frames on either side (the adaptive
test of PySceneDetect's AdaptiveDetector: fast motion raises the
neighbourhood too, a cut does not) and (c) the largest within that window;
(d) shots shorter than `min_shot` frames are merged into the previous one,
so a flash or a single glitched frame does not split a shot.
"""

import numpy as np
from PIL import Image

THUMB = 32
BINS = 8


def frame_features(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(thumbnail float32 [32, 32, 3] in [0, 1], histogram float32 [3 * 8] summing to 3)."""
  thumb = np.asarray(Image.fromarray(frame).resize((THUMB, THUMB), Image.BILINEAR), np.float32)
  thumb /= 255.0
  bins = np.minimum((thumb * BINS).astype(np.int64), BINS - 1)
  hist = np.concatenate([np.bincount(bins[..., c].ravel(), minlength=BINS) for c in range(3)])
  return thumb, hist.astype(np.float32) / (THUMB * THUMB)


def change(previous, current) -> float:
  """The change between two frames' `frame_features`, in [0, 2]."""
  (thumb_a, hist_a), (thumb_b, hist_b) = previous, current
  pixel = float(np.abs(thumb_b - thumb_a).mean())
  return pixel + float(np.abs(hist_b - hist_a).sum()) / 6.0  # L1 of 3 histograms: 0..6


def detect_cuts(
    scores: np.ndarray,
    *,
    min_score: float = 0.12,
    ratio: float = 3.0,
    window: int = 4,
    min_shot: int = 4,
) -> list[int]:
  """Frame indices that start a new shot (never 0), increasing."""
  scores = np.asarray(scores, np.float64)
  n = len(scores)
  cuts = []
  for i in range(1, n):
    s = scores[i]
    if s < min_score:
      continue
    lo, hi = max(1, i - window), min(n, i + window + 1)
    neighbours = np.concatenate([scores[lo:i], scores[i + 1 : hi]])
    if neighbours.size and (s < ratio * neighbours.mean() or s < neighbours.max()):
      continue
    if cuts and i - cuts[-1] < min_shot:
      continue
    if i < min_shot and not cuts:
      continue
    cuts.append(i)
  return cuts


def shots_from_cuts(cuts: list[int], num_frames: int) -> np.ndarray:
  """int [S, 2]: (first, stop) frame ranges of the shots, covering 0..num_frames."""
  edges = [0] + [c for c in cuts if 0 < c < num_frames] + [num_frames]
  return np.array([(a, b) for a, b in zip(edges[:-1], edges[1:])], np.int64).reshape(-1, 2)


def shot_of_frame(shots: np.ndarray, frame: int) -> int:
  return int(np.searchsorted(shots[:, 1], frame, side="right"))
