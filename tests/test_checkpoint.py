"""Checkpoints: bit-identical resume, refusal of incompatible configs,
divergence stop, and `load_inference` for the sampler; the loop's device reads
(only at sync steps), profiler hook and parameter table."""

import glob
import json
import math
import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idjax import configlib
from idjax.train import checkpoint, loop, trainer

from helpers import (FakeBatches, TinyVideoModel, mesh_for, run_trainer, saved_state, tiny_encoder,
                     tiny_train_config)


@pytest.fixture(scope="module")
def encoder():
  return tiny_encoder()


def _record_device_reads(monkeypatch):
  """Events in order: "S" a train step dispatched, "F" a sync (loop.fetch),
  "h" one device -> host read (loop.host_value, which fetch uses)."""
  events = []
  make_setup, fetch, host_value = trainer.make_setup, loop.fetch, loop.host_value

  def recording_setup(*args, **kw):
    setup = make_setup(*args, **kw)
    step = setup.step

    def dispatch(*a):
      events.append("S")
      return step(*a)

    setup.step = dispatch
    return setup

  def recording_fetch(tree):
    events.append("F")
    return fetch(tree)

  def recording_host_value(x):
    events.append("h")
    return host_value(x)

  monkeypatch.setattr(trainer, "make_setup", recording_setup)
  monkeypatch.setattr(loop, "fetch", recording_fetch)
  monkeypatch.setattr(loop, "host_value", recording_host_value)
  return events


def test_resume_is_bit_identical(tmp_path, encoder, monkeypatch, capsys):
  """Also: a run that reads metrics back every 4 steps (and profiles) ends
  bit-identical to one that reads them every step (log_every=1)."""
  config = tiny_train_config()
  sparse = config.copy_and_resolve_references()
  sparse.train.log_every = 4
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  events = _record_device_reads(monkeypatch)
  run_trainer(sparse, straight, encoder, profile_steps=(1, 3))
  # Two reads before the loop (step, skipped counters), then the device is read
  # only at the sync steps: 3 (checkpoint), 4 (log) and 6 (log, checkpoint, end).
  assert re.fullmatch(r"hhSSS(Fh+)S(Fh+)SS(Fh+)", "".join(events)), "".join(events)
  monkeypatch.undo()
  assert glob.glob(str(straight / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  table = capsys.readouterr().out
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(saved_state(str(straight))["params"]))
  assert re.search(rf"^total +{total:,} +100\.0%", table, re.M), table
  run_trainer(config, resumed, encoder, stop_at=3)
  assert saved_state(str(resumed))["step"] == 3
  # A hook (as train.py's periodic samples) runs at its steps and the last,
  # each time after that step's checkpoint is on disk.
  seen = []
  hook = loop.Hook(lambda step: seen.append((step, os.listdir(resumed / "checkpoints"))), every=4)
  out = run_trainer(config, resumed, encoder, hooks=[hook])
  assert out["step"] == 6
  assert [step for step, _ in seen] == [4, 6]
  assert all(str(step) in listing for step, listing in seen), seen
  a, b = saved_state(str(straight)), saved_state(str(resumed))
  assert int(a["step"]) == int(b["step"]) == 6
  chex.assert_trees_all_equal(a, b)  # params, EMA, optimizer state, counters: bit for bit
  sparse_lines = [json.loads(line) for line in open(straight / "metrics.jsonl")]
  lines = [json.loads(line) for line in open(resumed / "metrics.jsonl")]
  assert [line["step"] for line in sparse_lines] == [4, 6]
  assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
  for key in ("loss", "denoise_loss", "identity_loss", "id_reference", "id_temporal",
              "grad_norm", "lr", "steps_per_s", "model_tflops_per_s"):
    assert np.isfinite(lines[-1][key]), key
  for sparse_line in sparse_lines:  # the same numbers, read back later
    line = lines[sparse_line["step"] - 1]
    for key in set(line) - {"steps_per_s", "model_tflops_per_s"}:
      assert sparse_line[key] == line[key], key
  assert os.listdir(straight / "events")
  # keep_checkpoints=2 with checkpoint_every=3 over 6 steps.
  assert sorted(int(d) for d in os.listdir(straight / "checkpoints") if d.isdigit()) == [3, 6]

  config2, ema = checkpoint.load_inference(str(straight))
  assert config2.model.width == config.model.width
  chex.assert_trees_all_equal(jax.device_get(ema), a["ema_params"])

  bigger = tiny_train_config()
  bigger.model.width = 64
  with pytest.raises(configlib.UsageError, match="model.width"):
    run_trainer(bigger, straight, encoder)


def test_init_from_starts_step_0_at_another_workdirs_ema(tmp_path, encoder):
  """Fine-tuning: params and EMA start as the source's EMA params, the step
  and the Adam moments as a fresh run's; a resumed run ignores init_from."""
  config = tiny_train_config()
  source = tmp_path / "source"
  run_trainer(config, source, encoder, stop_at=3)
  source_ema = saved_state(str(source))["ema_params"]
  tuned = config.copy_and_resolve_references()
  tuned.train.init_from = str(source)
  setup = trainer.make_setup(tuned, TinyVideoModel(), encoder, mesh_for(tuned, dict(data=2, fsdp=4)))
  start = jax.device_get(trainer.init_from_workdir(setup, str(source), None)())
  fresh = jax.device_get(setup.init())
  assert int(start.step) == 0
  chex.assert_trees_all_equal(start.params, source_ema)
  chex.assert_trees_all_equal(start.ema_params, source_ema)
  chex.assert_trees_all_equal(start.opt_state, fresh.opt_state)  # zero moments, count 0
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(start.params, fresh.params)
  for missing, needle in ((tmp_path / "gone", "is not a folder"), (tmp_path, "holds no checkpoint")):
    with pytest.raises(configlib.UsageError, match=needle):
      trainer.init_from_workdir(setup, str(missing), None)()


@pytest.mark.slow
def test_init_from_through_the_trainer_and_resume(tmp_path, encoder):
  """3 steps from a source, then a resume that finds its own checkpoint:
  init_from is then not read (the source may be gone)."""
  config = tiny_train_config()
  run_trainer(config, tmp_path / "source", encoder, stop_at=3)
  tuned = config.copy_and_resolve_references()
  tuned.train.init_from = str(tmp_path / "source")
  run_trainer(tuned, tmp_path / "tuned", encoder, stop_at=3)
  first = saved_state(str(tmp_path / "tuned"))
  assert int(first["step"]) == 3
  tuned.train.init_from = str(tmp_path / "gone")
  assert run_trainer(tuned, tmp_path / "tuned", encoder)["step"] == 6


def test_param_table_counts_per_top_level_module():
  params = {"small": {"w": np.zeros(4, np.float32), "inner": {"b": np.zeros(2, jnp.bfloat16)}},
            "big": {"kernel": jax.ShapeDtypeStruct((2, 4), np.float32)}}
  rows = [line.split() for line in loop.param_table(params).splitlines()]
  assert rows[0] == ["module", "parameters", "share", "MiB"]
  assert [r[:3] for r in rows[1:]] == [["big", "8", "57.1%"], ["small", "6", "42.9%"],
                                       ["total", "14", "100.0%"]]
  assert float(rows[3][3]) == round((8 * 4 + 4 * 4 + 2 * 2) / 2**20, 2)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, encoder):
  """Steps 4 and 5 are non-finite, step 6 is finite again; the loop syncs at
  steps 3 (checkpoint), 4 (log) and 6: it still finds the run of 2 at step 6,
  before writing step 6's checkpoint."""
  config = tiny_train_config()
  config.train.max_nonfinite_steps = 2
  config.train.log_every = 4
  mesh = mesh_for(config, dict(data=2, fsdp=4))
  batches = FakeBatches(mesh, nan_steps={3, 4})
  with pytest.raises(loop.TrainingDiverged, match=r"2 consecutive .*found at step 6"):
    run_trainer(config, tmp_path, encoder, batches=batches)
  good = saved_state(str(tmp_path))
  assert int(good["step"]) == 3 and int(good["skipped"]) == 0
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(good["params"]))


def test_load_inference_without_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="config.json"):
    checkpoint.load_inference(str(tmp_path))
