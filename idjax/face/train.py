"""Trains a face encoder with ArcFace on the synthetic world's identities.

Reads top to bottom: render and cache face crops of a fixed pool of training
identities -> mesh -> sharded init -> a short pure train step (crop the
jittered boxes, ArcFace loss, the guarded AdamW update of `idjax.train.state`)
-> the training loop the video model uses (`idjax.train.loop`: checkpoints
and resume, the metrics writer, the progress bar) -> save -> verification on
held-out identities.

Every batch is a function of (seed, step) alone: its examples and box jitter
are drawn on the host from them, so a resumed run sees the batches an
uninterrupted one would, and ends bit-identical to it.

The encoder must recognise faces both as frame crops (what the identity loss
and the metrics see) and as reference portraits (what conditioning sees), at
32 and 64 pixel clips, so all four kinds of image are in the training set.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from idjax import configlib, rng, sharding
from idjax.data import world
from idjax.face import arcface
from idjax.face.boxes import context_boxes, jittered_boxes
from idjax.face.crop import crop_and_resize
from idjax.face.encoder import encoder_from_config
from idjax.face.frozen import FrozenFaceEncoder, save_face_encoder
from idjax.face.verification import run_verification
from idjax.train import loop
from idjax.train.state import apply_gradients, create_state, make_optimizer

# The loop settings the face-encoder configs leave out (they set steps and
# log_every); a config that sets one of these keys overrides it.
LOOP_DEFAULTS = dict(checkpoint_every=200, keep_checkpoints=2, max_nonfinite_steps=5,
                     heartbeat_timeout_s=100)


def build_training_set(config):
  """Renders and caches the training images.

  Returns:
    images uint8 [M, P, P, 3], each a face box enlarged by `config.context`
      (P = round(input_size * context)), so jittered boxes stay inside;
    labels int32 [M] in [0, num_train_identities).
  """
  size = int(round(config.input_size * config.context))
  ids = world.split_identities("train", config.num_train_identities,
                               config.get("identity_start", 0))
  images, labels = [], []
  for resolution in config.resolutions:
    cfg = world.WorldConfig(
        resolution=resolution, num_frames=config.frames_per_clip,
        max_characters=1, min_characters=1,
        num_references=config.references_per_clip,
        reference_resolution=resolution)
    pictures, boxes, owners = [], [], []
    for label, identity in enumerate(ids):
      for clip_index in range(config.clips_per_identity):
        index = (label * config.clips_per_identity + clip_index) * 1000 + resolution
        clip = world.render_clip(cfg, config.render_seed, index, split="train",
                                 identity_ids=[int(identity)])
        pictures.extend(clip["frames"])
        boxes.extend(clip["boxes"][0])
        # References are framed exactly like a box crop: their box is the image.
        pictures.extend(clip["references"][0])
        boxes.extend([np.array([0, 0, 1, 1], np.float32)] * config.references_per_clip)
        owners.extend([label] * (config.frames_per_clip + config.references_per_clip))
    crops = _crop_in_chunks(np.stack(pictures),
                            context_boxes(np.stack(boxes), config.context), size)
    images.append(crops)
    labels.append(np.asarray(owners, np.int32))
  return np.concatenate(images), np.concatenate(labels)


def _crop_in_chunks(pictures, boxes, size, chunk=1024):
  crop = jax.jit(crop_and_resize, static_argnums=2)
  out = []
  for start in range(0, len(pictures), chunk):
    crops = crop(pictures[start:start + chunk], boxes[start:start + chunk], size)
    out.append(np.clip(np.round(np.asarray(crops)), 0, 255).astype(np.uint8))
  return np.concatenate(out)


class Batches:
  """Batch `step` of the cached training set: `batch_size` examples drawn
  with replacement, and their jittered face boxes, from (seed, step); laid
  out over the mesh's batch axis (dict of images uint8 [B, P, P, 3], boxes
  float32 [B, 4], labels int32 [B])."""

  def __init__(self, config, images, labels, mesh):
    self.config, self.images, self.labels, self.mesh = config, images, labels, mesh

  def host_batch_at(self, step):
    c = self.config
    generator = np.random.default_rng([c.seed, step, rng.purpose_id("face_batch")])
    index = generator.integers(0, len(self.labels), c.batch_size)
    boxes = jittered_boxes(generator, c.batch_size, c.context, c.box_jitter)
    return dict(images=self.images[index], boxes=boxes, labels=self.labels[index])

  def batch_at(self, step):
    return loop.put_batch(self.host_batch_at(step), self.mesh)


def make_train_step(config, encoder, head, tx, schedule):
  """train_step(state, batch) -> (state, metrics): crops at the jittered
  boxes, ArcFace loss, guarded update."""

  def loss_fn(params, crops, labels):
    emb, _ = encoder.apply({"params": params["encoder"]}, crops)
    cosines = head.apply({"params": params["head"]}, emb)
    return arcface.arcface_loss(cosines, labels, config.margin, config.scale)

  def train_step(state, batch):
    crops = crop_and_resize(batch["images"], batch["boxes"], config.input_size) / 127.5 - 1.0
    loss, grads = jax.value_and_grad(loss_fn)(state.params, crops, batch["labels"])
    new_state, metrics = apply_gradients(state, tx, grads, loss)
    return new_state, dict(metrics, loss=loss, lr=schedule(state.step))

  return train_step


def fit(config, images, labels, workdir, *, mesh=None, stop_at=None, progress=True,
        profile_steps=None):
  """Trains encoder + ArcFace head on cached images in `workdir` (resuming
  from its newest checkpoint, if any).

  Args:
    config: a face-encoder config.
    images: uint8 [M, P, P, 3] context crops (see `build_training_set`).
    labels: int32 [M] class labels in [0, max(labels)].
    workdir: checkpoints/, metrics.jsonl and events/ go here.
    mesh: default every device on the `data` axis (the encoder is small:
      params replicated, the batch split).
    stop_at, progress, profile_steps: as `idjax.train.loop.run`.

  Returns:
    (encoder params on the host, or None when stopped before config.steps;
    the loop's last metrics, with `step`).
  """
  mesh = mesh if mesh is not None else sharding.make_mesh()
  rules = sharding.DEFAULT_RULES
  ways = sharding.batch_axis_size(mesh, rules)
  if config.batch_size % ways:
    raise configlib.UsageError(
        f"batch_size={config.batch_size} must divide by the {ways} batch shards of the mesh.")
  encoder = encoder_from_config(config)
  head = arcface.ArcFaceHead(int(labels.max()) + 1)
  tx, schedule = make_optimizer(config)
  key = rng.derive(config.seed, 0, "face_init")
  size = config.input_size

  def init_boxed():
    params = dict(
        encoder=encoder.init(jax.random.fold_in(key, 0), jnp.zeros((1, size, size, 3)))["params"],
        head=head.init(jax.random.fold_in(key, 1), jnp.zeros((1, config.embed_dim)))["params"])
    return create_state(params, tx, config.seed, ema=False)

  init, abstract, shardings = loop.sharded_init(init_boxed, mesh, rules)
  if jax.process_index() == 0:
    print(f"Face encoder parameters:\n{loop.param_table(abstract.params)}", flush=True)
  batches = Batches(config, images, labels, mesh)
  batch_shardings = jax.tree.map(lambda x: sharding.batch_sharding(mesh, x.ndim, rules),
                                 batches.host_batch_at(0))
  step = jax.jit(make_train_step(config, encoder, head, tx, schedule),
                 in_shardings=(shardings, batch_shardings),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))

  def run_step(state, batch):
    with sharding.activation_sharding(mesh, rules):
      return step(state, batch)

  state, metrics = loop.run(
      config, workdir, init=init, abstract_state=abstract, step_fn=run_step, batches=batches,
      settings=loop.Settings.from_config(config, **LOOP_DEFAULTS), stop_at=stop_at,
      progress=progress, desc="face encoder", profile_steps=profile_steps)
  if metrics["step"] < config.steps:
    return None, metrics
  return jax.tree.map(loop.host_value, state.params["encoder"]), metrics


def verify(encoder: FrozenFaceEncoder, config) -> dict:
  """Held-out verification at each of `config.verification.resolutions`."""
  threshold_start = config.get("identity_start", 0) + config.num_train_identities
  return {
      int(resolution): run_verification(
          encoder.embed_uint8, crop_size=config.input_size,
          resolution=int(resolution),
          num_identities=config.verification.num_identities,
          seed=config.verification.seed + int(resolution),
          threshold_start=threshold_start)
      for resolution in config.verification.resolutions}


def train_face_encoder(config, workdir, *, stop_at=None, progress=True,
                       profile_steps=None) -> dict:
  """Renders data, trains (or resumes), saves to `workdir`, verifies; returns metrics.

  Metrics: step, final_loss, render_seconds, train_seconds, and per
  verification resolution r: heldout_accuracy_r, heldout_auc_r (also in
  WORKDIR/verification.json with the fitted thresholds). A run stopped before
  config.steps (`stop_at`, SIGTERM) leaves its checkpoint and returns only
  `step` and the loop's metrics; running again resumes it.
  """
  done = os.path.join(workdir, "verification.json")
  if os.path.exists(done):
    # Like the video trainer resuming a finished run: never retrain over (and
    # so overwrite) an encoder that other runs may already depend on.
    with open(done) as f:
      results = json.load(f)
    print(f"face encoder in {workdir} is already trained (delete the folder to retrain): "
          + ", ".join(f"{r}x{r} held-out accuracy {m['accuracy']:.4f}" for r, m in results.items()),
          flush=True)
    return {f"heldout_accuracy_{r}": m["accuracy"] for r, m in results.items()}
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  images, labels = build_training_set(config)
  render_seconds = time.perf_counter() - start
  print(f"face encoder: {len(images)} training crops of "
        f"{config.num_train_identities} identities rendered in "
        f"{render_seconds:.1f}s", flush=True)

  start = time.perf_counter()
  params, trained = fit(config, images, labels, workdir, stop_at=stop_at, progress=progress,
                        profile_steps=profile_steps)
  train_seconds = time.perf_counter() - start
  if params is None:
    print(f"face encoder stopped at step {trained['step']} of {config.steps}; run again to "
          "resume.", flush=True)
    return trained
  save_face_encoder(workdir, config, params)

  start = time.perf_counter()
  results = verify(FrozenFaceEncoder(config, params), config)
  verify_seconds = time.perf_counter() - start
  with open(done, "w") as f:
    json.dump({str(r): v for r, v in results.items()}, f, indent=2)

  metrics = dict(step=trained["step"], render_seconds=render_seconds,
                 train_seconds=train_seconds, verify_seconds=verify_seconds)
  if "loss" in trained:  # absent when a finished run only resumed to save and verify
    metrics["final_loss"] = trained["loss"]
  print(f"face encoder trained to step {trained['step']} in {train_seconds:.1f}s"
        + (f" (arcface loss {trained['loss']:.4f})" if "loss" in trained else ""), flush=True)
  for resolution, result in results.items():
    metrics[f"heldout_accuracy_{resolution}"] = result["accuracy"]
    metrics[f"heldout_auc_{resolution}"] = result["auc"]
    print(f"face encoder verification at {resolution}x{resolution}: held-out "
          f"accuracy {result['accuracy']:.4f}, AUC {result['auc']:.4f} "
          f"({result['num_pairs']} pairs; train-fitted threshold "
          f"{result['threshold']:.3f})", flush=True)
  return metrics
