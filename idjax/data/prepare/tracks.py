"""Face tracks: detections linked across frames within a shot, filled and smoothed.

Linking is greedy, frame by frame, inside one shot (a track never crosses a
cut). A detection joins the open track whose last box overlaps it most
(IoU >= `iou_min`), unless both carry embeddings that lie further apart than
`max_distance` (two people crossing). A track left without a detection for
more than `max_gap` frames closes. Sidecar track ids, when given, link
directly. Each track is then filled to every frame between its first and
last (linear interpolation of the box between detections) and smoothed with
a centred moving average of the box centre and size, and tracks shorter than
`min_frames` or smaller than `min_face_px` (median box side) are dropped.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Detections:
  """The faces found in one frame (n faces)."""

  boxes: np.ndarray  # float32 [n, 4] (y0, x0, y1, x1) fractions
  tracks: np.ndarray  # int64 [n] sidecar track id, -1 if none
  labels: np.ndarray  # int64 [n] known identity, -1 if none
  embeddings: np.ndarray | None = None  # float32 [n, D] on embedded frames


@dataclasses.dataclass
class Track:
  shot: int
  first: int  # first frame; the track covers first .. first + len(boxes) - 1
  boxes: np.ndarray  # float32 [n, 4], one per frame, smoothed
  embedding: np.ndarray  # float32 [D], mean of the embedded frames (zeros if none)
  num_embedded: int
  label: int  # majority known identity, -1 if none
  side_px: float  # median box side in pixels

  @property
  def last(self) -> int:
    return self.first + len(self.boxes) - 1


def iou(a, b) -> np.ndarray:
  """IoU of boxes a [n, 4] and b [m, 4] -> [n, m]."""
  a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
  inter_h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  inter_w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = inter_h * inter_w
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def smooth(boxes: np.ndarray, window: int) -> np.ndarray:
  """Centred moving average of centre and size over `window` frames (odd;
  shrinks at the ends, so the first and last boxes stay unbiased)."""
  boxes = np.asarray(boxes, np.float64)
  if window <= 1 or len(boxes) < 3:
    return boxes.astype(np.float32)
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  size = boxes[:, 2:] - boxes[:, :2]
  half = window // 2
  n = len(boxes)
  out_c, out_s = np.empty_like(centre), np.empty_like(size)
  for i in range(n):
    r = min(half, i, n - 1 - i)
    out_c[i] = centre[i - r : i + r + 1].mean(0)
    out_s[i] = size[i - r : i + r + 1].mean(0)
  return np.concatenate([out_c - out_s / 2, out_c + out_s / 2], -1).astype(np.float32)


def _fill(frames: list[int], boxes: list[np.ndarray]) -> np.ndarray:
  """Boxes at every frame from frames[0] to frames[-1], linear between detections."""
  frames = np.asarray(frames)
  boxes = np.stack(boxes).astype(np.float64)
  every = np.arange(frames[0], frames[-1] + 1)
  return np.stack([np.interp(every, frames, boxes[:, k]) for k in range(4)], -1)


def link(
    detections: dict[int, Detections],
    shots: np.ndarray,
    *,
    iou_min: float = 0.3,
    max_distance: float = float("inf"),
    max_gap: int = 4,
) -> list[dict]:
  """Raw tracks: dicts of shot, frames [int], boxes [[4]], embeddings [[D]], labels [int]."""
  finished, open_tracks = [], {}
  key = 0
  for shot, (start, stop) in enumerate(shots):
    for track in open_tracks.values():
      finished.append(track)
    open_tracks = {}
    by_sidecar = {}
    for frame in range(int(start), int(stop)):
      for k in [k for k, t in open_tracks.items() if frame - t["frames"][-1] > max_gap]:
        finished.append(open_tracks.pop(k))
      det = detections.get(frame)
      if det is None or not len(det.boxes):
        continue
      assigned = np.full(len(det.boxes), -1)
      # Sidecar ids link first; the rest by overlap (and appearance).
      for i, hint in enumerate(det.tracks):
        if hint >= 0 and hint in by_sidecar and by_sidecar[hint] in open_tracks:
          assigned[i] = by_sidecar[hint]
      free = [k for k in open_tracks if k not in set(assigned.tolist())]
      todo = [i for i in range(len(det.boxes)) if assigned[i] < 0 and det.tracks[i] < 0]
      if free and todo:
        last = np.stack([open_tracks[k]["boxes"][-1] for k in free])
        overlap = iou(last, det.boxes[todo])
        if det.embeddings is not None and max_distance < float("inf"):
          for a, k in enumerate(free):
            if open_tracks[k]["embeddings"]:
              ref = open_tracks[k]["embeddings"][-1]
              dist = np.linalg.norm(det.embeddings[todo] - ref, axis=-1)
              overlap[a, dist > max_distance] = 0.0
        while overlap.size and overlap.max() >= iou_min:
          a, b = np.unravel_index(np.argmax(overlap), overlap.shape)
          assigned[todo[b]] = free[a]
          overlap[a, :] = -1
          overlap[:, b] = -1
      for i in range(len(det.boxes)):
        k = int(assigned[i])
        if k < 0:
          k, key = key, key + 1
          open_tracks[k] = dict(shot=shot, frames=[], boxes=[], embeddings=[], labels=[])
          if det.tracks[i] >= 0:
            by_sidecar[int(det.tracks[i])] = k
        t = open_tracks[k]
        t["frames"].append(frame)
        t["boxes"].append(det.boxes[i])
        t["labels"].append(int(det.labels[i]))
        if det.embeddings is not None:
          t["embeddings"].append(det.embeddings[i])
  finished.extend(open_tracks.values())
  finished.sort(key=lambda t: (t["frames"][0], t["boxes"][0][1]))
  return finished


def finish(
    raw: list[dict],
    height: int,
    width: int,
    *,
    smooth_window: int = 5,
    min_frames: int = 16,
    min_face_px: float = 24.0,
    embed_dim: int = 0,
):
  """(kept [Track], counts of dropped tracks {"short": n, "small": n})."""
  kept, dropped = [], {"short": 0, "small": 0}
  for t in raw:
    boxes = smooth(_fill(t["frames"], t["boxes"]), smooth_window)
    side = float(
        np.median(
            np.sqrt((boxes[:, 2] - boxes[:, 0]) * height * (boxes[:, 3] - boxes[:, 1]) * width)
        )
    )
    if len(boxes) < min_frames:
      dropped["short"] += 1
      continue
    if side < min_face_px:
      dropped["small"] += 1
      continue
    embs = np.asarray(t["embeddings"], np.float32).reshape(-1, embed_dim)
    labels = [x for x in t["labels"] if x >= 0]
    kept.append(
        Track(
            shot=int(t["shot"]),
            first=int(t["frames"][0]),
            boxes=boxes,
            embedding=embs.mean(0) if len(embs) else np.zeros(embed_dim, np.float32),
            num_embedded=len(embs),
            label=max(set(labels), key=labels.count) if labels else -1,
            side_px=side,
        )
    )
  return kept, dropped
