"""Checkpoints: bit-identical resume, refusal of incompatible configs,
divergence stop, and `load_inference` for the sampler."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from idjax import configlib
from idjax.train import checkpoint, trainer

import test_train_step as tts  # the tiny stand-in model, encoder and batches


@pytest.fixture(scope="module")
def encoder():
  return tts.tiny_encoder()


def run(config, workdir, encoder, **kw):
  mesh = tts.mesh_for(config, dict(data=2, fsdp=4))
  return trainer.train(config, str(workdir), model=tts.TinyVideoModel(), encoder=encoder,
                       batches=kw.pop("batches", tts.FakeBatches(mesh)), progress=False,
                       sample_hook=None, **kw)


def saved_state(workdir, step=None):
  manager = checkpoint.open_manager(workdir)
  step = manager.latest_step() if step is None else step
  tree = jax.device_get(checkpoint.restore_tree(manager, step))
  manager.close()
  return tree


def test_resume_is_bit_identical(tmp_path, encoder):
  config = tts.tiny_config()
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  run(config, straight, encoder)
  run(config, resumed, encoder, stop_at=3)
  assert saved_state(str(resumed))["step"] == 3
  out = run(config, resumed, encoder)
  assert out["step"] == 6
  a, b = saved_state(str(straight)), saved_state(str(resumed))
  assert int(a["step"]) == int(b["step"]) == 6
  chex.assert_trees_all_equal(a, b)  # params, EMA, optimizer state, counters: bit for bit
  lines = [json.loads(l) for l in open(straight / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3, 4, 5, 6]
  for key in ("loss", "denoise_loss", "identity_loss", "id_reference", "id_temporal",
              "grad_norm", "lr", "steps_per_s", "model_tflops_per_s"):
    assert np.isfinite(lines[-1][key]), key
  assert os.listdir(straight / "events")
  # keep_checkpoints=2 with checkpoint_every=3 over 6 steps.
  assert sorted(int(d) for d in os.listdir(straight / "checkpoints") if d.isdigit()) == [3, 6]

  config2, ema = checkpoint.load_inference(str(straight))
  assert config2.model.width == config.model.width
  chex.assert_trees_all_equal(jax.device_get(ema), a["ema_params"])

  bigger = tts.tiny_config()
  bigger.model.width = 64
  with pytest.raises(configlib.UsageError, match="model.width"):
    run(bigger, straight, encoder)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, encoder):
  config = tts.tiny_config()
  config.train.max_nonfinite_steps = 2
  mesh = tts.mesh_for(config, dict(data=2, fsdp=4))
  batches = tts.FakeBatches(mesh, nan_steps={3, 4, 5})
  with pytest.raises(trainer.TrainingDiverged, match="2 consecutive"):
    run(config, tmp_path, encoder, batches=batches)
  good = saved_state(str(tmp_path))
  assert int(good["step"]) == 3 and int(good["skipped"]) == 0
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(good["params"]))


def test_load_inference_without_checkpoint(tmp_path):
  with pytest.raises(ValueError, match="config.json"):
    checkpoint.load_inference(str(tmp_path))
