"""video_io.mp4_writer: an MP4 written chunk by chunk as a clip is decoded,
atomically (no file when the block raises), the same file as write_mp4."""

import os

import imageio.v2 as imageio
import numpy as np
import pytest

from idjax import video_io


def _clip(frames=7, side=16):
  return np.random.default_rng(3).integers(0, 256, (frames, side, side, 3), dtype=np.uint8)


def _imageio_mp4(path, frames, fps=8.0, factor=16):
  """The MP4 as write_mp4 wrote it before streaming: one imageio writer, every frame."""
  with imageio.get_writer(
      path,
      format="FFMPEG",
      mode="I",
      fps=fps,
      codec="libx264",
      macro_block_size=1,
      quality=8,
      ffmpeg_log_level="error",
  ) as writer:
    for frame in video_io.upscale(frames, factor):
      writer.append_data(frame)


@pytest.mark.filterwarnings("ignore:os.fork")
def test_streamed_mp4_is_the_one_shot_file(tmp_path):
  clip = _clip()
  _imageio_mp4(str(tmp_path / "before.mp4"), clip)
  with video_io.mp4_writer(str(tmp_path / "streamed.mp4")) as append:
    for lo in range(0, 7, 3):
      append(clip[lo : lo + 3])
  video_io.write_mp4(str(tmp_path / "whole.mp4"), clip)
  before = imageio.mimread(str(tmp_path / "before.mp4"), format="FFMPEG")
  assert len(before) == 7
  for name in ("streamed.mp4", "whole.mp4"):
    np.testing.assert_array_equal(
        np.stack(imageio.mimread(str(tmp_path / name), format="FFMPEG")), np.stack(before)
    )
    assert (tmp_path / name).read_bytes() == (tmp_path / "before.mp4").read_bytes()
  assert sorted(os.listdir(tmp_path)) == ["before.mp4", "streamed.mp4", "whole.mp4"]


def test_an_exception_mid_stream_leaves_no_file(tmp_path):
  path = str(tmp_path / "clip.mp4")
  with pytest.raises(RuntimeError, match="decoder failed"):
    with video_io.mp4_writer(path) as append:
      append(_clip(3))
      raise RuntimeError("decoder failed")
  assert os.listdir(tmp_path) == []
  # An existing file stays as it was.
  video_io.write_mp4(path, _clip(2))
  before = open(path, "rb").read()
  with pytest.raises(RuntimeError):
    with video_io.mp4_writer(path) as append:
      append(_clip(3))
      raise RuntimeError("decoder failed")
  assert os.listdir(tmp_path) == ["clip.mp4"] and open(path, "rb").read() == before
