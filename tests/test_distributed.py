"""Two processes (jax.distributed on localhost, 2 CPU devices each) against one
process with 4 devices; and a dead peer making the survivor exit, not hang."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT

WORKER = r'''
import json, os, sys
root, out, pid, nproc, port, die = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
sys.path[:0] = [root, os.path.join(root, "tests")]
os.chdir(root)
from idjax.train import distributed
distributed.initialize(distributed.settings_from(f"localhost:{port}", nproc, pid),
                       init_timeout_s=60, heartbeat_timeout_s=5)
if die and pid == 1:
  os._exit(9)                       # a peer that dies right after joining
import jax, numpy as np, ml_collections
import helpers
from idjax import sharding
from idjax.train import trainer
config = helpers.tiny_train_config()
config.mesh = ml_collections.ConfigDict(dict(data=4, fsdp=1, tensor=1, sequence=1))
mesh = trainer.build_mesh(config)
encoder = helpers.tiny_encoder()
setup = trainer.make_setup(config, helpers.TinyVideoModel(), encoder, mesh)
state = setup.init()
def put(v):
  s = sharding.batch_sharding(mesh, v.ndim)
  return jax.make_array_from_callback(v.shape, s, lambda idx: v[idx])
batch = {k: put(v) for k, v in helpers.numpy_batch(0).items()}
watchdog = distributed.Watchdog(120, "the first train steps")
for _ in range(2 if die else 1):
  state, metrics = setup.run_step(state, batch)
  jax.block_until_ready(state)
watchdog.stop()
leaves = [np.asarray(x.addressable_data(0)).tolist() for x in jax.tree.leaves(state.params)]
if jax.process_index() == 0:
  json.dump(dict(loss=float(np.asarray(metrics["loss"].addressable_data(0))), params=leaves),
            open(out, "w"))
'''


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(tmp_path, nproc, devices_each, die=False):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  out = tmp_path / f"out{nproc}.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
  port = free_port()
  procs = [subprocess.Popen([sys.executable, str(script), ROOT, str(out), str(i), str(nproc),
                             str(port), str(int(die))], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(nproc)]
  return procs, out


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  procs, out2 = launch(tmp_path, 2, 2)
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  (single,), out1 = launch(tmp_path, 1, 4)
  _, err = single.communicate(timeout=600)
  assert single.returncode == 0, err[-3000:]
  a, b = json.loads(out1.read_text()), json.loads(out2.read_text())
  np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
  for x, y in zip(a["params"], b["params"]):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dead_peer_makes_survivor_exit(tmp_path):
  procs, _ = launch(tmp_path, 2, 2, die=True)
  start = time.time()
  _, err = procs[0].communicate(timeout=300)
  elapsed = time.time() - start
  procs[1].communicate(timeout=60)
  assert procs[0].returncode == 3
  assert elapsed < 5 + 10, elapsed  # heartbeat_timeout_s plus a few seconds
  # The lifeline (idjax.train.distributed) reports the death in one sentence.
  assert "error: process 0 lost process 1" in err and "Traceback" not in err, err[-1500:]
  print(f"survivor exited with {procs[0].returncode} after {elapsed:.0f} s:\n{err[-1500:]}")


def test_settings_from_flags_and_env(monkeypatch):
  from idjax import configlib
  from idjax.train import distributed
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.settings_from() == distributed.ProcessSettings("h:1", 4, 3)
  assert distributed.settings_from("x:2", 2, 0) == distributed.ProcessSettings("x:2", 2, 0)
  with pytest.raises(configlib.UsageError, match="not in"):
    distributed.settings_from(None, 2, 5)
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  with pytest.raises(configlib.UsageError, match="--coordinator"):
    distributed.settings_from()


def test_loopback_coordinator_binds_to_loopback(monkeypatch):
  from idjax import configlib
  from idjax.train import distributed
  monkeypatch.delenv("JAX_COORDINATOR_BIND_ADDRESS", raising=False)
  assert distributed.settings_from("localhost:1234", 2, 0).bind == "localhost:1234"
  assert distributed.settings_from("[::1]:1234", 2, 1).bind == "[::1]:1234"
  assert distributed.settings_from("10.0.0.2:1234", 2, 0).bind is None   # JAX: every interface
  assert distributed.settings_from("h:1", 2, 0, bind="10.0.0.2:1").bind == "10.0.0.2:1"
  monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", "127.0.0.1:9")
  assert distributed.settings_from("h:1", 2, 0).bind == "127.0.0.1:9"
  with pytest.raises(configlib.UsageError, match="HOST:PORT"):
    distributed.settings_from("h", 2, 0)
  with pytest.raises(configlib.UsageError, match="--coordinator-bind"):
    distributed.settings_from("h:1", 2, 0, bind="nowhere")


def test_watchdog_ends_a_stalled_process():
  """A beat for 3 queued steps (the trainer's sync) allows 3 x timeout_s."""
  code = ("import time; from idjax.train.distributed import Watchdog; w = Watchdog(1.0); "
          "w.beat(steps=3); time.sleep(2); print('alive after 2 s', flush=True); time.sleep(30)")
  start = time.time()
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 3 and "made no progress" in proc.stderr
  assert proc.stdout == "alive after 2 s\n"
  assert time.time() - start < 25
