"""The video-model trainer: mesh -> sharded init -> jitted step -> loop -> checkpoints.

Reads top to bottom like big_vision's trainer. Side effects (logging,
checkpoints, samples, signals) live here; the step (`step.py`) is pure.
"""

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

from idjax import config_rules, configlib, paths, sharding
from idjax.rng import derive
from idjax.train import checkpoint
from idjax.train.distributed import Watchdog
from idjax.train.state import create_state, make_optimizer
from idjax.train.step import make_train_step
from idjax.train.writer import MetricsWriter


class TrainingDiverged(RuntimeError):
  """Too many consecutive non-finite steps; the last good checkpoint is kept."""


def build_mesh(config, devices=None):
  dcn = dict(config.get("dcn_mesh", {}) or {})
  use_dcn = math.prod(int(v) for v in dcn.values()) > 1 if dcn else False
  try:
    return sharding.make_mesh(dict(config.mesh), devices, dcn if use_dcn else None)
  except ValueError as e:
    raise configlib.UsageError(f"{e}") from e


def load_face_encoder(config):
  """The frozen encoder named by config.face_encoder_workdir (UsageError if absent)."""
  from idjax.face.frozen import FrozenFaceEncoder
  workdir = config.face_encoder_workdir
  try:
    return FrozenFaceEncoder.from_workdir(workdir)
  except ValueError as e:
    raise configlib.UsageError(
        f"No face encoder in {workdir!r} (config.face_encoder_workdir); make it first with: "
        f"python train.py --config configs/face_encoder.py --workdir {workdir}") from e


def load_autoencoder(config):
  """The frozen autoencoder of a latent-space config (None for pixel space)."""
  space = config.model.get("space", "pixel")
  if space == "pixel":
    return None
  if space != "latent":
    raise configlib.UsageError(f"config.model.space must be 'pixel' or 'latent', got {space!r}.")
  from idjax.autoencoder.frozen import FrozenAutoencoder
  workdir = config.get("autoencoder_workdir", "")
  try:
    autoencoder = FrozenAutoencoder.from_workdir(workdir)
  except ValueError as e:
    raise configlib.UsageError(
        f"No video autoencoder in {workdir!r} (config.autoencoder_workdir); make it first with: "
        f"python train.py --config configs/autoencoder.py --workdir {workdir}") from e
  check_latent_space(config, autoencoder)
  return autoencoder


def check_latent_space(config, autoencoder):
  """UsageError unless the model's channels match the autoencoder's latents."""
  if int(config.model.channels) != autoencoder.latent_channels:
    raise configlib.UsageError(
        f"config.model.channels={config.model.channels} but the autoencoder in "
        f"{config.get('autoencoder_workdir')!r} makes {autoencoder.latent_channels}-channel latents.")
  autoencoder.latent_shape(int(config.data.num_frames), int(config.data.resolution),
                           int(config.data.resolution))


def model_grid(config, autoencoder=None):
  """(frames, height, width) of what the model diffuses: the clip, or its latents."""
  d = config.data
  if autoencoder is None:
    return int(d.num_frames), int(d.resolution), int(d.resolution)
  return autoencoder.latent_shape(int(d.num_frames), int(d.resolution), int(d.resolution))[:3]


def model_inputs(config, encoder, batch=1, autoencoder=None):
  """Zero model inputs of the configured shapes (for init and FLOP counts)."""
  from idjax.models import dummy_inputs
  d = config.data
  frames, height, width = model_grid(config, autoencoder)
  return dummy_inputs(
      config.model, batch=batch, frames=frames, height=height, width=width,
      text_len=d.text_len, num_chars=d.max_characters, num_refs=d.num_references,
      face_embed_dim=encoder.embed_dim, face_feature_dim=encoder.feature_dim,
      face_cells=encoder.feature_cells)


def train_flops_per_step(config, encoder, autoencoder=None) -> float:
  """Analytic model FLOPs of one train step (forward x 3 for forward + backward);
  the frozen autoencoder's encode/decode are not counted."""
  from idjax.models import forward_flops
  d = config.data
  frames, height, width = model_grid(config, autoencoder)
  return 3.0 * forward_flops(
      config.model, config.train.batch_size, frames, height, width,
      d.text_len, d.max_characters, d.num_references, face_embed_dim=encoder.embed_dim,
      face_feature_dim=encoder.feature_dim, face_cells=encoder.feature_cells)


def host_value(x):
  """A replicated array's value on this host (works when other processes hold
  devices of the mesh too, where device_get would refuse)."""
  return np.asarray(x.addressable_data(0))


def fetch(tree):
  """Host values of a tree of replicated arrays: the loop's only device -> host
  reads, made at sync steps (tests count its calls)."""
  return jax.tree.map(host_value, tree)


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
    lines.append(f"{name:<{width}}  {count:>14,}  {count / max(total, 1):>6.1%}  "
                 f"{size / 2**20:>9.2f}")
  return "\n".join(lines)


def put_replicated(tree, mesh):
  """Host values (the same on every process) -> arrays replicated over `mesh`."""
  replicated = sharding.replicated(mesh)
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated, lambda idx: x[idx])
  return jax.tree.map(put, tree)


@dataclasses.dataclass
class Setup:
  """The compiled pieces of a run on one mesh.

  abstract_state: TrainState of ShapeDtypeStruct with shardings (for restore).
  init(): a fresh state, created sharded (params never exist unsharded).
  frozen: the frozen networks' params, replicated over the mesh
    (dict(face=..., autoencoder=... or None)).
  step(state, batch, frozen): the jitted, donating train step; call it
    inside `activation_sharding` (done by `run_step`).
  jitted(batch): the underlying jax.jit object (for lower / compile / cost).
  """
  config: object
  mesh: object
  abstract_state: object
  state_shardings: object
  init: object
  frozen: object
  step: object
  jitted: object

  def run_step(self, state, batch, frozen=None):
    with sharding.activation_sharding(self.mesh, self.config.sharding.rules):
      return self.step(state, batch, self.frozen if frozen is None else frozen)


def make_setup(config, model, encoder, mesh, autoencoder=None) -> Setup:
  rules = config.sharding.rules
  tx, _ = make_optimizer(config.train)

  def init_boxed():
    key = derive(config.seed, 0, "init")
    variables = model.init({"params": key, "dropout": key},
                           *model_inputs(config, encoder, autoencoder=autoencoder))
    return create_state(variables["params"], tx, config.seed)

  boxed = jax.eval_shape(init_boxed)
  state_shardings = sharding.tree_shardings(nn.get_partition_spec(boxed), mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), state_shardings)
  init = jax.jit(lambda: nn.unbox(init_boxed()), out_shardings=state_shardings)

  def batch_shardings(batch):
    return {k: sharding.batch_sharding(mesh, jnp.ndim(v), rules) for k, v in batch.items()}

  step_fn = make_train_step(config, model, encoder, autoencoder)
  replicated = sharding.replicated(mesh)
  frozen = put_replicated(dict(face=encoder.params,
                               autoencoder=None if autoencoder is None else autoencoder.params), mesh)
  compiled = {}

  def jitted(batch):
    """The jitted step for batches with these keys (lower/compile it for analysis)."""
    signature = tuple(sorted((k, jnp.ndim(v)) for k, v in batch.items()))
    if signature not in compiled:
      compiled[signature] = jax.jit(
          step_fn, in_shardings=(state_shardings, batch_shardings(batch), replicated),
          out_shardings=(state_shardings, replicated), donate_argnums=(0,))
    return compiled[signature]

  def step(state, batch, frozen):
    return jitted(batch)(state, batch, frozen)

  return Setup(config, mesh, abstract, state_shardings, init, frozen, step, jitted)


class _StopFlag:
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


def _start_state(workdir, config, manager, setup):
  """The newest readable checkpoint's state (refusing an incompatible one
  before touching it; unreadable newer steps are moved aside to
  checkpoints/bad-<step>) or a fresh one; then records the config."""
  config_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  state = None
  if manager.all_steps():
    if os.path.isfile(config_path):
      checkpoint.check_compatible(checkpoint.read_saved_config(config_path), config)
    _, state = checkpoint.restore_newest(
        manager, lambda step: checkpoint.restore(manager, step, setup.abstract_state),
        move_aside=True)
  if state is None:
    state = setup.init()
  if jax.process_index() == 0:
    configlib.save_config(config, config_path)
  return state


def _write_samples(config, workdir, step, num=2):
  """Samples of held-out identities (from the latest checkpoint) as GIF + contact
  sheet in WORKDIR/samples; the references are world renders, the boxes the
  clip's own, so the face is placed where the real clip has it."""
  if jax.process_count() > 1 or jax.process_index() != 0:
    return  # The Generator is single-controller; multi-host runs sample with sample.py.
  from idjax.data.pipeline import world_config
  from idjax.data.world import render_clip
  from idjax.sampling.generator import Generator
  from idjax.sampling import video_io
  # Rendered at the sampling length (which may exceed the trained one), so
  # the real clips' box trajectories have one box per generated frame.
  frames = int(config.sample.num_frames)
  world = dataclasses.replace(world_config(config.data), num_frames=frames)
  clips = [render_clip(world, config.data.seed + 1, i, split="heldout") for i in range(num)]
  prompts = [c["prompt"] for c in clips]
  references = [[list(c["references"][j]) for j in range(len(c["references"]))
                 if c["character_valid"][j]] for c in clips]
  layout = [[c["boxes"][j] for j in range(len(c["boxes"])) if c["character_valid"][j]]
            for c in clips]
  out = Generator.from_workdir(workdir).generate(
      prompts, references, num_frames=frames, layout=layout, seed=step, progress=False)
  folder = os.path.join(workdir, "samples")
  os.makedirs(folder, exist_ok=True)
  for i, frames in enumerate(out["frames"]):
    video_io.write_gif(os.path.join(folder, f"step{step:07d}_{i}.gif"), frames)
    refs = [r for character in references[i] for r in character]
    video_io.write_png(os.path.join(folder, f"step{step:07d}_{i}.png"),
                       video_io.contact_sheet(frames, refs))


# jnp.maximum over two replicated scalars, jitted once (cached on shapes).
_maximum = jax.jit(jnp.maximum)


class _Profiler:
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
        print(f"Profile of steps {self.first}..{self.stop} written to {self.folder}",
              file=sys.stderr, flush=True)


def train(config, workdir, *, model=None, encoder=None, autoencoder=None, batches=None,
          stop_at=None, progress=True, sample_hook=_write_samples, profile_steps=None) -> dict:
  """Trains (or resumes) the video model in `workdir`; returns the last metrics.

  `stop_at`: leave after that step with a checkpoint, as a preemption would
  (time-boxed jobs; the resume tests). `sample_hook(config, workdir, step)`
  writes samples every train.sample_every steps and at the end (None: off).
  `profile_steps=(start, stop)`: a jax.profiler trace of the steps after step
  `start` up to step `stop`, in WORKDIR/profile (for TensorBoard or Perfetto).

  `model`, `encoder`, `autoencoder` (latent space only) and `batches`
  (anything with `batch_at(step)`) default to those the config names; tests
  pass small ones.

  The loop reads metrics back to the host only at sync steps: every
  train.log_every steps, and before a checkpoint, a sample or a stop, so that
  steps are dispatched asynchronously in between. Raises TrainingDiverged
  when a sync step finds that train.max_nonfinite_steps steps in a row had a
  non-finite loss or gradient since the last one (the longest run is tracked
  on the device), before any checkpoint of the later steps is written.
  """
  from idjax.models import build_model

  tc = config.train
  config_rules.check(config, num_devices=jax.device_count())
  workdir = paths.check_folder(workdir, "--workdir")
  os.makedirs(workdir, exist_ok=True)
  encoder = encoder if encoder is not None else load_face_encoder(config)
  if autoencoder is None:
    autoencoder = load_autoencoder(config)
  else:
    check_latent_space(config, autoencoder)
  model = model if model is not None else build_model(config.model)
  mesh = build_mesh(config)
  batch_axis = sharding.batch_axis_size(mesh, config.sharding.rules)
  if tc.batch_size % (batch_axis * tc.grad_accum):
    raise configlib.UsageError(
        f"train.batch_size={tc.batch_size} must divide by the {batch_axis} batch shards "
        f"times train.grad_accum={tc.grad_accum}.")

  setup = make_setup(config, model, encoder, mesh, autoencoder)
  if jax.process_index() == 0:
    print(f"Video model parameters:\n{param_table(setup.abstract_state.params)}", flush=True)
  manager = checkpoint.make_manager(workdir, tc)
  state = _start_state(workdir, config, manager, setup)
  if batches is None:
    from idjax.data.pipeline import GlobalBatches, make_source
    batches = GlobalBatches(make_source(config.data), global_batch_size=tc.batch_size,
                            seed=config.data.seed, mesh=mesh, rules=config.sharding.rules,
                            text_len=config.data.text_len)
  flops = train_flops_per_step(config, encoder, autoencoder)
  writer = MetricsWriter(workdir)
  step = int(host_value(state.step))
  bar = _progress(step, tc.steps, progress and jax.process_index() == 0)
  watchdog, last = None, {}
  tick, tick_step = time.perf_counter(), step
  # The longest run of non-finite steps since the last sync, kept on the device.
  longest, skipped_before = None, int(host_value(state.skipped))
  synced_at = step
  profiler = _Profiler(workdir, profile_steps)
  try:
    with _StopFlag() as stop:
      batch = batches.batch_at(step)
      while step < tc.steps:
        profiler.before_step(step)
        state, metrics = setup.run_step(state, batch)
        step += 1
        run = metrics["nonfinite"]  # consecutive non-finite steps up to this one
        longest = run if longest is None else _maximum(longest, run)
        # The step runs asynchronously: render the next batch meanwhile.
        batch = batches.batch_at(step) if step < tc.steps else None
        profiler.after_step(step, state)
        if watchdog:
          watchdog.beat()
        elif jax.process_count() > 1:  # started after the first (compiling) step
          watchdog = Watchdog(tc.heartbeat_timeout_s)
        bar.update(1)
        stopping = stop.signal is not None or step == stop_at
        saving = step % tc.checkpoint_every == 0 or step == tc.steps
        sampling = bool(tc.sample_every and step % tc.sample_every == 0) or step == tc.steps
        log = step % tc.log_every == 0 or step == tc.steps
        if not (stopping or saving or sampling or log):
          continue
        # A sync step: the only place the loop waits for the device, for the
        # steps dispatched since the last one (the watchdog allows each its time).
        if watchdog:
          watchdog.beat(steps=step - synced_at)
        values = fetch(dict(metrics, longest_nonfinite_run=longest))
        run = int(values.pop("longest_nonfinite_run"))
        longest, synced_at = None, step
        if run >= tc.max_nonfinite_steps:
          raise TrainingDiverged(
              f"{run} consecutive steps had a non-finite loss or gradient (found at step "
              f"{step}); stopped. The last good checkpoint is kept in {workdir}/checkpoints.")
        skipped = int(values["skipped"])
        if skipped > skipped_before:
          bar.write(f"steps to {step}: {skipped - skipped_before} non-finite loss or gradient, "
                    f"update skipped (at most {run} in a row)")
        skipped_before = skipped
        if log:
          now = time.perf_counter()
          rate = (step - tick_step) / max(now - tick, 1e-9)
          tick, tick_step = now, step
          last = {k: float(v) for k, v in values.items()}
          last.update(steps_per_s=rate, model_tflops_per_s=flops * rate / 1e12)
          writer.write(step, last)
          bar.set_postfix(loss=f"{last['loss']:.4f}", steps_per_s=f"{rate:.2f}")
        if stopping:
          checkpoint.save(manager, state, force=True)
          break
        if saving:
          checkpoint.save(manager, state)
        if sampling:
          manager.wait_until_finished()
          if sample_hook:
            sample_hook(config, workdir, step)
  finally:
    profiler.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    bar.close()
    if watchdog:
      watchdog.stop()
  return dict(last, step=step)


def _progress(initial, total, enabled):
  from tqdm import tqdm
  return tqdm(initial=initial, total=total, disable=not enabled, dynamic_ncols=True,
              file=sys.stderr)
