"""Trains a face encoder with ArcFace on the synthetic world's identities.

Reads top to bottom: render and cache face crops of a fixed pool of training
identities -> init -> a short pure train step (crop the jittered boxes,
ArcFace loss, AdamW; batch indices and jitter are drawn on the host from
(seed, step)) -> loop -> save -> verification on held-out identities.

The encoder must recognise faces both as frame crops (what the identity loss
and the metrics see) and as reference portraits (what conditioning sees), at
32 and 64 pixel clips, so all four kinds of image are in the training set.
"""

import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from idjax import rng
from idjax.face import arcface
from idjax.face.crop import crop_and_resize
from idjax.face.encoder import encoder_from_config
from idjax.face.frozen import FrozenFaceEncoder, save_face_encoder
from idjax.face.verification import run_verification


def context_boxes(boxes, context: float):
  """Boxes [..., 4] grown about their centres by the factor `context`."""
  boxes = np.asarray(boxes, np.float32)
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2
  half = (boxes[..., 2:] - boxes[..., :2]) / 2 * context
  return np.concatenate([centre - half, centre + half], axis=-1)


def build_training_set(config):
  """Renders and caches the training images.

  Returns:
    images uint8 [M, P, P, 3], each a face box enlarged by `config.context`
      (P = round(input_size * context)), so jittered boxes stay inside;
    labels int32 [M] in [0, num_train_identities).
  """
  from idjax.data import world  # heavy NumPy renderer, only needed here

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


def jittered_boxes(generator: np.random.Generator, batch: int, context: float,
                   jitter: float) -> np.ndarray:
  """Face boxes inside context crops: float32 [batch, 4], shifted and scaled
  by up to `jitter` of the box side."""
  side = 1.0 / context
  centre = 0.5 + generator.uniform(-jitter, jitter, (batch, 2)) * side
  half = side / 2 * (1.0 + generator.uniform(-jitter, jitter, (batch, 1)))
  return np.concatenate([centre - half, centre + half], -1).astype(np.float32)


def make_optimizer(config):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.lr, config.warmup_steps, max(config.steps, config.warmup_steps + 1))
  return optax.adamw(schedule, weight_decay=config.weight_decay)


def init_params(config, num_classes: int):
  encoder = encoder_from_config(config)
  head = arcface.ArcFaceHead(num_classes)
  crops = jnp.zeros((1, config.input_size, config.input_size, 3))
  # Compiling partitionable-threefry draws takes ~17 s per op on CPU (jax
  # 0.10) against < 1 s without; this init runs on one device, where the
  # flag changes nothing that matters.
  with jax.threefry_partitionable(False):
    key = rng.derive(config.seed, 0, "face_init")
    enc_params = jax.jit(encoder.init)(jax.random.fold_in(key, 0), crops)
    head_params = jax.jit(head.init)(jax.random.fold_in(key, 1),
                                     jnp.zeros((1, config.embed_dim)))
  return encoder, head, {"encoder": nn.unbox(enc_params)["params"],
                         "head": nn.unbox(head_params)["params"]}


def fit(config, images, labels, show_progress: bool = True):
  """Trains encoder + ArcFace head on cached images.

  Args:
    config: a face-encoder config.
    images: uint8 [M, P, P, 3] context crops (see `build_training_set`).
    labels: int32 [M] class labels in [0, max(labels)].

  Returns:
    (encoder params, list of (step, loss) logged every `log_every` steps).
  """
  encoder, head, params = init_params(config, int(labels.max()) + 1)
  optimizer = make_optimizer(config)
  opt_state = optimizer.init(params)
  images, labels = jnp.asarray(images), jnp.asarray(labels)

  def loss_fn(params, crops, batch_labels):
    emb, _ = encoder.apply({"params": params["encoder"]}, crops)
    cosines = head.apply({"params": params["head"]}, emb)
    return arcface.arcface_loss(cosines, batch_labels, config.margin, config.scale)

  @jax.jit
  def train_step(params, opt_state, images, labels, index, boxes):
    crops = crop_and_resize(images[index], boxes, config.input_size) / 127.5 - 1.0
    loss, grads = jax.value_and_grad(loss_fn)(params, crops, labels[index])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  history = []
  steps = tqdm.trange(config.steps, desc="face encoder", mininterval=5,
                      disable=not show_progress)
  for step in steps:
    # Host-side draws keyed by (seed, step): the step needs no RNG compile.
    generator = np.random.default_rng(
        [config.seed, step, rng.purpose_id("face_batch")])
    index = generator.integers(0, len(labels), config.batch_size)
    boxes = jittered_boxes(generator, config.batch_size, config.context,
                           config.box_jitter)
    params, opt_state, loss = train_step(params, opt_state, images, labels,
                                         index, boxes)
    if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
      history.append((step + 1, float(loss)))
      steps.set_postfix(loss=f"{float(loss):.3f}")
  return params["encoder"], history


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


def train_face_encoder(config, workdir) -> dict:
  """Renders data, trains, saves to `workdir`, verifies; returns metrics.

  Metrics: final_loss, render_seconds, train_seconds, and per verification
  resolution r: heldout_accuracy_r, heldout_auc_r (also in
  WORKDIR/verification.json with the fitted thresholds).
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
  params, history = fit(config, images, labels)
  train_seconds = time.perf_counter() - start
  for step, loss in history:
    print(f"face encoder step {step}: arcface loss {loss:.4f}", flush=True)
  save_face_encoder(workdir, config, params)

  start = time.perf_counter()
  results = verify(FrozenFaceEncoder(config, params), config)
  verify_seconds = time.perf_counter() - start
  with open(os.path.join(workdir, "verification.json"), "w") as f:
    json.dump({str(r): v for r, v in results.items()}, f, indent=2)

  metrics = dict(final_loss=history[-1][1], render_seconds=render_seconds,
                 train_seconds=train_seconds, verify_seconds=verify_seconds)
  for resolution, result in results.items():
    metrics[f"heldout_accuracy_{resolution}"] = result["accuracy"]
    metrics[f"heldout_auc_{resolution}"] = result["auc"]
    print(f"face encoder verification at {resolution}x{resolution}: held-out "
          f"accuracy {result['accuracy']:.4f}, AUC {result['auc']:.4f} "
          f"({result['num_pairs']} pairs; train-fitted threshold "
          f"{result['threshold']:.3f})", flush=True)
  return metrics
