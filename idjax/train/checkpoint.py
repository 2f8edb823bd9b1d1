"""Checkpoints of a train state (the video model's, the face encoder's), and
loading EMA params for sampling.

Layout: WORKDIR/config.json and WORKDIR/checkpoints/<step>/state (orbax).
Saves are asynchronous (orbax copies the arrays off the devices, then writes
in a background thread), so training continues while a checkpoint is written.

Restores walk back: a step that cannot be read (truncated or overwritten
array files, an empty manifest, a missing state/ folder, garbled metadata)
is reported in one line and skipped for the newest readable one. Training
then moves the bad step aside to checkpoints/bad-<step> (never deletes it);
inference, a reader of a folder a trainer may be using, leaves it in place.
"""

import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from idjax import config_rules, configlib
# The read side is shared with inference (idjax.restore), which must not import the trainer.
from idjax.restore import (CHECKPOINT_DIR, CONFIG_FILE, check_state_folder,  # noqa: F401
                           complete_ema, read_saved_config, read_video_config as read_config,
                           restore_newest)

# Config entries that fix the shapes of the train state (or of the data it
# was trained on); any difference makes an existing checkpoint unusable.
# Model keys that only change how the same params are computed are exempt.
_RUNTIME_MODEL_KEYS = ("attention_impl", "remat_policy", "dtype")
_SHAPE_DATA_KEYS = ("resolution", "max_characters", "num_references",
                    "reference_resolution", "text_len")


def make_manager(workdir, train_config) -> ocp.CheckpointManager:
  """A manager for training in `workdir`; `train_config` (a config's train
  section, or `loop.Settings`) gives keep_checkpoints."""
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
  """The part of a config that must match for a checkpoint to be restorable.

  Keys a saved config lacks read as they were before they existed
  (config_rules.with_absent_keys); train.trainable decides what the
  optimizer state and the EMA hold."""
  config = config_rules.with_absent_keys(config)
  model = {k: v for k, v in config.model.to_dict().items() if k not in _RUNTIME_MODEL_KEYS}
  data = {k: config.data.get(k) for k in _SHAPE_DATA_KEYS}
  train = {"trainable": config_rules.lookup(config, "train.trainable", None)}
  return {"model": model, "data": data, "train": train}


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
           for section in ("model", "data", "train")
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
  check_state_folder(manager, step)
  check_state_shapes(manager, step, abstract_state)
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return out["state"]


def load_inference(workdir):
  """(config, ema_params) of the newest readable checkpoint in a video workdir.

  The whole TrainState lands on the default device (for tests and tools;
  sampling reads only the EMA, sharded, with `idjax.restore.restore_ema`).
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
  ema = restored["ema_params"]
  if jax.tree.structure(ema) != jax.tree.structure(restored["params"]):
    ema = complete_ema(ema, restored["params"])  # an adapters-only run (see train.state)
  return ml_collections.ConfigDict(config), ema


def restore_tree(manager, step):
  """The state saved at `step` as nested dicts on the default device (no model
  or optimizer needed to describe it: the stored metadata does)."""
  check_state_folder(manager, step)
  stored = manager.item_metadata(step)["state"].tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), stored)
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]
