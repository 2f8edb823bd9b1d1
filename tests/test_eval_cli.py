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


@pytest.mark.parametrize("case", ["no identities", "existing out", "no checkpoint"])
def test_bad_input_exits_2_with_one_sentence_and_keeps_files(workdir, tmp_path, case):
  out = tmp_path / "table.json"
  args = ["--workdir", workdir, "--num-identities", "1", "--out", str(out), "--no-progress"]
  if case == "no identities":
    args[3], needle = "0", "--num-identities must be >= 1, got 0."
  elif case == "existing out":
    out.write_text("mine")
    needle = "--overwrite"
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
