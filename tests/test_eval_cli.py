"""python -m idjax.eval as a user runs it (a subprocess), on a random-weight
tiny video workdir: the table it prints, the JSON it writes and how its
numbers relate; bad input exits 2 with one sentence and leaves files as they
were."""

import json
import os

import numpy as np
import pytest

from idjax.data import world

from helpers import error_lines, make_workdir, run_module, write_random_probe

MODULE = "idjax.eval"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """RUNS/video (tiny model, random weights) and, beside the eval encoder in
  RUNS/face_eval, a random-weight attribute probe of the default config in
  RUNS/probe, where the CLI looks first (so nothing is trained here)."""
  runs = tmp_path_factory.mktemp("eval") / "runs"
  video = make_workdir(str(runs))
  write_random_probe(str(runs / "probe"))
  return video


def test_writes_the_table_and_its_json(workdir, tmp_path):
  out = tmp_path / "out" / "table.json"
  args = "--num-identities 2 --seed 1 --no-progress".split()
  proc = run_module(MODULE, "--workdir", workdir, "--out", str(out), *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "attribute probe: loaded from" in proc.stdout  # the cached probe, not a new one
  assert proc.stdout.rstrip().endswith(f"wrote {out}")
  result = json.loads(out.read_text())
  assert result["workdir"] == os.path.abspath(workdir)
  assert result["seed"] == 1 and len(result["identities"]) == 2
  assert all(world.is_heldout(int(i)) for i in result["identities"])
  rows = result["rows"]
  assert list(rows) == ["ceiling", "generated (refs+text)", "generated (text only)", "floor"]
  for name, row in rows.items():
    # Each row is the mean over the identities, and the table prints it.
    assert row["face_sim"] == pytest.approx(np.mean(result["per_identity"][name]), abs=1e-12)
    assert f"{row['face_sim']:.4f}" in proc.stdout, name
    assert row["identified"] in (0.0, 0.5, 1.0), name  # of 2 identities
  ceiling, floor = rows["ceiling"]["face_sim"], rows["floor"]["face_sim"]
  for name in ("generated (refs+text)", "generated (text only)"):
    expected = (rows[name]["face_sim"] - floor) / (ceiling - floor)
    assert result["position"][name] == pytest.approx(expected, rel=1e-9), name


@pytest.mark.parametrize(
    "case", ["no identities", "existing out", "no checkpoint", "renoise range", "renoise heun"]
)
def test_bad_input_exits_2_with_one_sentence_and_keeps_files(workdir, tmp_path, case):
  out = tmp_path / "table.json"
  args = ["--workdir", workdir, "--num-identities", "1", "--out", str(out), "--no-progress"]
  if case == "no identities":
    args[3], needle = "0", "--num-identities must be >= 1, got 0."
  elif case == "existing out":
    out.write_text("mine")
    needle = "--overwrite"
  elif case == "renoise range":
    args, needle = args + ["--renoise", "1.5"], "--renoise must lie in 0..1, got 1.5."
  elif case == "renoise heun":
    args, needle = args + ["--renoise", "1", "--sampler", "heun"], "takes the euler sampler"
  else:
    args[1], needle = str(tmp_path), "config.json"
  proc = run_module(MODULE, *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(error_lines(proc)) == 1 and needle in proc.stderr, proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
  if case == "existing out":
    assert out.read_text() == "mine"
  else:
    assert not out.exists()


@pytest.mark.slow  # ~50 s; the seam and drift numbers are checked on hand-made clips in test_drift.py
def test_long_clip_rows_made_in_chunks_and_their_seams(workdir, tmp_path):
  out = tmp_path / "long.json"
  args = "--num-identities 1 --frames 12 --chunk-frames 6 --context-frames 2 --no-progress"
  proc = run_module(MODULE, "--workdir", workdir, "--out", str(out), *args.split())
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  chunked, naive = "chunked (6 frames, 2 context)", "naive (6 frames, no context)"
  assert list(result["rows"])[-3:] == [chunked, naive, "floor"]
  # Chunks of 6 frames whose first 2 repeat the last made: new frames at 6 and
  # 10; independent chunks: at 6. Rows not made in chunks: the chunked row's.
  assert set(result["seams"]) == set(result["rows"])
  for name, seam in result["seams"].items():
    assert seam["seam_frames"] == ([6] if name == naive else [6, 10]), name
    assert seam["num_seams"] == len(seam["seam_frames"])
    assert seam["seam_gap"] == pytest.approx(seam["within"] - seam["seam"], abs=1e-12), name
    assert f"seams {seam['seam']:.4f} vs within {seam['within']:.4f}" in proc.stdout, name
    assert seam["pixel_jump_seam"] >= 0 and seam["pixel_jump_within"] >= 0, name
  assert all(len(v) == 12 for v in result["face_sim_per_frame"].values())
  assert os.path.getsize(tmp_path / "long_drift.png") > 0


def test_chunked_rows_go_through_extend_one_clip_each():
  from idjax.eval.__main__ import ChunkedOrOneShot

  calls = []

  class OneShot:
    config = object()

    def generate(self, prompts, references, **kwargs):
      calls.append(("generate", len(prompts), kwargs["seed"]))
      return dict(frames=np.zeros((len(prompts), 4, 2, 2, 3), np.uint8))

  def extend(generator, prompt, references, num_frames, **kwargs):
    calls.append(("extend", prompt, kwargs["seed"], kwargs["layout"], kwargs["context_frames"]))
    frame = np.full((num_frames, 2, 2, 3), len(calls), np.uint8)
    return dict(frames=frame, chunk_starts=[3])

  g = ChunkedOrOneShot(OneShot(), extend)
  out = g.generate(["a", "b"], [[], []], num_frames=5, seed=7, layout=[["L0"], ["L1"]])
  assert out["frames"].shape == (2, 4, 2, 2, 3) and calls == [("generate", 2, 7)]
  out = g.generate(
      ["a", "b"],
      [[], []],
      num_frames=5,
      seed=7,
      layout=[["L0"], ["L1"]],
      chunk_frames=3,
      context_frames=1,
  )
  # One extend per clip, each with its own seed and layout, stacked in order.
  assert calls[1:] == [("extend", "a", 7, ["L0"], 1), ("extend", "b", 8, ["L1"], 1)]
  assert out["chunk_starts"] == [3]
  np.testing.assert_array_equal(out["frames"][:, 0, 0, 0, 0], [2, 3])


@pytest.mark.parametrize(
    "args, needle",
    [
        ("--chunk-frames 4", "--chunk-frames needs --frames"),
        ("--frames 8 --chunk-frames 8", "--chunk-frames must lie in 1..7"),
        ("--frames 8 --chunk-frames 4 --context-frames 4", "--context-frames must lie in 1..3"),
        ("--frames 8 --context-frames 2", "--context-frames needs --chunk-frames"),
    ],
)
def test_chunk_options_are_checked(tmp_path, args, needle):
  out = tmp_path / "t.json"
  proc = run_module(MODULE, "--workdir", str(tmp_path), "--out", str(out), *args.split())
  assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
  assert len(error_lines(proc)) == 1 and not out.exists()


def test_chunked_rows_of_a_temporally_packed_model_are_refused_in_one_sentence():
  from idjax import configlib
  from idjax.eval.__main__ import check_chunking, parse_args

  args = parse_args(["--workdir", "w", "--frames", "9", "--chunk-frames", "5"])
  check_chunking(args, 1)  # one latent frame per frame: chunked rows are fine
  check_chunking(parse_args(["--workdir", "w", "--frames", "9"]), 4)  # whole clips are fine
  with pytest.raises(configlib.UsageError, match="packs 4 frames into each") as e:
    check_chunking(args, 4)
  assert "\n" not in str(e.value)
