"""Decoding videos into RGB frames, with the reasons a file is refused.

MP4, MOV, WebM, MKV and AVI go through imageio-ffmpeg (an ffmpeg binary
shipped inside the package); GIFs through Pillow. Frames come out as uint8
[H, W, 3], downscaled (antialiased) so that the longer side is at most
`max_side`; boxes elsewhere are fractions of the frame, so the scale of
the decoded frames never leaks into them.
"""

import os
import warnings

import numpy as np
from PIL import Image, ImageSequence

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".gif")

# Reasons a video is skipped (keys of the report's `skipped` counts).
TOO_LARGE = "too_large"
UNREADABLE = "unreadable"  # no decoder opens it: corrupt header, unknown codec, not a video
NO_FRAMES = "no_frames"


class BadVideo(Exception):
  """A video that cannot be used; `reason` is one of the constants above."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def list_videos(folder: str) -> list[str]:
  """Video files under `folder` (recursive), as sorted paths relative to it."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in files:
      if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  return sorted(found)


def _shrink(frame: np.ndarray, max_side: int) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = np.repeat(frame[..., None], 3, axis=-1)
  frame = frame[..., :3].astype(np.uint8, copy=False)
  h, w = frame.shape[:2]
  scale = max_side / max(h, w)
  if scale >= 1:
    return np.ascontiguousarray(frame)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def _raw_frames(path: str):
  if path.lower().endswith(".gif"):
    with Image.open(path) as image:
      for frame in ImageSequence.Iterator(image):
        yield np.asarray(frame.convert("RGB"))
    return
  import imageio.v2 as imageio  # imported here: ffmpeg start-up is only for videos

  # The ffmpeg subprocess starts by fork+exec, which JAX warns about; exec
  # follows at once, so the warning does not apply here.
  warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
  reader = imageio.get_reader(path, format="FFMPEG")
  try:
    yield from reader
  finally:
    reader.close()


def frames(path: str, *, max_side: int = 640, max_frames: int = 20000, max_mb: float = 4096):
  """Yields (index, frame uint8 [h, w, 3]) for frames 0, 1, ... of a video.

  Stops after `max_frames`. Raises BadVideo before the first frame for a file
  over `max_mb` megabytes or one no decoder opens, and after the last for a
  file with no frame at all; a file that breaks part-way ends where it broke.
  """
  if os.path.getsize(path) > max_mb * 2**20:
    raise BadVideo(TOO_LARGE, f"{path} is larger than {max_mb:g} MB (--max-file-mb).")
  count = 0
  iterator = _raw_frames(path)
  while count < max_frames:
    try:
      raw = next(iterator)
    except StopIteration:
      break
    except Exception as e:  # Any decoder failure: a damaged or foreign file.
      if count == 0:
        raise BadVideo(
            UNREADABLE,
            f"{path} cannot be decoded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}).",
        ) from None
      break  # a truncated file: keep what decoded
    yield count, _shrink(raw, max_side)
    count += 1
  iterator.close()
  if count == 0:
    raise BadVideo(NO_FRAMES, f"{path} has no frames.")
