"""The training loop both trainers run: resume -> steps -> metrics -> checkpoints -> hooks.

The video-model trainer (`trainer.py`) and the face-encoder trainer
(`idjax/face/train.py`) each build a mesh, a sharded init (`sharded_init`), a
jitted, donating step and something with `batch_at(step)`; then `run` does
the rest the same way for both: it resumes from the newest readable
checkpoint (or initialises), steps, reads metrics back to the host only at
sync steps, writes them with the MetricsWriter, saves orbax checkpoints,
runs hooks, and stops cleanly on SIGTERM / SIGINT or at `stop_at`.

A state is a `TrainState` (state.py): the loop reads its `step` and `skipped`
counters, and a step's metrics must hold `loss`, `nonfinite` and `skipped`
(what `apply_gradients` returns).
"""

from collections.abc import Callable, Sequence
import dataclasses
import math
import os
import signal
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from idjax import configlib, sharding
from idjax.train import checkpoint
from idjax.train.distributed import Watchdog
from idjax.train.writer import MetricsWriter


class TrainingDiverged(RuntimeError):
  """Too many consecutive non-finite steps; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the loop reads of a config: the video config's `train` section, or
  the flat face-encoder config (which sets steps and log_every and takes the
  rest from its trainer's defaults)."""

  steps: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  max_nonfinite_steps: int
  heartbeat_timeout_s: float

  @classmethod
  def from_config(cls, section, **defaults) -> "Settings":
    """The fields from `section`; `defaults` only for keys it does not set."""
    names = [f.name for f in dataclasses.fields(cls)]
    values = {**defaults, **{name: section[name] for name in names if name in section}}
    missing = [name for name in names if name not in values]
    if missing:
      raise configlib.UsageError(f"The config sets no {', '.join(missing)} for the training loop.")
    return cls(**{name: values[name] for name in names})


@dataclasses.dataclass(frozen=True)
class Hook:
  """`fn(step)`, run every `every` steps (0: never) and after the last step.

  A hook step is also a checkpoint step, and the hook runs once that
  checkpoint is on disk, so a hook can read the run as of its step from the
  workdir (as the periodic samples of `idjax.sampling.hooks` do), the way
  Levanter's `add_hook` callbacks see the trainer's state.
  """

  fn: Callable[[int], None]
  every: int = 0

  def due(self, step: int, last: int) -> bool:
    return bool(self.every and step % self.every == 0) or step == last


# --- device <-> host ----------------------------------------------------------


def host_value(x):
  """A replicated array's value on this host (works when other processes hold
  devices of the mesh too, where device_get would refuse)."""
  return np.asarray(x.addressable_data(0))


def fetch(tree):
  """Host values of a tree of replicated arrays: the loop's only device -> host
  reads, made at sync steps (tests count its calls)."""
  return jax.tree.map(host_value, tree)


def put_replicated(tree, mesh):
  """Host values (the same on every process) -> arrays replicated over `mesh`."""
  replicated = sharding.replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def put_batch(tree, mesh, rules=sharding.DEFAULT_RULES):
  """A whole global batch on the host (the same on every process) -> arrays
  sharded on the logical `batch` axis; each device gets only its rows."""

  def put(x):
    x = np.asarray(x)
    where = sharding.batch_sharding(mesh, x.ndim, rules)
    return jax.make_array_from_callback(x.shape, where, lambda idx: x[idx])

  return jax.tree.map(put, tree)


# --- init -------------------------------------------------------------------


def sharded_init(init_boxed, mesh, rules):
  """A state created straight into its shardings (params never exist unsharded).

  Args:
    init_boxed: () -> a state whose params carry logical axis names (boxed,
      as `model.init` returns them); traced, never run eagerly.
    mesh, rules: where the state lives.

  Returns:
    (init, abstract_state, state_shardings): `init()` makes a fresh state;
    `abstract_state` is its tree of ShapeDtypeStruct with shardings (what a
    checkpoint is restored into).
  """
  boxed = jax.eval_shape(init_boxed)
  shardings = sharding.tree_shardings(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
  )
  init = jax.jit(lambda: nn.unbox(init_boxed()), out_shardings=shardings)
  return init, abstract, shardings


def param_table(params) -> str:
  """Parameter count and size per top-level module of `params` (arrays or
  ShapeDtypeStructs), largest first, and the total."""
  rows = []
  for name, subtree in params.items():
    leaves = jax.tree.leaves(subtree)
    count = sum(math.prod(x.shape) for x in leaves)
    size = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves)
    rows.append((name, count, size))
  rows.sort(key=lambda r: -r[1])
  total = sum(r[1] for r in rows)
  total_size = sum(r[2] for r in rows)
  width = max([len("module"), len("total")] + [len(r[0]) for r in rows])
  lines = [f"{'module':<{width}}  {'parameters':>14}  {'share':>6}  {'MiB':>9}"]
  for name, count, size in rows + [("total", total, total_size)]:
    lines.append(
        f"{name:<{width}}  {count:>14,}  {count / max(total, 1):>6.1%}  {size / 2**20:>9.2f}"
    )
  return "\n".join(lines)


def start_state(workdir, config, manager, abstract_state, init, check_compatible=None):
  """The newest readable checkpoint's state (refusing an incompatible one
  before touching it, with `check_compatible(saved_config, config)`;
  unreadable newer steps are moved aside to checkpoints/bad-<step>) or a
  fresh one; then records the config in WORKDIR/config.json."""
  config_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  state = None
  if manager.all_steps():
    if check_compatible and os.path.isfile(config_path):
      check_compatible(checkpoint.read_saved_config(config_path), config)
    _, state = checkpoint.restore_newest(
        manager, lambda step: checkpoint.restore(manager, step, abstract_state), move_aside=True
    )
  if state is None:
    state = init()
  if jax.process_index() == 0:
    configlib.save_config(config, config_path)
  return state


# --- the loop's helpers -----------------------------------------------------


class StopFlag:
  """Set by SIGTERM / SIGINT; the loop saves a checkpoint and returns."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Profiler:
  """A jax.profiler trace of steps start+1 .. stop in WORKDIR/profile
  (`steps=(start, stop)`; None: off). A resumed run past `start` traces from
  where it starts, if that is before `stop`."""

  def __init__(self, workdir, steps):
    self.folder = os.path.join(workdir, "profile")
    self.start, self.stop = steps if steps else (None, None)
    self.running, self.first = False, None

  def before_step(self, step):
    if self.start is not None and not self.running and self.start <= step < self.stop:
      jax.profiler.start_trace(self.folder)
      self.running, self.first = True, step + 1

  def after_step(self, step, state):
    if self.running and step >= self.stop:
      jax.block_until_ready(state)  # the trace must hold the steps' device work
      self.close()

  def close(self):
    if self.running:
      jax.profiler.stop_trace()
      self.running = False
      if jax.process_index() == 0:
        print(
            f"Profile of steps {self.first}..{self.stop} written to {self.folder}",
            file=sys.stderr,
            flush=True,
        )


def progress_bar(initial, total, enabled, desc=None):
  return tqdm(
      initial=initial,
      total=total,
      desc=desc,
      disable=not enabled,
      dynamic_ncols=True,
      file=sys.stderr,
  )


# jnp.maximum over two replicated scalars, jitted once (cached on shapes).
_maximum = jax.jit(jnp.maximum)


# --- the loop ---------------------------------------------------------------


def run(
    config,
    workdir,
    *,
    init,
    abstract_state,
    step_fn,
    batches,
    settings: Settings,
    check_compatible=None,
    hooks: Sequence[Hook] = (),
    stop_at=None,
    progress=True,
    desc=None,
    flops_per_step=None,
    profile_steps=None,
):
  """Trains (or resumes) in `workdir` up to `settings.steps`; returns (state, last metrics).

  Args:
    config: the run's config, recorded in WORKDIR/config.json.
    workdir: checkpoints/, metrics.jsonl and events/ go here.
    init, abstract_state: from `sharded_init`.
    step_fn: (state, batch) -> (state, metrics), jitted and donating the state.
    batches: anything with `batch_at(step)`; the batch of step s must be a
      function of s alone (a resumed run then sees the same batches).
    settings: steps, log_every, checkpoint_every, ... (see `Settings`).
    check_compatible: (saved config, config) -> None or UsageError, run
      before an existing checkpoint is restored.
    hooks: `Hook`s, run at their steps after that step's checkpoint.
    stop_at: leave after that step with a checkpoint, as a preemption would
      (time-boxed jobs; the resume tests).
    progress: a tqdm bar on stderr (process 0), titled `desc`.
    flops_per_step: model FLOPs of one step, for a model_tflops_per_s metric.
    profile_steps: (start, stop): a jax.profiler trace of the steps after
      step `start` up to step `stop`, in WORKDIR/profile.

  The metrics dict holds the last logged values (empty when no step ran) and
  `step`, the step reached (below settings.steps when stopped early).

  The loop reads metrics back to the host only at sync steps: every
  log_every steps, and before a checkpoint, a hook or a stop, so that steps
  are dispatched asynchronously in between. Raises TrainingDiverged when a
  sync step finds that max_nonfinite_steps steps in a row had a non-finite
  loss or gradient since the last one (the longest run is tracked on the
  device), before any checkpoint of the later steps is written.
  """
  s = settings
  manager = checkpoint.make_manager(workdir, s)
  writer = bar = profiler = watchdog = None
  last = {}
  try:
    state = start_state(workdir, config, manager, abstract_state, init, check_compatible)
    writer = MetricsWriter(workdir)
    step = int(host_value(state.step))
    bar = progress_bar(step, s.steps, progress and jax.process_index() == 0, desc)
    tick, tick_step = time.perf_counter(), step
    # The longest run of non-finite steps since the last sync, kept on the device.
    longest, skipped_before = None, int(host_value(state.skipped))
    synced_at = step
    profiler = Profiler(workdir, profile_steps)
    with StopFlag() as stop:
      batch = batches.batch_at(step) if step < s.steps else None
      while step < s.steps:
        profiler.before_step(step)
        state, metrics = step_fn(state, batch)
        step += 1
        streak = metrics["nonfinite"]  # consecutive non-finite steps up to this one
        longest = streak if longest is None else _maximum(longest, streak)
        # The step runs asynchronously: make the next batch meanwhile.
        batch = batches.batch_at(step) if step < s.steps else None
        profiler.after_step(step, state)
        if watchdog:
          watchdog.beat()
        elif jax.process_count() > 1:  # started after the first (compiling) step
          watchdog = Watchdog(s.heartbeat_timeout_s)
        bar.update(1)
        due = [hook for hook in hooks if hook.due(step, s.steps)]
        stopping = stop.signal is not None or step == stop_at
        saving = step % s.checkpoint_every == 0 or step == s.steps or bool(due)
        log = step % s.log_every == 0 or step == s.steps
        if not (stopping or saving or log):
          continue
        # A sync step: the only place the loop waits for the device, for the
        # steps dispatched since the last one (the watchdog allows each its time).
        if watchdog:
          watchdog.beat(steps=step - synced_at)
        values = fetch(dict(metrics, longest_nonfinite_run=longest))
        streak = int(values.pop("longest_nonfinite_run"))
        longest, synced_at = None, step
        if streak >= s.max_nonfinite_steps:
          raise TrainingDiverged(
              f"{streak} consecutive steps had a non-finite loss or gradient (found at step "
              f"{step}); stopped. The last good checkpoint is kept in {workdir}/checkpoints."
          )
        skipped = int(values["skipped"])
        if skipped > skipped_before:
          bar.write(
              f"steps to {step}: {skipped - skipped_before} non-finite loss or gradient, "
              f"update skipped (at most {streak} in a row)"
          )
        skipped_before = skipped
        if log:
          now = time.perf_counter()
          rate = (step - tick_step) / max(now - tick, 1e-9)
          tick, tick_step = now, step
          last = {k: float(v) for k, v in values.items()}
          last.update(steps_per_s=rate)
          if flops_per_step:
            last.update(model_tflops_per_s=flops_per_step * rate / 1e12)
          writer.write(step, last)
          bar.set_postfix(loss=f"{last['loss']:.4f}", steps_per_s=f"{rate:.2f}")
        if stopping:
          checkpoint.save(manager, state, force=True)
          break
        if saving:
          checkpoint.save(manager, state)
        if due:
          manager.wait_until_finished()
          for hook in due:
            hook.fn(step)
  finally:
    if profiler:
      profiler.close()
    manager.wait_until_finished()
    manager.close()
    if writer:
      writer.close()
    if bar:
      bar.close()
    if watchdog:
      watchdog.stop()
  return state, dict(last, step=step)
