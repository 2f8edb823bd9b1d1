"""Writing clips: MP4 (imageio-ffmpeg), GIF and a PNG contact sheet.

Every writer goes through a temporary file in the target directory, flushed
to disk, and an `os.replace`, so an interrupted run never leaves a truncated
file under the final name. Small clips are upscaled by an integer factor
(nearest neighbour, so pixels stay exact) for viewing; the factor is the
smallest that makes the frame side at least `min_side`. The MP4 can be
written chunk by chunk as a clip is decoded (`mp4_writer`).
"""

import contextlib
import warnings

import einops
import imageio.v2 as imageio
import numpy as np
from PIL import Image

from idjax import paths


def upscale_factor(side: int, min_side: int) -> int:
  return max(1, -(-min_side // max(side, 1)))


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
  """uint8 [..., H, W, 3] -> [..., H * f, W * f, 3], nearest neighbour."""
  if factor == 1:
    return frames
  return np.repeat(np.repeat(frames, factor, axis=-3), factor, axis=-2)


@contextlib.contextmanager
def mp4_writer(path: str, fps: float = 8.0, min_side: int = 256):
  """Writes an MP4 as its frames come: yields append(frames uint8 [t, H, W, 3]).

  The file appears at `path` when the block ends without an exception (the
  encoder writes a temporary file, renamed then, as `paths.atomic_file`);
  if it raises, no file is left. Only one chunk of frames is held at a time,
  so a clip streams from its decoder to the file.
  """
  with paths.atomic_file(path) as tmp:
    # The ffmpeg subprocess starts by fork+exec, which JAX warns about; exec
    # follows at once, so the warning does not apply here.
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    # macro_block_size=1: the upscaled side is chosen by us, not rounded by ffmpeg.
    with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                            macro_block_size=1, quality=8,
                            ffmpeg_log_level="error") as writer:

      def append(frames):
        frames = np.asarray(frames, np.uint8)
        for frame in upscale(frames, upscale_factor(frames.shape[1], min_side)):
          writer.append_data(frame)

      yield append


def write_mp4(path: str, frames: np.ndarray, fps: float = 8.0, min_side: int = 256):
  """frames: uint8 [T, H, W, 3]."""
  with mp4_writer(path, fps, min_side) as append:
    append(frames)


def write_gif(path: str, frames: np.ndarray, fps: float = 8.0, min_side: int = 128):
  """frames: uint8 [T, H, W, 3]; loops forever."""
  frames = upscale(np.asarray(frames, np.uint8), upscale_factor(frames.shape[1], min_side))
  images = [Image.fromarray(f) for f in frames]

  def write(tmp):
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0, optimize=False, disposal=1)

  paths.atomic_write(path, write)


def contact_sheet(frames: np.ndarray, references=(), gap: int = 2) -> np.ndarray:
  """References on the left, then every frame, in one row.

  Args:
    frames: uint8 [T, H, W, 3].
    references: uint8 images [R, R, 3] (any size; resized to H with PIL).
    gap: white pixels between the reference block and the frames.

  Returns:
    uint8 [H, W_total, 3].
  """
  frames = np.asarray(frames, np.uint8)
  height = frames.shape[1]
  refs = [np.asarray(Image.fromarray(np.asarray(r, np.uint8)).resize(
      (height, height), Image.BILINEAR)) for r in references]
  row = einops.rearrange(frames, "t h w c -> h (t w) c")
  if not refs:
    return row
  white = np.full((height, gap, 3), 255, np.uint8)
  return np.concatenate(refs + [white, row], axis=1)


def write_png(path: str, image: np.ndarray, min_side: int = 128):
  image = np.asarray(image, np.uint8)
  image = upscale(image, upscale_factor(image.shape[0], min_side))
  paths.atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def write_json(path: str, text: str):
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  paths.atomic_write(path, write)
