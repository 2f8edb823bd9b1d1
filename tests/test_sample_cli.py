"""sample.py: usage errors (exit 2, one line, files untouched) and a normal run."""

import hashlib
import json
import os
import subprocess
import sys

import einops
import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

import sample  # the entry point (the repository root is on pytest's pythonpath)
from idjax import video_io
from idjax.eval import metrics
from idjax.face.frozen import FrozenFaceEncoder
from idjax.sampling.generator import Generator, prepare_matte, prepare_reference

from helpers import ROOT, make_workdir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  video = make_workdir(str(root / "runs"))
  rng = np.random.default_rng(0)
  images = {}
  images["a.png"] = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
  images["rgba.png"] = Image.fromarray(rng.integers(0, 256, (24, 18, 4), dtype=np.uint8), "RGBA")
  images["gray.png"] = Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L")
  images["pal.gif"] = images["a.png"].convert("P")
  for name, image in images.items():
    image.save(root / name)
  (root / "empty.png").write_bytes(b"")
  (root / "junk.png").write_bytes(b"not an image at all")
  empty_workdir = root / "empty_workdir"
  empty_workdir.mkdir()
  return root, video, str(empty_workdir)


def _digest(paths):
  return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths if os.path.exists(p)}


def _run(argv, capsys):
  with pytest.raises(SystemExit) as e:
    sample.main(argv)
  err = capsys.readouterr().err
  return e.value.code, err


def test_normal_run_writes_all_outputs(setup, capsys):
  root, video, _ = setup
  out = str(root / "out" / "clip.mp4")
  sample.main(["--workdir", video, "--reference", str(root / "a.png"), str(root / "rgba.png"),
               "--prompt", "a person with pale skin", "--out", out, "--frames", "4",
               "--steps", "2", "--seed", "3", "--no-progress"])
  stem = out[:-4]
  mp4 = imageio.mimread(stem + ".mp4", format="FFMPEG")
  assert len(mp4) == 4
  gif = imageio.mimread(stem + ".gif")
  assert len(gif) == 4
  sheet = np.asarray(Image.open(stem + ".png"))
  assert sheet.shape[1] > sheet.shape[0] * 4          # references + 4 frames in a row
  report = json.load(open(stem + ".json"))
  assert report["seed"] == 3 and report["num_frames"] == 4
  assert report["arguments"]["prompt"] == "a person with pale skin"
  assert report["metrics"]["box_source"] == "search"
  # FaceSim again, from the written files alone: the frames from the lossless
  # contact sheet (2 references, a 2-pixel gap, 4 frames of 16 px, upscaled
  # x8), the references as sample.py prepares them, the eval encoder's workdir.
  frames = einops.rearrange(sheet[::8, ::8][:, -4 * 16:], "h (t w) c -> t h w c", t=4)
  # The MP4, streamed as the clip was decoded, is the file of those frames.
  video_io.write_mp4(str(root / "from_sheet.mp4"), frames)
  assert open(stem + ".mp4", "rb").read() == (root / "from_sheet.mp4").read_bytes()
  refs = [prepare_reference(sample.load_image(str(root / name)), 16)
          for name in ("a.png", "rgba.png")]
  scorer = metrics.FaceScorer(FrozenFaceEncoder.from_workdir(report["metrics"]["encoder"]))
  again = metrics.clip_metrics(scorer, frames, [refs])
  assert report["metrics"]["encoder"].endswith("face_eval")
  assert report["metrics"]["face_sim"] == pytest.approx(again["face_sim"], abs=1e-6)
  (character,) = report["metrics"]["characters"].values()
  np.testing.assert_allclose(character["face_sim_per_frame"],
                             again["characters"][0]["face_sim_per_frame"], atol=1e-6)
  assert report["timings_s"]["steps"] == 2
  # A second run with multiple characters and boxes (palette + grayscale refs).
  out2 = str(root / "out" / "two.mp4")
  sample.main(["--workdir", video, "--character", f"x={root / 'pal.gif'},{root / 'gray.png'}",
               "--box", "x=0.1,0.1,0.6,0.6:0.3,0.3,0.9,0.9", "--prompt", "a person",
               "--out", out2, "--frames", "2", "--steps", "1", "--no-progress"])
  report = json.load(open(out2[:-4] + ".json"))
  assert report["metrics"]["box_source"] == "layout"


def test_a_transparent_reference_keeps_its_alpha_as_the_matte(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:4, :, 3] = 255  # the head: the top half; the rest transparent
  Image.fromarray(rgba, "RGBA").save(tmp_path / "head.png")
  image = sample.load_image(str(tmp_path / "head.png"))
  assert image.shape == (8, 8, 4)
  np.testing.assert_array_equal(image[:4, :, :3], np.broadcast_to([200, 0, 0], (4, 8, 3)))
  np.testing.assert_array_equal(image, rgba)  # the colours as stored, the alpha
  np.testing.assert_array_equal(prepare_matte(image, 8)[:, 0], [1] * 4 + [0] * 4)
  np.testing.assert_array_equal(prepare_reference(image, 8), image[..., :3])


def test_a_failure_while_sampling_leaves_no_mp4(setup, monkeypatch):
  root, video, _ = setup

  def fails_mid_stream(self, *args, on_frames, **kwargs):
    on_frames(0, np.zeros((1, 2, 16, 16, 3), np.uint8))
    raise RuntimeError("out of memory")

  monkeypatch.setattr(Generator, "generate", fails_mid_stream)
  out = root / "failed" / "clip.mp4"
  with pytest.raises(RuntimeError, match="out of memory"):
    sample.main(["--workdir", video, "--reference", str(root / "a.png"), "--prompt", "a person",
                 "--out", str(out), "--frames", "4", "--steps", "1", "--no-progress"])
  assert os.listdir(out.parent) == []


BAD = {
    "missing reference": ["--reference", "{root}/nope.png"],
    "empty reference": ["--reference", "{root}/empty.png"],
    "unreadable reference": ["--reference", "{root}/junk.png"],
    "strength out of range": ["--reference", "{root}/a.png", "--identity-strength", "1.5"],
    "zero steps": ["--reference", "{root}/a.png", "--steps", "0"],
    "zero frames": ["--reference", "{root}/a.png", "--frames", "0"],
    "bad sampler": ["--reference", "{root}/a.png", "--sampler", "rk4"],
    "renoise out of range": ["--reference", "{root}/a.png", "--renoise", "1.5"],
    "renoise with heun": ["--reference", "{root}/a.png", "--renoise", "0.5", "--sampler", "heun"],
    "box for unknown character": ["--character", "x={root}/a.png", "--box", "y=0,0,.5,.5"],
    "missing box": ["--character", "x={root}/a.png", "--character", "y={root}/a.png",
                    "--box", "x=0,0,.5,.5"],
    "three boxes": ["--character", "x={root}/a.png", "--box", "x=0,0,.5,.5:0,0,.5,.5:0,0,.5,.5"],
    "box out of range": ["--character", "x={root}/a.png", "--box", "x=0,0,1.5,.5"],
    "too many references": ["--reference", "{root}/a.png", "{root}/a.png", "{root}/a.png"],
    "not a number": ["--reference", "{root}/a.png", "--seed", "abc"],
    "seed beyond 32 bits": ["--reference", "{root}/a.png", "--seed", str(2**70)],
    "face-encoder workdir": ["--reference", "{root}/a.png", "--workdir", "{root}/runs/face"],
    "out under a file": ["--reference", "{root}/a.png", "--out", "{root}/a.png/clip.mp4"],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exit_2_one_line_files_untouched(setup, capsys, case):
  root, video, _ = setup
  out = str(root / "keep" / "clip.mp4")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  paths = list(sample.output_paths(out).values())
  with open(paths[0], "wb") as f:                     # an existing output to protect
    f.write(b"old")
  before = _digest(paths)
  argv = ["--workdir", video, "--prompt", "a person", "--out", out, "--overwrite",
          "--no-progress"] + [a.format(root=root) for a in BAD[case]]
  code, err = _run(argv, capsys)
  assert code == 2
  assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
  assert _digest(paths) == before


def test_existing_output_needs_overwrite(setup, capsys):
  root, video, _ = setup
  out = str(root / "exists" / "clip.mp4")
  os.makedirs(os.path.dirname(out))
  json_path = out[:-4] + ".json"                      # only ONE of the outputs exists
  open(json_path, "w").write("{}")
  before = _digest([json_path])
  code, err = _run(["--workdir", video, "--reference", str(root / "a.png"), "--prompt", "a",
                    "--out", out], capsys)
  assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
  assert _digest([json_path]) == before and not os.path.exists(out)


def test_workdir_without_checkpoint_subprocess(setup):
  root, _, empty = setup
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "sample.py"), "--workdir", empty, "--reference",
       str(root / "a.png"), "--prompt", "a person", "--out", str(root / "none" / "c.mp4")],
      capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and "config.json" in proc.stderr
  assert not os.path.exists(root / "none")
