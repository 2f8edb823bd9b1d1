"""Faults and bad input, as a user meets them (issue 11).

- A corrupt newest checkpoint (five kinds) is reported, moved aside and
  skipped; training from the older step ends bit-identical to a run that was
  never interrupted (slow); inference skips it without touching it.
- Bad config values, work folders and output paths exit 2 with one sentence,
  no traceback, and leave existing files byte-identical.
- A dead peer (a worker, or the coordinator) ends the survivor with the
  project's sentence and exit 3, measured (slow).
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train  # the entry point, called in-process (the root is on pytest's pythonpath)
from idjax import configlib
from idjax.data import references
from idjax.train import checkpoint, trainer
from idjax.train.state import create_state, make_optimizer

from helpers import (ROOT, TINY_TRAIN_ARGS, TinyVideoModel, make_workdir, mesh_for, run_trainer,
                     saved_state, tiny_encoder, tiny_face_encoder, tiny_parts, tiny_train_config,
                     write_tiny_face_encoder)

KINDS = ("truncate", "overwrite", "empty_manifest", "delete_state", "garble_metadata")
KEEP_5 = ml_collections.ConfigDict(dict(keep_checkpoints=5))


def corrupt(step_dir, kind):
  """Damages one saved step the way a full disk, a bad copy or a stray edit would."""
  state = os.path.join(step_dir, "state")
  if kind == "delete_state":
    shutil.rmtree(state)
  elif kind == "empty_manifest":
    open(os.path.join(state, "manifest.ocdbt"), "wb").close()
  elif kind == "garble_metadata":
    path = os.path.join(state, "_METADATA")
    open(path, "wb").write(b"\x00garbled" * (os.path.getsize(path) // 8))
  else:
    arrays = glob.glob(os.path.join(state, "**", "d", "*"), recursive=True)
    assert arrays
    for path in arrays:
      size = os.path.getsize(path)
      if kind == "truncate":
        os.truncate(path, size // 2)
      else:
        noise = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
        open(path, "r+b").write(noise.tobytes())


def digest(folder):
  """Every file under `folder` -> sha256 (what a refused command must not change)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)):
    if os.path.isfile(path):
      out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


# --- checkpoints: walk back, move aside, refuse when nothing is readable ----

def _state(step):
  rng = np.random.default_rng(step)
  return {"step": jnp.int32(step), "w": jnp.asarray(rng.normal(size=(40, 100)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
  """A workdir holding intact steps 3 and 6 (copied by each test)."""
  root = str(tmp_path_factory.mktemp("ckpt") / "work")
  manager = checkpoint.make_manager(root, KEEP_5)
  for step in (3, 6):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(step))))
    manager.wait_until_finished()
  manager.close()
  return root


def _abstract():
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                      _state(0))


@pytest.mark.parametrize("kind", KINDS)
def test_training_restore_walks_back_and_moves_the_bad_step_aside(two_steps, tmp_path, kind):
  work = str(tmp_path / "work")
  shutil.copytree(two_steps, work)
  corrupt(os.path.join(work, "checkpoints", "6"), kind)
  manager = checkpoint.make_manager(work, KEEP_5)
  lines = []
  step, state = checkpoint.restore_newest(
      manager, lambda s: checkpoint.restore(manager, s, _abstract()), move_aside=True,
      log=lines.append)
  assert step == 3
  chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(_state(3)))
  assert len(lines) == 1 and len(lines[0]) < 400, lines
  assert lines[0].startswith("warning: checkpoint step 6 in ") and "cannot be read (" in lines[0]
  assert lines[0].endswith("); moved it to bad-6; continuing from step 3."), lines[0]
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["3", "bad-6"]
  assert manager.all_steps() == [3]
  # New saves go on as usual, and a second bad step 6 gets its own name.
  manager.save(6, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(6))))
  manager.wait_until_finished()
  assert manager.all_steps() == [3, 6]
  manager.close()
  print(kind, "->", lines[0])


def test_no_readable_step_refuses_and_changes_nothing(two_steps, tmp_path):
  work = str(tmp_path / "work")
  shutil.copytree(two_steps, work)
  corrupt(os.path.join(work, "checkpoints", "6"), "truncate")
  corrupt(os.path.join(work, "checkpoints", "3"), "delete_state")
  before = digest(work)
  manager = checkpoint.make_manager(work, KEEP_5)
  with pytest.raises(configlib.UsageError, match="No checkpoint in .* can be read") as e:
    checkpoint.restore_newest(manager, lambda s: checkpoint.restore(manager, s, _abstract()),
                              move_aside=True, log=lambda line: None)
  manager.close()
  assert "step 6: ValueError: OUT_OF_RANGE in state/" in str(e.value)
  assert "step 3: its state/ folder is missing" in str(e.value)
  assert digest(work) == before


@pytest.fixture(scope="module")
def video_two_steps(tmp_path_factory):
  """A video workdir (helpers' tiny sampling model) with steps 0 and 5; step 5's
  EMA params differ, so which one was read shows."""
  root = str(tmp_path_factory.mktemp("video"))
  video = make_workdir(root)
  config = checkpoint.read_config(video)
  _, params, _ = tiny_parts()
  state = create_state(params, make_optimizer(config.train)[0], 0)
  later = state.replace(step=jnp.int32(5), ema_params=jax.tree.map(lambda p: p + 1.0, params))
  manager = checkpoint.make_manager(video, config.train)
  checkpoint.save(manager, later, force=True)
  manager.wait_until_finished()
  manager.close()
  return video, params


def test_inference_walks_back_and_leaves_the_bad_step(video_two_steps, tmp_path, capsys):
  video, params = video_two_steps
  work = str(tmp_path / "video")
  shutil.copytree(video, work)
  corrupt(os.path.join(work, "checkpoints", "5"), "delete_state")
  _, ema = checkpoint.load_inference(work)
  chex.assert_trees_all_equal(jax.device_get(ema), jax.device_get(params))   # step 0's
  err = capsys.readouterr().err
  assert "warning: checkpoint step 5 in" in err and "(its state/ folder is missing); left it " \
      "in place; continuing from step 0." in err, err
  # A reader moves nothing.
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["0", "5"]


# --- sample.py on broken workdirs ------------------------------------------

def _sample(argv, capsys):
  import sample
  with pytest.raises(SystemExit) as e:
    sample.main(argv)
  return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("damage", ["delete_state", "truncate", "config_json", "face_encoder"])
def test_sample_on_a_broken_workdir_exits_2(video_two_steps, tmp_path, capsys, damage):
  video, _ = video_two_steps
  work = str(tmp_path / "video")
  shutil.copytree(video, work)
  if damage == "config_json":
    open(os.path.join(work, "config.json"), "w").write('{"model": {"width": 3')
  elif damage == "face_encoder":
    work = os.path.join(os.path.dirname(video), "face")      # a face-encoder workdir
  else:
    for step in ("0", "5"):
      corrupt(os.path.join(work, "checkpoints", step), damage)
  ref = str(tmp_path / "ref.png")
  references.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ref)
  before = digest(work)
  code, err = _sample(["--workdir", work, "--reference", ref, "--prompt", "a person",
                       "--out", str(tmp_path / "out" / "c.mp4"), "--no-progress"], capsys)
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert code == 2 and len(errors) == 1, err
  assert len(errors[0]) < 600 and "Traceback" not in err, err
  expected = {"delete_state": "state/ folder is missing", "truncate": "OUT_OF_RANGE",
              "config_json": "cannot be read (JSONDecodeError",
              "face_encoder": "kind 'face_encoder', not a video model"}
  assert expected[damage] in errors[0], errors[0]
  assert digest(work) == before and not os.path.exists(tmp_path / "out")
  print(damage, "->", errors[0])


# --- train.py: bad values and work folders, before any work -----------------

TINY = os.path.join(ROOT, "configs", "tiny.py")


def _train(argv, capsys):
  with pytest.raises(SystemExit) as e:
    train.main(argv)
  return e.value.code, capsys.readouterr().err


TRAIN_BAD = {
    "steps -5": (["--config.train.steps=-5"], "train.steps=-5 must be an integer >= 1"),
    "batch 0": (["--config.train.batch_size=0"], "train.batch_size=0 must be"),
    "checkpoint_every 0": (["--config.train.checkpoint_every=0"], "train.checkpoint_every=0"),
    "keep_checkpoints 0": (["--config.train.keep_checkpoints=0"], "train.keep_checkpoints=0"),
    "heads do not divide width": (["--config.model.num_heads=5"], "must divide model.width"),
    "resolution not divisible": (["--config.data.resolution=30"], "divisible by the patch"),
    "data source": (["--config.data.source=bogus"], "data.source='bogus' must be one of"),
    "workdir is a file": (["--workdir", "{file}"], "is a file, not a folder"),
    "workdir under a file": (["--workdir", "{file}/sub"], "which is a file, not a folder"),
    "coordinator": (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
                    "must look like HOST:PORT"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_BAD))
def test_train_refuses_bad_input_before_work(tmp_path, capsys, case):
  extra, words = TRAIN_BAD[case]
  work = tmp_path / "work"
  (work / "checkpoints").mkdir(parents=True)
  (work / "config.json").write_text("{}")
  (tmp_path / "file").write_text("a file")
  before = digest(str(tmp_path))
  code, err = _train(["--config", TINY, "--workdir", str(work), "--no-progress"]
                     + [a.format(file=tmp_path / "file") for a in extra], capsys)
  assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
  assert words in err, err
  assert digest(str(tmp_path)) == before


def test_train_refuses_an_unreadable_config_json(video_two_steps, tmp_path):
  """The run's own config.json torn: one sentence, nothing changed (no training)."""
  video, _ = video_two_steps
  work = str(tmp_path / "video")
  shutil.copytree(video, work)
  open(os.path.join(work, "config.json"), "w").write("{ torn")
  before = digest(work)
  config = tiny_train_config()
  mesh_for(config, dict(data=8))
  with pytest.raises(configlib.UsageError, match=r"config.json cannot be read \(JSONDecodeError"):
    trainer.train(config, work, model=TinyVideoModel(),
                  encoder=tiny_face_encoder(), batches=object(), progress=False)
  assert digest(work) == before


# --- sample.py: bad input that used to fail late ---------------------------

def _png_header(width, height):
  """A PNG that claims width x height pixels (only the header is real)."""
  import struct
  import zlib

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
          + chunk(b"IEND", b""))


def test_sample_input_checks(video_two_steps, tmp_path, capsys):
  video, _ = video_two_steps
  ref = str(tmp_path / "ref.png")
  references.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ref)
  (tmp_path / "huge.png").write_bytes(_png_header(14000, 14000))
  (tmp_path / "file").write_text("a file")
  keep = tmp_path / "keep"
  keep.mkdir()
  (keep / "c.gif").write_bytes(b"old")
  before = digest(str(tmp_path))
  base = ["--workdir", video, "--prompt", "a person", "--no-progress"]
  cases = {
      "huge reference": (["--reference", str(tmp_path / "huge.png"), "--out",
                          str(tmp_path / "o" / "c.mp4")], "is too large (more than 64 megapixels)"),
      "seed 2**70": (["--reference", ref, "--seed", str(2**70), "--out", str(tmp_path / "o/c.mp4")],
                     "--seed must be in 0..4294967295"),
      "out under a file": (["--reference", ref, "--out", str(tmp_path / "file" / "c.mp4")],
                           "which is a file, not a folder"),
      "out unwritable": (["--reference", ref, "--out", "/proc/idjax-test/c.mp4"],
                         "cannot be created"),
      "existing output": (["--reference", ref, "--out", str(keep / "c.mp4")],
                          "c.gif exists; pass --overwrite"),
      "frames beyond memory": (["--reference", ref, "--frames", "100000", "--out",
                                str(tmp_path / "o" / "c.mp4")],
                               "per device to sample (an estimate)"),
  }
  for case, (extra, words) in cases.items():
    code, err = _sample(base + extra, capsys)
    one_line = err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert code == 2 and one_line, (case, err)
    assert words in err, (case, err)
    print(case, "->", err.strip())
  assert digest(str(tmp_path)) == before and not os.path.exists(tmp_path / "o")


# --- python -m idjax.data.references ---------------------------------------

def _references(argv, capsys):
  with pytest.raises(SystemExit) as e:
    references.main(argv)
  return e.value.code, capsys.readouterr().err


def test_references_keep_existing_files_and_check_values(tmp_path, capsys):
  out = tmp_path / "refs"
  out.mkdir()
  (out / "ref_0.png").write_bytes(b"my own picture")
  (tmp_path / "file").write_text("a file")
  before = digest(str(tmp_path))
  cases = {
      "existing ref_0.png": ([], "ref_0.png exists; pass --overwrite"),
      "frames 0": (["--frames", "0"], "--frames must be in 1..256"),
      "count 100000": (["--count", "100000"], "--count must be in 1..64"),
      "out under a file": (["--out", str(tmp_path / "file" / "refs")], "which is a file"),
      "seed": (["--seed", "-1"], "--seed must be in 0..4294967295"),
      "not a number": (["--count", "many"], "invalid int value"),
  }
  for case, (extra, words) in cases.items():
    code, err = _references(["--out", str(out), "--resolution", "32", "--no-progress"] + extra,
                            capsys)
    one_line = err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert code == 2 and one_line, (case, err)
    assert words in err, (case, err)
    print(case, "->", err.strip())
  assert digest(str(tmp_path)) == before
  assert references.main(["--out", str(out), "--resolution", "32", "--count", "2", "--frames", "2",
                          "--overwrite", "--no-progress"]) == 0
  assert sorted(os.listdir(out)) == ["prompt.txt", "ref_0.png", "ref_1.png", "target.png"]
  assert references.Image.open(out / "ref_0.png").size == (32, 32)


# --- slow: corruption, fallback and a bit-identical resume ------------------

@pytest.mark.slow
def test_resume_after_each_corruption_is_bit_identical(tmp_path):
  encoder = tiny_encoder()
  config = tiny_train_config()
  config.train.steps, config.train.keep_checkpoints = 9, 5
  straight = tmp_path / "straight"
  run_trainer(config, straight, encoder)
  stopped = tmp_path / "stopped"
  run_trainer(config, stopped, encoder, stop_at=6)
  assert sorted(os.listdir(stopped / "checkpoints")) == ["3", "6"]
  expected = saved_state(str(straight))
  for kind in KINDS:
    work = tmp_path / kind
    shutil.copytree(stopped, work)
    corrupt(str(work / "checkpoints" / "6"), kind)
    out = run_trainer(config, work, encoder)
    assert out["step"] == 9
    assert sorted(os.listdir(work / "checkpoints")) == ["3", "6", "9", "bad-6"], kind
    chex.assert_trees_all_equal(saved_state(str(work)), expected)   # bit for bit
    print(f"{kind}: fell back to step 3, resumed to step 9 bit-identically")


# --- slow: a dead peer, with real processes ---------------------------------

def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _peer_death(tmp_path, victim):
  """Two train.py processes (one CPU device each); kills `victim` once both
  are training; returns (survivor's exit code, its stderr, seconds to exit)."""
  face, work = tmp_path / "face", tmp_path / "video"
  write_tiny_face_encoder(face)
  port = _free_port()
  args = ["--config", "configs/tiny.py", "--workdir", str(work),
          f"--config.face_encoder_workdir={face}", "--config.train.steps=100000",
          "--config.train.checkpoint_every=100000", "--config.train.log_every=1",
          "--config.train.heartbeat_timeout_s=5", "--coordinator", f"localhost:{port}",
          "--num-processes", "2"] + [a for a in TINY_TRAIN_ARGS if not a.startswith("--config.mesh")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  procs = [subprocess.Popen([sys.executable, "train.py", *args, "--process-id", str(i)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  metrics = work / "metrics.jsonl"
  deadline = time.time() + 600
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
    assert time.time() < deadline and all(p.poll() is None for p in procs), [
        p.communicate()[1][-2000:] for p in procs]
    time.sleep(0.5)
  survivor = procs[1 - victim]
  procs[victim].send_signal(signal.SIGKILL)
  start = time.time()
  _, err = survivor.communicate(timeout=120)
  elapsed = time.time() - start
  procs[victim].communicate(timeout=60)
  return survivor.returncode, err, elapsed


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker dies", "coordinator dies"])
def test_dead_peer_ends_the_survivor_with_one_sentence(tmp_path, victim):
  code, err, elapsed = _peer_death(tmp_path, victim)
  survivor = 1 - victim
  sentence = f"error: process {survivor} lost process {victim}"
  assert code == 3, err[-3000:]
  assert sentence in err and "Traceback" not in err, err[-3000:]
  assert elapsed < 5 + 10, elapsed            # heartbeat_timeout_s plus a few seconds
  line = next(x for x in err.splitlines() if x.startswith(sentence))
  print(f"victim {victim}: survivor exited {code} after {elapsed:.2f} s: {line}\n"
        f"its stderr ended with:\n{err[-1500:]}")
  if os.environ.get("IDJAX_FAULT_TIMES"):  # where `make`-style runs collect the timings
    with open(os.environ["IDJAX_FAULT_TIMES"], "a") as f:
      f.write(json.dumps(dict(victim=victim, seconds=elapsed, code=code, line=line)) + "\n")
