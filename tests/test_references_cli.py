"""python -m idjax.data.references as a user runs it (a subprocess): the files
it writes and what they hold; bad input exits 2 with one sentence and leaves
files as they were."""

import os

import numpy as np
import pytest
from PIL import Image

from idjax.data import world

from helpers import error_lines, run_module

MODULE = "idjax.data.references"


def test_writes_a_heldout_identity(tmp_path):
  out = tmp_path / "refs"
  args = "--index 3 --count 2 --resolution 32 --frames 3 --no-progress".split()
  proc = run_module(MODULE, "--out", str(out), *args)
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(out)) == ["prompt.txt", "ref_0.png", "ref_1.png", "target.png"]
  # The clip the arguments name (seed 12345 by default), rendered here.
  cfg = world.WorldConfig(resolution=32, num_frames=3, num_references=2, reference_resolution=32)
  clip = world.render_clip(cfg, 12345, 3, split="heldout")
  identity = int(clip["identity_ids"][0])
  assert world.is_heldout(identity)
  for k in range(2):  # RGBA: the portrait, and its head matte as alpha
    rgba = np.asarray(Image.open(out / f"ref_{k}.png"))
    np.testing.assert_array_equal(rgba[..., :3], clip["references"][0][k])
    np.testing.assert_array_equal(rgba[..., 3], clip["reference_mattes"][0][k] * 255)
    assert 0 < clip["reference_mattes"][0][k].mean() < 1
  target = np.asarray(Image.open(out / "target.png"))
  assert target.shape == (32, 3 * 32, 3)
  np.testing.assert_array_equal(target, np.concatenate(list(clip["frames"]), axis=1))
  assert (out / "prompt.txt").read_text() == clip["prompt"] + "\n"
  assert proc.stdout == f"held-out identity {identity}: {clip['prompt']!r} -> {out}\n"


@pytest.mark.parametrize("case", ["count out of range", "existing file", "out is a file"])
def test_bad_input_exits_2_with_one_sentence_and_keeps_files(tmp_path, case):
  out = tmp_path / "refs"
  args = ["--out", str(out), "--count", "2", "--resolution", "32", "--frames", "1"]
  if case == "count out of range":
    args[3], needle = "0", "--count must be in 1..64, got 0."
  elif case == "existing file":
    out.mkdir()
    (out / "ref_1.png").write_bytes(b"mine")
    needle = "--overwrite"
  else:
    out.write_bytes(b"mine")
    needle = "is a file, not a folder"
  proc = run_module(MODULE, *args, "--no-progress")
  assert proc.returncode == 2, proc.stderr
  assert len(error_lines(proc)) == 1 and needle in proc.stderr, proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
  if case == "count out of range":
    assert not out.exists()
  elif case == "existing file":
    assert os.listdir(out) == ["ref_1.png"] and (out / "ref_1.png").read_bytes() == b"mine"
  else:
    assert out.read_bytes() == b"mine"
