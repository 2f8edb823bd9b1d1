"""train.py as a user meets it: usage errors, and SIGTERM saving a checkpoint."""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(*args, env=None, **kw):
  return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env, **kw)


def error_lines(proc):
  return [l for l in proc.stderr.splitlines() if l.startswith("error:")]


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


def _tiny_face_encoder(path):
  """A random-weight face encoder in a workdir (the real module, untrained)."""
  code = (
      "import jax, jax.numpy as jnp, flax.linen as nn, ml_collections;"
      "from idjax.face.encoder import encoder_from_config;"
      "from idjax.face.frozen import save_face_encoder;"
      "c = ml_collections.ConfigDict(dict(kind='face_encoder', architecture='resnet',"
      " input_size=8, width=4, num_stages=2, blocks_per_stage=1, groups=2, embed_dim=8));"
      "m = encoder_from_config(c);"
      "p = nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))['params'];"
      f"save_face_encoder({str(path)!r}, c, p)")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


TINY = ["--config.data.resolution=16", "--config.data.reference_resolution=16",
        "--config.data.num_frames=4", "--config.data.text_len=8",
        "--config.data.num_references=2", "--config.model.width=32", "--config.model.depth=1",
        "--config.model.num_heads=2", "--config.model.mlp_ratio=2.0", "--config.model.text_width=32",
        "--config.model.text_layers=1", "--config.model.num_identity_tokens=4",
        "--config.model.identity_layers=1", "--config.train.batch_size=2",
        "--config.train.id_loss_frames=2", "--config.mesh.data=1", "--no-progress"]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
  face, work = tmp_path / "face", tmp_path / "video"
  _tiny_face_encoder(face)
  args = ["--config", "configs/tiny.py", "--workdir", str(work),
          f"--config.face_encoder_workdir={face}", "--config.train.steps=100000",
          "--config.train.checkpoint_every=100000", "--config.train.log_every=1", *TINY]
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
