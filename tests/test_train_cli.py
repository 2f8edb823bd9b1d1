"""train.py as a user meets it: usage errors, and SIGTERM saving a checkpoint."""

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, TINY_TRAIN_ARGS, error_lines, run_train, write_tiny_face_encoder


@pytest.mark.parametrize("args, needle", [
    ((), "required"),
    (("--config", "configs/tiny.py"), "--workdir"),
    (("--config", "configs/nope.py", "--workdir", "W"), "does not exist"),
    (("--config", "configs/tiny.py", "--workdir", "W", "--config.train.nope=1"),
     "unknown config key 'train.nope'"),
    (("--config", "configs/tiny.py", "--workdir", "W", "--config.train.steps=abc"),
     "expected a value of type int"),
    (("--config", "configs/tiny.py", "--workdir", "W", "--bogus"), "Unrecognised argument"),
    (("--config", "configs/tiny.py", "--workdir", "W", "--config.train.keep_checkpoints=0"),
     "train.keep_checkpoints=0 must be an integer >= 1"),
    (("--config", "configs/tiny.py", "--workdir", "configs/tiny.py"), "is a file, not a folder"),
    (("--config", "configs/tiny.py", "--workdir", "W", "--profile-steps", "8,5"),
     "--profile-steps must be START,STOP with 0 <= START < STOP, got '8,5'"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args, needle):
  args = tuple(str(tmp_path / "w") if a == "W" else a for a in args)
  proc = run_train(*args)
  assert proc.returncode == 2, proc.stderr
  assert len(error_lines(proc)) == 1 and needle in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_face_encoder_names_the_command(tmp_path):
  missing = str(tmp_path / "face")
  proc = run_train("--config", "configs/tiny.py", "--workdir", str(tmp_path / "video"),
                   f"--config.face_encoder_workdir={missing}")
  assert proc.returncode == 2
  assert "python train.py --config configs/face_encoder.py --workdir " + missing in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
  face, work = tmp_path / "face", tmp_path / "video"
  write_tiny_face_encoder(face)
  args = ["--config", "configs/tiny.py", "--workdir", str(work),
          f"--config.face_encoder_workdir={face}", "--config.train.steps=100000",
          "--config.train.checkpoint_every=100000", "--config.train.log_every=1",
          *TINY_TRAIN_ARGS]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = work / "metrics.jsonl"
  deadline = time.time() + 400
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  saved = sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit())
  assert saved and saved[-1] >= 1
  # Resume: one more step on top of the saved ones.
  more = run_train(*args[:-1], f"--config.train.steps={saved[-1] + 1}", "--no-progress",
                   env=env)
  assert more.returncode == 0, more.stderr[-2000:]
  assert f"Trained to step {saved[-1] + 1}" in more.stdout
