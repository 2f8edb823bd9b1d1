"""Checkpoints of the video train state, and loading EMA params for sampling.

Layout: WORKDIR/config.json and WORKDIR/checkpoints/<step>/state (orbax).
Saves are asynchronous (orbax copies the arrays off the devices, then writes
in a background thread), so training continues while a checkpoint is written.

Restores walk back: a step that cannot be read (truncated or overwritten
array files, an empty manifest, a missing state/ folder, garbled metadata)
is reported in one line and skipped for the newest readable one. Training
then moves the bad step aside to checkpoints/bad-<step> (never deletes it);
inference, a reader of a folder a trainer may be using, leaves it in place.
"""

import logging
import os
import re
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from idjax import config_rules, configlib

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"

# Config entries that fix the shapes of the train state (or of the data it
# was trained on); any difference makes an existing checkpoint unusable.
# Model keys that only change how the same params are computed are exempt.
_RUNTIME_MODEL_KEYS = ("attention_impl", "remat_policy", "dtype")
_SHAPE_DATA_KEYS = ("resolution", "max_characters", "num_references",
                    "reference_resolution", "text_len")


def make_manager(workdir, train_config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(train_config.keep_checkpoints), create=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options,
                               item_handlers={"state": ocp.StandardCheckpointHandler()})


def open_manager(workdir) -> ocp.CheckpointManager:
  """A manager for reading the checkpoints of an existing workdir."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
      item_handlers={"state": ocp.StandardCheckpointHandler()})


def save(manager, state, *, force=False):
  """Starts an asynchronous save of `state` at its step (returns at once)."""
  step = int(state.step.addressable_data(0))  # replicated; fine on any process
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)


def shape_signature(config) -> dict:
  """The part of a config that must match for a checkpoint to be restorable."""
  model = {k: v for k, v in config.model.to_dict().items() if k not in _RUNTIME_MODEL_KEYS}
  data = {k: config.data.get(k) for k in _SHAPE_DATA_KEYS}
  return {"model": model, "data": data}


def _normalise(value):
  """JSON round trips turn tuples into lists; compare them alike."""
  if isinstance(value, (list, tuple)):
    return [_normalise(v) for v in value]
  if isinstance(value, dict):
    return {k: _normalise(v) for k, v in value.items()}
  return value


def check_compatible(saved_config, config) -> None:
  """Raises UsageError naming every shape-relevant difference."""
  old, new = _normalise(shape_signature(saved_config)), _normalise(shape_signature(config))
  diffs = [f"{section}.{key}: checkpoint has {old[section].get(key)!r}, config has "
           f"{new[section].get(key)!r}"
           for section in ("model", "data")
           for key in sorted(set(old[section]) | set(new[section]))
           if old[section].get(key) != new[section].get(key)]
  if diffs:
    raise configlib.UsageError(
        "The checkpoint in this workdir was trained with an incompatible config ("
        + "; ".join(diffs) + "); use a new --workdir or the original settings.")


def check_state_shapes(manager, step, abstract_state) -> None:
  """Compares stored array shapes with the state to restore (UsageError if any differ)."""
  stored = manager.item_metadata(step)["state"].tree
  want = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  flat = {jax.tree_util.keystr(p, simple=True, separator="."): leaf.shape
          for p, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}
  bad = []
  for path, leaf in want:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    if name in flat and tuple(flat[name]) != tuple(leaf.shape):
      bad.append(f"{name} {tuple(flat[name])} vs {tuple(leaf.shape)}")
  if bad or len(flat) != len(want):
    detail = "; ".join(bad[:3]) or f"{len(flat)} stored arrays vs {len(want)} expected"
    raise configlib.UsageError(
        f"The checkpoint at step {step} does not fit this model ({detail}); "
        "was the face encoder or model changed? Use a new --workdir.")


def restore(manager, step, abstract_state):
  """Restores the state saved at `step` into the shardings of `abstract_state`
  (a pytree of jax.ShapeDtypeStruct with `sharding`)."""
  _check_state_folder(manager, step)
  check_state_shapes(manager, step, abstract_state)
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return out["state"]


class _Unreadable(Exception):
  """A step's files are not what orbax wrote (the message says what is wrong)."""


def _check_state_folder(manager, step):
  if not os.path.isdir(os.path.join(os.fspath(manager.directory), str(step), "state")):
    raise _Unreadable("its state/ folder is missing")


def _reason(error: BaseException, step_dir: str) -> str:
  """A storage error in a few words: the status, the file, the last cause
  (tensorstore messages run to a thousand characters of settings)."""
  if isinstance(error, _Unreadable):
    return str(error)
  text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  text = text.split(" [tensorstore_spec=")[0].strip().splitlines()[0] if text.strip() else ""
  status = re.match(r"([A-Z_]{4,}): ", text)
  files = re.findall(r'local file "([^"]+)"', text)
  if status and files:
    where = os.path.relpath(files[-1], step_dir)
    cause = text.rsplit(": ", 1)[-1]
    text = f"{status.group(1)} in {where}: {cause}"
  if len(text) > 200:
    text = text[:197] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


_FAILED_READS = set()  # checkpoint folders whose failed reads were reported


def _quiet_failed_reads(directory: str) -> None:
  """A failed orbax read leaves echoes: tensorstore callbacks aimed at an event
  loop orbax has closed ("Event loop is closed", printed as tracebacks) and
  asyncio tasks whose error nobody retrieved (logged, each with the whole
  tensorstore spec, when collected). The error itself has been reported in
  one line; drop just these echoes."""
  _FAILED_READS.add(os.path.abspath(directory))
  if getattr(sys.unraisablehook, "_idjax_quiet", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
        unraisable.exc_value):
      return
    previous(unraisable)

  def echo(record):
    exc = record.exc_info[1] if record.exc_info else None
    text = f"{record.getMessage()} {exc}"
    return not ("never retrieved" in text and any(d in text for d in _FAILED_READS))

  hook._idjax_quiet = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(echo)


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` on every process (a restore is used only if all could read it)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _aside_name(directory: str, step: int) -> str:
  name, n = f"bad-{step}", 1
  while os.path.exists(os.path.join(directory, name)):
    n += 1
    name = f"bad-{step}.{n}"
  return name


def restore_newest(manager, restore_step, *, move_aside: bool, log=None):
  """(step, restore_step(step)) for the newest step that can be read.

  Each unreadable step newer than it gets one line on stderr: its number,
  the reason, and what became of it. With `move_aside` (training) it is
  renamed checkpoints/bad-<step> and the manager reloaded, so that new saves
  and max_to_keep see only good steps; without (inference) it stays. A
  UsageError (a checkpoint that does not fit the model) is not a read error
  and propagates. Returns (None, None) when the manager holds no step;
  raises UsageError, having changed nothing, when none is readable.
  """
  log = log or (lambda line: print(line, file=sys.stderr, flush=True))
  directory = os.fspath(manager.directory)
  _quiet_failed_reads(directory)
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None, None
  bad = []
  for step in steps:
    try:
      state, ok = restore_step(step), True
    except configlib.UsageError:
      raise
    except Exception as e:  # orbax, tensorstore and json raise many types.
      state, ok, reason = None, False, _reason(e, os.path.join(directory, str(step)))
    if _all_processes_agree(ok):
      break
    bad.append((step, reason if not ok else "another process could not read it"))
  else:
    listed = "; ".join(f"step {s}: {r}" for s, r in bad)
    raise configlib.UsageError(
        f"No checkpoint in {directory} can be read ({listed}); nothing was changed: train "
        "again in a new --workdir, or move that folder aside to restart this one from step 0.")
  lead = jax.process_index() == 0
  for s, reason in bad:
    fate = "left it in place"
    if move_aside:
      name = _aside_name(directory, s)
      if lead:
        os.rename(os.path.join(directory, str(s)), os.path.join(directory, name))
      fate = f"moved it to {name}"
    if lead:
      log(f"warning: checkpoint step {s} in {directory} cannot be read ({reason}); {fate}; "
          f"continuing from step {step}.")
  if bad and move_aside:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("idjax: unreadable checkpoints moved aside")
    manager.reload()
  return step, state


def read_config(workdir) -> ml_collections.ConfigDict:
  """WORKDIR/config.json for inference, checked by the config rules;
  UsageError (one sentence) when it is missing, unreadable, of another kind
  (a face encoder's or an autoencoder's workdir), or invalid."""
  workdir = os.path.abspath(os.fspath(workdir))
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise configlib.UsageError(
        f"{workdir} holds no {CONFIG_FILE}; train a model there with train.py first.")
  config = read_saved_config(path, "sampling needs it: restore it from a copy")
  kind = config.get("kind", "video")
  if kind != "video":
    raise configlib.UsageError(
        f"{workdir} holds a model of kind {kind!r}, not a video model; give the workdir of one "
        "trained with train.py --config configs/tiny.py (or another video config).")
  config_rules.check(config, source=f"saved config {path}")
  return config


def read_saved_config(path, advice="restore it, or delete it to resume without the check that "
                      "the config still fits the checkpoints") -> ml_collections.ConfigDict:
  """A config.json written by `configlib.save_config`; UsageError if unreadable."""
  try:
    config = configlib.load_saved_config(path)
  except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    raise configlib.UsageError(f"{path} cannot be read ({reason}); {advice}.") from None
  return config


def load_inference(workdir):
  """(config, ema_params) of the newest readable checkpoint in a video workdir.

  The params land on the default device; the caller may reshard them.
  Raises ValueError (a UsageError: one sentence) when the workdir holds no
  trained video model or no readable checkpoint; skips unreadable newer steps
  with a warning line (see `restore_newest`), leaving them in place.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  config = read_config(workdir)
  manager = open_manager(workdir)
  try:
    step, restored = restore_newest(manager, lambda s: restore_tree(manager, s), move_aside=False)
  finally:
    manager.close()
  if step is None:
    raise configlib.UsageError(
        f"{workdir} holds no checkpoint yet; train.py writes one every "
        f"{config.train.checkpoint_every} steps and at the end.")
  return ml_collections.ConfigDict(config), restored["ema_params"]


def restore_tree(manager, step):
  """The state saved at `step` as nested dicts on the default device (no model
  or optimizer needed to describe it: the stored metadata does)."""
  _check_state_folder(manager, step)
  stored = manager.item_metadata(step)["state"].tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), stored)
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]
