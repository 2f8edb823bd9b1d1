"""bench/sample.py, the sampling benchmark, runs on a random-weight model and
reports what it ran (it broke once without a test: a new sampler argument)."""

import importlib.util
import json
import os

import pytest

# Loaded under its own name: `sample` is the sampling CLI at the repository root.
_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench", "sample.py")
_SPEC = importlib.util.spec_from_file_location("bench_sample", _PATH)
bench_sample = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_sample)


@pytest.mark.slow  # ~25 s alone: two compilations of the step
def test_bench_sample_reports_the_step_it_timed(tmp_path):
  out = tmp_path / "sample.json"
  bench_sample.main(
      [
          "--config",
          "configs/tiny.py",
          "--batch",
          "1",
          "--steps",
          "2",
          "--frames",
          "4",
          "--renoise",
          "1",
          "--out",
          str(out),
      ]
  )
  r = json.loads(out.read_text())
  assert (r["batch"], r["frames"], r["steps"], r["passes"], r["renoise"]) == (1, 4, 2, 1, 1.0)
  # The step returns the state: 1 clip x 4 frames x 32 x 32 x 3, float32.
  assert r["step_output_bytes"] == 4 * 32 * 32 * 3 * 4
  # Its arguments hold the state and the renoise step's fresh noise besides the weights.
  assert r["step_argument_bytes"] > 2 * r["step_output_bytes"]
  assert r["step_temp_bytes"] > 0 and r["seconds_per_step"] > 0
