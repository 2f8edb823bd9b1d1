"""The video-model trainer: mesh -> sharded init -> jitted step -> the loop.

Reads top to bottom like big_vision's trainer. The loop itself (resume,
metrics, checkpoints, hooks, signals) is `loop.run`, shared with the face
encoder's trainer; the step (`step.py`) is pure. Periodic samples are a hook
that train.py passes in (`idjax.sampling.hooks`), so training never imports
sampling.
"""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp

from idjax import config_rules, configlib, models, paths, restore, sharding
from idjax.autoencoder.frozen import FrozenAutoencoder
from idjax.data import text_embeddings
from idjax.data.pipeline import GlobalBatches, make_source
from idjax.face.frozen import FrozenFaceEncoder
from idjax.models.wan.identity_dit import dummy_text_embeddings
from idjax.rng import derive
from idjax.train import checkpoint, loop
from idjax.train.state import create_state, make_optimizer, trainable_filter
from idjax.train.step import make_train_step


def build_mesh(config, devices=None):
  dcn = dict(config.get("dcn_mesh", {}) or {})
  use_dcn = math.prod(int(v) for v in dcn.values()) > 1 if dcn else False
  try:
    return sharding.make_mesh(dict(config.mesh), devices, dcn if use_dcn else None)
  except ValueError as e:
    raise configlib.UsageError(f"{e}") from e


def load_face_encoder(config):
  """The frozen encoder named by config.face_encoder_workdir (UsageError if absent)."""
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
  """UsageError unless the model's channels match the autoencoder's latents
  and the clip's sizes are ones it encodes: data.resolution a multiple of its
  spatial factor, data.num_frames and sample.num_frames of the form 1 + f k
  for its temporal factor f > 1 (the Wan VAE: 1, 5, 9, ...)."""
  if int(config.model.channels) != autoencoder.latent_channels:
    raise configlib.UsageError(
        f"config.model.channels={config.model.channels} but the autoencoder in "
        f"{config.get('autoencoder_workdir')!r} makes {autoencoder.latent_channels}-channel latents.")
  side = int(config.data.resolution)
  try:
    autoencoder.latent_shape(1, side, side)
  except ValueError as e:  # the frame size is not a multiple of the spatial factor
    raise configlib.UsageError(f"config.data.resolution={side}: {e}") from e
  f = autoencoder.temporal_factor
  for key in ("data.num_frames", "sample.num_frames"):
    frames = config_rules.lookup(config, key, None)
    if frames is not None and (int(frames) < 1 or (int(frames) - 1) % f):
      raise configlib.UsageError(
          f"config.{key}={frames}, but the autoencoder in {config.get('autoencoder_workdir')!r} "
          f"encodes frame 0 alone and then {f} frames per latent frame, so clips have 1 + {f}k "
          f"frames ({', '.join(str(1 + f * k) for k in range(4))}, ...).")


def model_grid(config, autoencoder=None):
  """(frames, height, width) of what the model diffuses: the clip, or its latents."""
  d = config.data
  if autoencoder is None:
    return int(d.num_frames), int(d.resolution), int(d.resolution)
  return autoencoder.latent_shape(int(d.num_frames), int(d.resolution), int(d.resolution))[:3]


def model_inputs(config, encoder, batch=1, autoencoder=None):
  """Zero model inputs of the configured shapes (for init and FLOP counts)."""
  d = config.data
  frames, height, width = model_grid(config, autoencoder)
  return models.dummy_inputs(
      config.model, batch=batch, frames=frames, height=height, width=width,
      text_len=d.text_len, num_chars=d.max_characters, num_refs=d.num_references,
      face_embed_dim=encoder.embed_dim, face_feature_dim=encoder.feature_dim,
      face_cells=encoder.feature_cells)


def train_flops_per_step(config, encoder, autoencoder=None) -> float:
  """Analytic model FLOPs of one train step (forward x 3 for forward + backward);
  the frozen autoencoder's encode/decode are not counted."""
  d = config.data
  frames, height, width = model_grid(config, autoencoder)
  return 3.0 * models.forward_flops(
      config.model, config.train.batch_size, frames, height, width,
      d.text_len, d.max_characters, d.num_references, face_embed_dim=encoder.embed_dim,
      face_feature_dim=encoder.feature_dim, face_cells=encoder.feature_cells)


def init_from_workdir(setup, workdir, trainable):
  """`init` for a fine-tuning run: a fresh state (step 0, new optimizer
  state) whose params and EMA are the EMA params of another video workdir's
  newest checkpoint, laid out as the setup's state. UsageError (one
  sentence) when that workdir holds no checkpoint or its params do not fit
  this model (e.g. another width)."""
  source = os.path.abspath(workdir)
  tx, _ = make_optimizer(setup.config.train)
  fresh = jax.jit(lambda p: create_state(p, tx, setup.config.seed, trainable=trainable),
                  out_shardings=setup.state_shardings)

  def init():  # called only by a run that has no checkpoint of its own
    if not os.path.isdir(source):
      raise configlib.UsageError(f"train.init_from {source} is not a folder (a video workdir).")
    step, params = restore.restore_ema(source, setup.abstract_state.params)
    print(f"Starting from the EMA params of {source} (step {step}).", flush=True)
    return fresh(params)

  return init


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
  # Configs saved before the key existed trained everything (config_rules.ABSENT_AS).
  trainable = trainable_filter(config.train.get("trainable", "all"), model)

  def init_boxed():
    key = derive(config.seed, 0, "init")
    variables = model.init({"params": key, "dropout": key},
                           *model_inputs(config, encoder, autoencoder=autoencoder),
                           **dummy_text_embeddings(model, 1, int(config.data.text_len)))
    return create_state(variables["params"], tx, config.seed, trainable=trainable)

  init, abstract, state_shardings = loop.sharded_init(init_boxed, mesh, rules)

  def batch_shardings(batch):
    return {k: sharding.batch_sharding(mesh, jnp.ndim(v), rules) for k, v in batch.items()}

  step_fn = make_train_step(config, model, encoder, autoencoder)
  replicated = sharding.replicated(mesh)
  frozen = loop.put_replicated(dict(face=encoder.params,
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


def train(config, workdir, *, model=None, encoder=None, autoencoder=None, batches=None,
          stop_at=None, progress=True, hooks=(), profile_steps=None) -> dict:
  """Trains (or resumes) the video model in `workdir`; returns the last metrics.

  `stop_at`, `hooks` (e.g. periodic samples) and `profile_steps` are those
  of `loop.run`. `model`, `encoder`, `autoencoder` (latent space only) and
  `batches` (anything with `batch_at(step)`) default to those the config
  names; tests pass small ones. Raises loop.TrainingDiverged (see `loop.run`).
  """
  tc = config.train
  config_rules.check(config, num_devices=jax.device_count())
  workdir = paths.check_folder(workdir, "--workdir")
  os.makedirs(workdir, exist_ok=True)
  encoder = encoder if encoder is not None else load_face_encoder(config)
  if autoencoder is None:
    autoencoder = load_autoencoder(config)
  else:
    check_latent_space(config, autoencoder)
  model = model if model is not None else models.build_model(config.model)
  mesh = build_mesh(config)
  batch_axis = sharding.batch_axis_size(mesh, config.sharding.rules)
  if tc.batch_size % (batch_axis * tc.grad_accum):
    raise configlib.UsageError(
        f"train.batch_size={tc.batch_size} must divide by the {batch_axis} batch shards "
        f"times train.grad_accum={tc.grad_accum}.")

  setup = make_setup(config, model, encoder, mesh, autoencoder)
  if jax.process_index() == 0:
    print(f"Video model parameters:\n{loop.param_table(setup.abstract_state.params)}", flush=True)
    if tc.get("trainable", "all") != "all":
      count = lambda tree: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))
      print(f"Trained (train.trainable={tc.trainable!r}): "
            f"{count(setup.abstract_state.ema_params):,} of "
            f"{count(setup.abstract_state.params):,} parameters.", flush=True)
  if batches is None:
    try:
      source = make_source(config.data)
    except ValueError as e:  # data.* values that name no data (one sentence)
      raise configlib.UsageError(f"{e}") from e
    batches = GlobalBatches(source, global_batch_size=tc.batch_size,
                            seed=config.data.seed, mesh=mesh, rules=config.sharding.rules,
                            text_len=config.data.text_len,
                            text_embeddings=text_embeddings.for_config(config))
  init = setup.init
  if tc.get("init_from", ""):
    init = init_from_workdir(setup, tc.init_from, trainable_filter(tc.trainable, model))
  _, metrics = loop.run(
      config, workdir, init=init, abstract_state=setup.abstract_state,
      step_fn=setup.run_step, batches=batches, settings=loop.Settings.from_config(tc),
      check_compatible=checkpoint.check_compatible, hooks=hooks, stop_at=stop_at,
      progress=progress, flops_per_step=train_flops_per_step(config, encoder, autoencoder),
      profile_steps=profile_steps)
  return metrics
