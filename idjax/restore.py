"""Reading trained networks for inference: params straight into their shardings.

This module sits at the bottom of idjax, beside `sharding` and `configlib`,
so that the frozen face encoder and autoencoder, the sampler and the
evaluation all read checkpoints one way without importing the trainer.

Two workdir formats:
  video model    WORKDIR/config.json and WORKDIR/checkpoints/<step>/state, an
                 orbax checkpoint of the whole TrainState (written by
                 idjax/train/checkpoint.py). Inference reads only the
                 `ema_params` subtree (an orbax partial restore): the params,
                 both Adam moments and the counters stay on disk. A run
                 that froze its backbone (train.trainable = "adapters")
                 keeps the EMA of the trained params only; the frozen ones,
                 their own EMA, are read from `params` instead.
  frozen network WORKDIR/config.json and WORKDIR/params/, an orbax checkpoint
                 of the params alone (face encoders, the video autoencoder).

Where parameters land. `abstract_params` turns an abstract, logically boxed
init (`jax.eval_shape(model.init, ...)["params"]`) into ShapeDtypeStructs
carrying the NamedSharding that the rules table gives each parameter's
logical axis names on a mesh, and orbax writes each shard straight onto its
device. Nothing is trial-initialised and nothing silently falls back to
replication: a parameter without logical names, with a name the rules table
lacks, or with a dimension the mesh does not divide, is an error.

Reads walk back (`restore_newest`): a step that cannot be read (truncated or
overwritten array files, an empty manifest, a missing state/ folder, garbled
metadata) is reported in one line and skipped for the newest readable one.
A reader leaves it in place; the trainer (`move_aside=True`) renames it
checkpoints/bad-<step>. When no step can be read: UsageError (a ValueError),
one sentence, nothing changed.
"""

import logging
import os
import re
import sys

from flax import traverse_util
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from idjax import config_rules, configlib, sharding

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
PARAMS_DIR = "params"
STATE_ITEM = "state"  # the item name of the TrainState in a checkpoint step
EMA_PARAMS = "ema_params"  # the TrainState field inference reads
PARAMS = "params"  # where the frozen params of an adapters-only run are read


# --- configs ---------------------------------------------------------------


def read_saved_config(
    path,
    advice="restore it, or delete it to resume without the check that "
    "the config still fits the checkpoints",
) -> ml_collections.ConfigDict:
  """A config.json written by `configlib.save_config`; UsageError if unreadable."""
  try:
    config = configlib.load_saved_config(path)
  except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    raise configlib.UsageError(f"{path} cannot be read ({reason}); {advice}.") from None
  return config


def read_video_config(workdir) -> ml_collections.ConfigDict:
  """WORKDIR/config.json of a video model, checked by the config rules;
  UsageError (one sentence) when it is missing, unreadable, of another kind
  (a face encoder's or an autoencoder's workdir), or invalid."""
  workdir = os.path.abspath(os.fspath(workdir))
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise configlib.UsageError(
        f"{workdir} holds no {CONFIG_FILE}; train a model there with train.py first."
    )
  config = read_saved_config(path, "sampling needs it: restore it from a copy")
  kind = config.get("kind", "video")
  if kind != "video":
    raise configlib.UsageError(
        f"{workdir} holds a model of kind {kind!r}, not a video model; give the workdir of one "
        "trained with train.py --config configs/tiny.py (or another video config)."
    )
  config_rules.check(config, source=f"saved config {path}")
  return config


# --- where each parameter goes ---------------------------------------------


def _is_box(x) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def abstract_params(boxed, mesh, rules):
  """ShapeDtypeStructs with their NamedShardings, for restoring into.

  Args:
    boxed: `jax.eval_shape(model.init, ...)["params"]`: leaves are
      nn.LogicallyPartitioned boxes of ShapeDtypeStructs.
    mesh: where the params will live.
    rules: the logical -> mesh axes table (config.sharding.rules).

  Returns:
    the unboxed tree, each leaf a ShapeDtypeStruct whose sharding is
    `nn.logical_to_mesh_axes(names, rules)` on `mesh` (what
    `nn.get_partition_spec` + `sharding.tree_shardings` give the trainer).

  Raises:
    ValueError naming the params whose sharding cannot be computed.
  """
  rules = sharding.rules_from_config(rules)
  known = {name for name, _ in rules}
  flat, treedef = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=_is_box)
  out, problems = [], []
  for path, leaf in flat:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if not _is_box(leaf):
      problems.append(f"{name} has no logical axis names (use nn.with_logical_partitioning)")
      continue
    unknown = [n for n in leaf.names if n is not None and n not in known]
    if unknown:
      problems.append(f"{name} has axis names {unknown} that the rules table lacks")
      continue
    target = sharding.logical_to_sharding(leaf.names, mesh, rules)
    try:
      target.shard_shape(leaf.value.shape)
    except ValueError:
      problems.append(
          f"{name} {tuple(leaf.value.shape)} does not split as {target.spec} "
          f"over mesh {dict(mesh.shape)}"
      )
      continue
    out.append(jax.ShapeDtypeStruct(leaf.value.shape, leaf.value.dtype, sharding=target))
  if problems:
    shown = "; ".join(problems[:4]) + (
        f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
    )
    raise ValueError(f"Cannot place every parameter: {shown}.")
  return jax.tree_util.tree_unflatten(treedef, out)


def _mismatch(have, want) -> str | None:
  """'' if two trees of arrays/structs have the same paths and shapes, else a few words."""
  paths = lambda tree: {
      jax.tree_util.keystr(p, simple=True, separator="/"): tuple(x.shape)
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  a, b = paths(have), paths(want)
  differ = [f"{k} {a[k]} vs {b[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
  missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
  parts = (
      differ[:3] + [f"missing {m}" for m in missing[:2]] + [f"unexpected {e}" for e in extra[:2]]
  )
  return "; ".join(parts) or None


def check_fits(params, abstract, what="the params") -> None:
  """ValueError unless `params` has the paths and shapes of `abstract`."""
  detail = _mismatch(params, abstract)
  if detail:
    raise ValueError(f"{what} do not fit the model ({detail}).")


# --- walking back over unreadable steps ------------------------------------


class Unreadable(Exception):
  """A step's files are not what orbax wrote (the message says what is wrong)."""


def check_state_folder(manager, step) -> None:
  if not os.path.isdir(os.path.join(os.fspath(manager.directory), str(step), STATE_ITEM)):
    raise Unreadable(f"its {STATE_ITEM}/ folder is missing")


def _reason(error: BaseException, step_dir: str) -> str:
  """A storage error in a few words: the status, the file, the last cause
  (tensorstore messages run to a thousand characters of settings)."""
  if isinstance(error, Unreadable):
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
        unraisable.exc_value
    ):
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
        "again in a new --workdir, or move that folder aside to restart this one from step 0."
    )
  lead = jax.process_index() == 0
  for s, reason in bad:
    fate = "left it in place"
    if move_aside:
      name = _aside_name(directory, s)
      if lead:
        os.rename(os.path.join(directory, str(s)), os.path.join(directory, name))
      fate = f"moved it to {name}"
    if lead:
      log(
          f"warning: checkpoint step {s} in {directory} cannot be read ({reason}); {fate}; "
          f"continuing from step {step}."
      )
  if bad and move_aside:
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("idjax: unreadable checkpoints moved aside")
    manager.reload()
  return step, state


# --- the video model's EMA params ------------------------------------------


def _ema_reader(workdir) -> ocp.CheckpointManager:
  """A manager for reading WORKDIR/checkpoints: it creates, saves and deletes
  nothing (`read_only=True` would too, but logs a warning for each option it
  overrides). The TrainState was written by StandardCheckpointHandler, whose
  format is PyTreeCheckpointHandler's; the latter is opened here because
  only it restores part of a tree."""
  return ocp.CheckpointManager(
      os.path.join(workdir, CHECKPOINT_DIR),
      options=ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False),
      item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler()},
  )


def partition(tree, keep):
  """(the leaves of nested dicts `tree` whose path `keep` accepts, the others),
  each a pruned tree of the same nesting. Boxed (logically partitioned)
  leaves stay boxed."""
  flat = traverse_util.flatten_dict(tree)
  pick = lambda inside: traverse_util.unflatten_dict(
      {p: leaf for p, leaf in flat.items() if keep(p) == inside}
  )
  return pick(True), pick(False)


def merge(tree, part):
  """`tree` with the leaves of the pruned tree `part` put in (added or replaced)."""
  flat = traverse_util.flatten_dict(tree)
  flat.update(traverse_util.flatten_dict(part))
  return traverse_util.unflatten_dict(flat)


def split_by(tree, like):
  """`partition` of `tree` by the paths the pruned tree `like` has."""
  return partition(tree, set(traverse_util.flatten_dict(like)).__contains__)


def complete_ema(ema, params):
  """The EMA of every param: `ema`, with the leaves it lacks (params frozen
  in training, whose EMA is themselves) taken from `params`."""
  return merge(params, ema)


def restore_ema_step(manager, step, abstract):
  """The `ema_params` saved at `step`, each array read straight into the
  sharding of its ShapeDtypeStruct in `abstract`; no other array of the
  TrainState is read, except the frozen params of a run that kept the EMA
  of its adapters only (module docstring). UsageError if the stored arrays
  do not fit `abstract`."""
  check_state_folder(manager, step)
  stored = manager.item_metadata(step)[STATE_ITEM]
  stored = getattr(stored, "tree", stored)
  if not isinstance(stored, dict) or EMA_PARAMS not in stored:
    raise Unreadable(f"its {STATE_ITEM} holds no {EMA_PARAMS}")
  want = {EMA_PARAMS: abstract}
  detail = _mismatch(stored[EMA_PARAMS], abstract)
  ema_part, frozen_part = split_by(abstract, stored[EMA_PARAMS])
  if frozen_part and ema_part and PARAMS in stored:
    want = {EMA_PARAMS: ema_part, PARAMS: frozen_part}
    detail = _mismatch(
        {EMA_PARAMS: stored[EMA_PARAMS], PARAMS: split_by(stored[PARAMS], frozen_part)[0]}, want
    )
  if detail:
    raise configlib.UsageError(
        f"The EMA params at step {step} in {os.fspath(manager.directory)} do not fit the model "
        f"its {CONFIG_FILE} describes ({detail})."
    )
  restore_args = jax.tree.map(
      lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
      want,
  )
  out = manager.restore(
      step,
      args=ocp.args.Composite(
          **{
              STATE_ITEM: ocp.args.PyTreeRestore(
                  item=want, restore_args=restore_args, partial_restore=True
              )
          }
      ),
  )[STATE_ITEM]
  return complete_ema(out[EMA_PARAMS], out[PARAMS]) if PARAMS in want else out[EMA_PARAMS]


def restore_ema(workdir, abstract, *, log=None):
  """(step, ema_params) of the newest readable checkpoint of a video workdir.

  Args:
    workdir: a video workdir (see the module doc).
    abstract: the params' ShapeDtypeStructs with shardings (`abstract_params`).
    log: where a skipped step's warning line goes (default stderr).

  Returns:
    the step read, and the EMA params as jax.Arrays laid out as `abstract`
    says (each device holds only its shards).

  Raises:
    UsageError (a ValueError; one sentence) when the workdir holds no
    checkpoint, none can be read, or the newest readable one does not fit.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  manager = _ema_reader(workdir)
  try:
    step, params = restore_newest(
        manager, lambda s: restore_ema_step(manager, s, abstract), move_aside=False, log=log
    )
  finally:
    manager.close()
  if step is None:
    raise configlib.UsageError(
        f"{workdir} holds no checkpoint yet; train.py writes one every "
        "train.checkpoint_every steps and at the end."
    )
  return step, params


# --- frozen networks: config.json + params/ --------------------------------


def save_params(workdir, config, params) -> None:
  """Writes a frozen network's workdir: config.json and params/."""
  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  configlib.save_config(config, os.path.join(workdir, CONFIG_FILE))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(workdir, PARAMS_DIR), jax.tree.map(np.asarray, params), force=True)
  checkpointer.wait_until_finished()


def read_frozen_config(
    workdir, kind: str, *, label: str, holds: str, advice: str, extra_files=()
) -> ml_collections.ConfigDict:
  """config.json of a frozen network's workdir, whose config.kind must be `kind`.

  Raises ValueError "WORKDIR holds no {holds} (expected ...; {advice})." when
  a file is missing, and "... is not {label} config (kind=...)." when the
  config is of another kind.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  needed = [(CONFIG_FILE, os.path.isfile), (PARAMS_DIR, os.path.isdir)]
  needed += [(name, os.path.isfile) for name in extra_files]
  if not all(exists(os.path.join(workdir, name)) for name, exists in needed):
    names = [name + ("/" if exists is os.path.isdir else "") for name, exists in needed]
    listed = " and ".join(names) if len(names) == 2 else ", ".join(names[:-1]) + " and " + names[-1]
    raise ValueError(f"{workdir} holds no {holds} (expected {listed}; {advice}).")
  path = os.path.join(workdir, CONFIG_FILE)
  config = read_saved_config(path, "restore it from a copy")
  if config.get("kind") != kind:
    raise ValueError(f"{path} is not {label} config (kind={config.get('kind')!r}).")
  return config


def restore_params(workdir, abstract, device=None):
  """params/ of a frozen network's workdir, on one device (default: the first
  local one); `abstract` is its eval_shape'd init params (boxed or not)."""
  device = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), nn.unbox(abstract)
  )
  path = os.path.join(os.path.abspath(os.fspath(workdir)), PARAMS_DIR)
  return ocp.StandardCheckpointer().restore(path, abstract)
