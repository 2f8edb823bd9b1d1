"""Real-face fixtures made offline: scikit-image's astronaut photograph, animated.

  python -m idjax.data.prepare.astronaut --out DIR [--videos 2] [--measure]

Each video is two shots of the photograph (a hard cut between them), each
shot a slow pan, zoom and small rotation of a 256x256 view; the face box in
every frame is the still's face box carried through the same transform
(the bounding box of its four moved corners), so detection and tracking can
be scored against known boxes. The still's face box is what dlib's HOG finds
on the photograph. DIR receives the MP4s and truth.json (cuts, boxes).
--measure times dlib's HOG and CNN detectors on the frames and prints the
mean IoU of each against the known boxes (the measurement that chose HOG:
docs/real_footage.md).
"""

import json
import os
import sys
import time

import numpy as np
from PIL import Image

from idjax import configlib, paths, video_io
from idjax.data.prepare import dlib_faces, tracks

SIDE = 256
# (y0, x0, y1, x1) fractions of the 512x512 still: dlib HOG's box on it.
STILL_BOX = (0.1484375, 0.34179688, 0.32617188, 0.51953125)


def photograph() -> np.ndarray:
  try:
    from skimage import data  # imported here: optional (the `real` extra), only for fixtures
  except ImportError:
    raise configlib.UsageError(
        "The astronaut fixture needs the package scikit-image "
        "(pip install 'idjax[real]'), which is not installed."
    ) from None
  return data.astronaut()


def _view(t, shot, frames):
  """(centre (y, x) in still pixels, still pixels per output pixel, angle in radians)."""
  a = t / max(frames - 1, 1)
  if shot % 2 == 0:  # a wide view panning right and zooming in
    return (200.0 + 10 * a, 220.0 + 30 * a), 1.6 - 0.3 * a, np.deg2rad(-4 + 8 * a)
  return (150.0 - 10 * a, 240.0 - 20 * a), 0.9 + 0.15 * a, np.deg2rad(5 - 6 * a)


def render(still, t, shot, frames):
  """One frame uint8 [256, 256, 3] and its face box (fractions of the frame)."""
  (cy, cx), k, angle = _view(t, shot, frames)
  cos, sin = np.cos(angle), np.sin(angle)
  h = SIDE / 2
  # PIL maps output (u, v) -> input (x, y) = (a u + b v + c, d u + e v + f).
  coeffs = (
      k * cos,
      -k * sin,
      cx - k * (cos * h - sin * h),
      k * sin,
      k * cos,
      cy - k * (sin * h + cos * h),
  )
  frame = Image.fromarray(still).transform((SIDE, SIDE), Image.AFFINE, coeffs, Image.BILINEAR)
  y0, x0, y1, x1 = np.array(STILL_BOX) * still.shape[0]
  corners = np.array([(x0, y0), (x1, y0), (x0, y1), (x1, y1)]) - (cx, cy)
  u = (cos * corners[:, 0] + sin * corners[:, 1]) / k + h
  v = (-sin * corners[:, 0] + cos * corners[:, 1]) / k + h
  box = np.array([v.min(), u.min(), v.max(), u.max()]) / SIDE
  return np.asarray(frame), box.astype(np.float32)


def video(shots: int = 2, frames_per_shot: int = 16, offset: int = 0):
  """(frames uint8 [shots * F, 256, 256, 3], boxes float32 [shots * F, 4], cuts)."""
  still = photograph()
  out, boxes = [], []
  for s in range(shots):
    for t in range(frames_per_shot):
      f, b = render(still, t, s + offset, frames_per_shot)
      out.append(f)
      boxes.append(b)
  return np.stack(out), np.stack(boxes), [s * frames_per_shot for s in range(1, shots)]


def write_folder(out: str, videos: int = 2, shots: int = 2, frames_per_shot: int = 16) -> dict:
  os.makedirs(out, exist_ok=True)
  truth = {}
  for v in range(videos):
    frames, boxes, cuts = video(shots, frames_per_shot, offset=v)
    name = f"astronaut_{v}.mp4"
    video_io.write_mp4(os.path.join(out, name), frames, fps=12.0, min_side=SIDE)
    truth[name] = dict(cuts=cuts, boxes=boxes.tolist())
  paths.write_text(os.path.join(out, "truth.json"), json.dumps(truth))
  return truth


def measure(frames, boxes, detectors) -> dict:
  """name -> dict(mean_iou, found_share, seconds_per_frame) of each detector."""
  out = {}
  for name, detector in detectors.items():
    ious, found, start = [], 0, time.perf_counter()
    for frame, box in zip(frames, boxes):
      got = detector(frame)[0]
      if len(got):
        found += 1
        ious.append(float(tracks.iou(box[None], got).max()))
      else:
        ious.append(0.0)
    out[name] = dict(
        mean_iou=float(np.mean(ious)),
        found_share=found / len(frames),
        seconds_per_frame=(time.perf_counter() - start) / len(frames),
    )
  return out


@configlib.exit_on_usage_error
def main(argv=None) -> int:
  p = configlib.ArgumentParser(
      prog="python -m idjax.data.prepare.astronaut", description=__doc__.splitlines()[0]
  )
  p.add_argument("--out", required=True)
  p.add_argument("--videos", type=int, default=2)
  p.add_argument("--frames-per-shot", type=int, default=16)
  p.add_argument("--measure", action="store_true", help="compare dlib's HOG and CNN detectors")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  out = paths.check_folder(args.out, "--out")
  truth = write_folder(out, args.videos, frames_per_shot=args.frames_per_shot)
  print(f"wrote {len(truth)} videos and truth.json to {out}")
  if args.measure:
    frames, boxes, _ = video(2, args.frames_per_shot)
    detectors = {
        "hog (upsample 0)": dlib_faces.HogDetector(0),
        "hog (upsample 1)": dlib_faces.HogDetector(1),
        "cnn (upsample 0)": dlib_faces.CnnDetector(0),
        "cnn (upsample 1)": dlib_faces.CnnDetector(1),
    }
    for name, row in measure(frames, boxes, detectors).items():
      print(
          f"{name:18s} mean IoU {row['mean_iou']:.3f}  found {row['found_share']:.0%}  "
          f"{row['seconds_per_frame'] * 1000:.0f} ms/frame"
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
