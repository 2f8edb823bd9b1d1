"""Trains the video autoencoder on clips of the synthetic world.

Reads top to bottom: render a batch of clips (on the fly, addressed by
(seed, step)) -> init -> a short pure train step (noised latents,
face-weighted L1, latent-norm penalty, face-feature term under the frozen
training face encoder, adversarial term of a small patch discriminator;
AdamW) -> loop -> latent statistics -> save -> a report on held-out
identities (PSNR, face-box PSNR, FaceSim under the evaluation encoder,
high-frequency energy) and a contact sheet.
"""

import concurrent.futures
import json
import math
import os
import time

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from idjax import rng, video_io
from idjax.autoencoder.frozen import FrozenAutoencoder, abstract_params, save_autoencoder
from idjax.autoencoder.model import Autoencoder, PatchDiscriminator, autoencoder_from_config
from idjax.data import world
from idjax.eval import realism
from idjax.eval.metrics import FaceScorer
from idjax.face.crop import crop_and_resize
from idjax.face.frozen import FrozenFaceEncoder

REPORT_FILE = "report.json"
SHEET_FILE = "reconstructions.png"


def world_config(data_config, num_frames: int) -> world.WorldConfig:
  # References are never used here: render the smallest one the world allows.
  return world.WorldConfig(
      resolution=data_config.resolution, num_frames=num_frames,
      max_characters=data_config.max_characters,
      min_characters=data_config.min_characters,
      num_references=1, reference_resolution=8)


def render_clips(cfg: world.WorldConfig, seed: int, indices, split: str) -> dict:
  """Clips `indices` of the world: frames uint8 [B, T, H, W, 3], boxes
  float32 [B, C, T, 4], valid bool [B, C]."""
  clips = [world.render_clip(cfg, seed, int(i), split=split) for i in indices]
  return dict(frames=np.stack([c["frames"] for c in clips]),
              boxes=np.stack([c["boxes"] for c in clips]),
              valid=np.stack([c["character_valid"] for c in clips]))


def to_signed(frames_uint8):
  return jnp.asarray(frames_uint8, jnp.float32) / 127.5 - 1.0


def to_uint8(frames) -> np.ndarray:
  return np.clip(np.round((np.asarray(frames) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def box_mask(boxes, valid, height: int, width: int):
  """1.0 at pixels whose centre lies in a valid character's box, else 0.0.

  boxes [B, C, T, 4] (y0, x0, y1, x1 fractions), valid bool [B, C] ->
  float32 [B, T, H, W, 1].
  """
  ys = (jnp.arange(height) + 0.5) / height
  xs = (jnp.arange(width) + 0.5) / width
  b = boxes[..., None, None, :]                                  # [B, C, T, 1, 1, 4]
  inside = ((ys[:, None] >= b[..., 0]) & (ys[:, None] < b[..., 2])
            & (xs[None, :] >= b[..., 1]) & (xs[None, :] < b[..., 3]))
  inside = inside & valid[:, :, None, None, None]
  return jnp.any(inside, axis=1).astype(jnp.float32)[..., None]


def face_crops(frames, boxes, size: int):
  """Every character's face crop per frame: frames [B, T, H, W, 3], boxes
  [B, C, T, 4] -> [B, C, T, S, S, 3] (as `idjax.losses.face_embeddings` crops)."""
  return crop_and_resize(frames[:, None], boxes, size)


def make_optimizer(train_config):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, train_config.lr, train_config.warmup_steps,
      max(train_config.steps, train_config.warmup_steps + 1),
      end_value=train_config.lr * 0.05)
  return optax.chain(optax.clip_by_global_norm(train_config.grad_clip),
                     optax.adamw(schedule, weight_decay=train_config.weight_decay))


def make_disc_optimizer(train_config):
  # The usual GAN moments (beta1 0.5): the target moves as the decoder learns.
  return optax.chain(optax.clip_by_global_norm(train_config.grad_clip),
                     optax.adam(train_config.lr, b1=0.5, b2=0.9))


def init_disc_params(disc: PatchDiscriminator, config):
  frames = jnp.zeros((1, config.data.resolution, config.data.resolution, 3))
  with jax.threefry_partitionable(False):
    variables = jax.jit(disc.init)(rng.derive(config.seed, 0, "autoencoder_disc_init"), frames)
  return nn.unbox(variables)["params"]


def init_params(module: Autoencoder, config):
  s = module.spatial_factor
  frames = jnp.zeros((1, 1, config.data.resolution, config.data.resolution, 3))
  noise = jnp.zeros((1, 1, config.data.resolution // s, config.data.resolution // s,
                     module.latent_channels))
  # Partitionable-threefry draws compile slowly on CPU, and this single-device
  # init does not need them. (The face-encoder trainer, now sharded, gave this
  # up: its init compiles in ~6 s instead of ~3 s.) Dropping the flag here
  # changes the init draws, and with them the autoencoder's README numbers.
  with jax.threefry_partitionable(False):
    variables = jax.jit(module.init)(rng.derive(config.seed, 0, "autoencoder_init"),
                                     frames, noise)
  return nn.unbox(variables)["params"]


def make_loss_fn(module: Autoencoder, face: FrozenFaceEncoder, train_config):
  """loss_fn(params, frames, boxes, valid, noise) -> (loss, (metrics, recon)).

  Terms (each a mean, so weights do not depend on sizes):
    rec: L1 per pixel, pixels inside face boxes weighted 1 + face_box_weight;
    latent: mean square of the (un-noised) latents, which keeps their scale
      up against the fixed training noise;
    face: ||f(crop(x_hat)) - f(crop(x))||^2 of the unit embeddings of the
      frozen training face encoder, plus face_feature_weight x the mean
      squared difference of its feature maps (a perceptual term for the face).
  """
  tc = train_config
  size = face.input_size

  def loss_fn(params, frames, boxes, valid, noise):
    recon, latents = module.apply({"params": params}, frames, tc.latent_noise * noise)
    weight = 1.0 + tc.face_box_weight * box_mask(boxes, valid, *frames.shape[2:4])
    rec = jnp.mean(weight * jnp.abs(recon - frames)) / jnp.mean(weight)
    latent = jnp.mean(jnp.square(latents))
    loss = rec + tc.latent_weight * latent
    metrics = dict(rec=rec, latent=latent)
    if tc.face_weight == 0:
      return loss, (dict(metrics, loss=loss), recon)

    flat = lambda x: einops.rearrange(x, "b c t h w x -> (b c t) h w x")
    crops = jnp.concatenate([flat(face_crops(recon, boxes, size)),
                             flat(face_crops(frames, boxes, size))])
    emb, fmap = face.apply(face.params, crops)
    emb_r, emb_o = jnp.split(emb, 2)
    fmap_r, fmap_o = jnp.split(fmap, 2)
    emb_o, fmap_o = jax.lax.stop_gradient(emb_o), jax.lax.stop_gradient(fmap_o)
    crop_valid = einops.repeat(valid, "b c -> (b c t)", t=frames.shape[1]).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(crop_valid), 1.0)
    emb_term = jnp.sum(crop_valid * jnp.sum(jnp.square(emb_r - emb_o), -1)) / count
    fmap_term = jnp.sum(crop_valid * jnp.mean(jnp.square(fmap_r - fmap_o), (1, 2))) / count
    face_term = emb_term + tc.face_feature_weight * fmap_term

    loss = loss + tc.face_weight * face_term
    return loss, (dict(metrics, loss=loss, face_emb=emb_term, face_fmap=fmap_term), recon)

  return loss_fn


def make_train_step(loss_fn, optimizer, disc, disc_optimizer, train_config):
  """The pure step: (state, uint8 clips, noise, step) -> (state, metrics).

  state = dict(params, opt_state, disc_params, disc_opt_state). With
  gan_weight > 0 the decoder also minimises softplus(-D(x_hat)) from step
  gan_start on, and the discriminator D learns from the first step to tell
  frames from reconstructions (the non-saturating logistic GAN). Bounded on
  purpose: D sees reconstructions clipped to [-1, 1] and the decoder's
  adversarial gradient is at most D's, so a decoder cannot run off to pixel
  values that D scores without bound (the unbounded hinge form, -D(x_hat),
  diverged at weight 0.2).
  """
  tc = train_config
  gan = tc.gan_weight > 0
  flat = lambda x: einops.rearrange(x, "b t h w c -> (b t) h w c")

  def train_step(state, frames_uint8, boxes, valid, noise, step):
    frames = to_signed(frames_uint8)
    disc_params = state["disc_params"]

    def generator_loss(params):
      loss, (metrics, recon) = loss_fn(params, frames, boxes, valid, noise)
      if gan:
        fake = disc.apply({"params": disc_params}, flat(jnp.clip(recon, -1.0, 1.0)))
        adversarial = jnp.mean(jax.nn.softplus(-fake))
        loss = loss + jnp.where(step >= tc.gan_start, tc.gan_weight, 0.0) * adversarial
        metrics = dict(metrics, loss=loss, adversarial=adversarial)
      return loss, (metrics, recon)

    grads, (metrics, recon) = jax.grad(generator_loss, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    metrics["grad_norm"] = optax.global_norm(grads)
    state = dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt_state)
    if not gan:
      return state, metrics

    def disc_loss(disc_params):
      real = disc.apply({"params": disc_params}, flat(frames))
      fake = disc.apply({"params": disc_params},
                        flat(jnp.clip(jax.lax.stop_gradient(recon), -1.0, 1.0)))
      return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))

    metrics["disc"], disc_grads = jax.value_and_grad(disc_loss)(disc_params)
    updates, disc_opt_state = disc_optimizer.update(disc_grads, state["disc_opt_state"])
    return dict(state, disc_params=optax.apply_updates(disc_params, updates),
                disc_opt_state=disc_opt_state), metrics

  return jax.jit(train_step, donate_argnums=0)


def step_noise(seed: int, step: int, shape) -> np.ndarray:
  """Standard normal latent noise of `step`, drawn on the host from (seed, step)."""
  generator = np.random.default_rng([seed, step, rng.purpose_id("autoencoder_noise")])
  return generator.standard_normal(shape, np.float32)


def fit(config, show_progress: bool = True, face: FrozenFaceEncoder | None = None):
  """Trains from scratch, printing metrics every `train.log_every` steps.

  Returns (module, params, history of (step, metrics)).
  """
  dc, tc = config.data, config.train
  module = autoencoder_from_config(config.model)
  face = face or FrozenFaceEncoder.from_workdir(config.face_encoder_workdir)
  params = init_params(module, config)
  optimizer = make_optimizer(tc)
  state = dict(params=params, opt_state=optimizer.init(params), disc_params=None,
               disc_opt_state=None)
  disc, disc_optimizer = PatchDiscriminator(tuple(tc.disc_widths)), make_disc_optimizer(tc)
  if tc.gan_weight > 0:
    state["disc_params"] = init_disc_params(disc, config)
    state["disc_opt_state"] = disc_optimizer.init(state["disc_params"])
  train_step = make_train_step(make_loss_fn(module, face, tc), optimizer, disc,
                               disc_optimizer, tc)

  cfg = world_config(dc, dc.num_frames)
  s = module.spatial_factor
  noise_shape = (tc.batch_size, dc.num_frames, dc.resolution // s, dc.resolution // s,
                 module.latent_channels)

  def batch(step):
    # Clip i of step s is example s * B + i of the training stream.
    indices = range(step * tc.batch_size, (step + 1) * tc.batch_size)
    return render_clips(cfg, dc.seed, indices, "train"), step_noise(config.seed, step, noise_shape)

  history = []
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    upcoming = pool.submit(batch, 0)
    steps = tqdm.trange(tc.steps, desc="autoencoder", mininterval=5,
                        disable=not show_progress)
    for step in steps:
      clips, noise = upcoming.result()
      if step + 1 < tc.steps:   # render the next batch while this one trains
        upcoming = pool.submit(batch, step + 1)
      state, metrics = train_step(state, clips["frames"], clips["boxes"], clips["valid"],
                                  noise, step)
      if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps:
        metrics = {k: float(v) for k, v in metrics.items()}
        history.append((step + 1, metrics))
        steps.set_postfix(loss=f"{metrics['loss']:.4f}")
        tqdm.tqdm.write(f"autoencoder step {step + 1}: "
                        + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
  return module, state["params"], history


def latent_statistics(module: Autoencoder, params, config):
  """Per-channel mean and std float32 [C] of raw latents over
  `config.stats.num_clips` training clips."""
  encode = jax.jit(lambda p, x: module.apply({"params": p}, to_signed(x),
                                             method=Autoencoder.encode))
  dc = config.data
  cfg = world_config(dc, dc.num_frames)
  latents = []
  for start in range(0, config.stats.num_clips, config.stats.batch_size):
    indices = range(config.stats.index_start + start,
                    config.stats.index_start + min(start + config.stats.batch_size,
                                                   config.stats.num_clips))
    clips = render_clips(cfg, dc.seed, indices, "train")
    latents.append(np.asarray(encode(params, clips["frames"]), np.float64))
  flat = np.concatenate([z.reshape(-1, z.shape[-1]) for z in latents])
  return flat.mean(0).astype(np.float32), flat.std(0).astype(np.float32)


def model_summary(config) -> dict:
  """Parameter counts and XLA's FLOP count of encode and decode per frame
  of an autoencoder config (nothing is initialised or compiled)."""
  module = autoencoder_from_config(config.model)
  c, resolution = module.latent_channels, config.data.resolution
  autoencoder = FrozenAutoencoder(config, abstract_params(module), np.zeros(c), np.ones(c))
  frames = jax.ShapeDtypeStruct((1, 1, resolution, resolution, 3), jnp.float32)
  latents = jax.ShapeDtypeStruct((1,) + autoencoder.latent_shape(1, resolution, resolution),
                                 jnp.float32)
  flops = lambda f, x: jax.jit(f).lower(autoencoder.params, x).cost_analysis()["flops"]
  count = lambda tree: int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
  return dict(encoder_params=count(autoencoder.params["encoder"]),
              decoder_params=count(autoencoder.params["decoder"]),
              encode_mflops_per_frame=flops(autoencoder.encode, frames) / 1e6,
              decode_mflops_per_frame=flops(autoencoder.decode, latents) / 1e6)


def psnr(a, b, mask=None) -> float:
  """PSNR (dB, peak 255) of uint8 images a vs b, over `mask` pixels if given."""
  err = np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  if mask is not None:
    mask = np.broadcast_to(np.asarray(mask, np.float64), err.shape)
    mse = np.sum(err * mask) / max(np.sum(mask), 1.0)
  else:
    mse = np.mean(err)
  return float(10.0 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def evaluate(autoencoder: FrozenAutoencoder, eval_encoder: FrozenFaceEncoder, config):
  """Reconstructs held-out clips; returns (report dict, contact sheet uint8).

  Report: mean per-frame PSNR over the whole frame and inside the face boxes;
  FaceSim = cosine, under the evaluation encoder, between the face crop of a
  reconstruction and of its original (1.0 is perfect), with its floor: the
  same between originals of different held-out identities; high-frequency
  energy of reconstructions over originals per region (< 1: blurred).
  """
  ec = config.eval
  cfg = world_config(config.data, ec.num_frames)
  encode = jax.jit(autoencoder.encode)
  decode = jax.jit(autoencoder.decode)
  originals, recons, boxes, valid = [], [], [], []
  for start in range(0, ec.num_clips, ec.batch_size):
    clips = render_clips(cfg, ec.seed, range(start, min(start + ec.batch_size, ec.num_clips)),
                         "heldout")
    latents = encode(autoencoder.params, to_signed(clips["frames"]))
    recons.append(to_uint8(decode(autoencoder.params, latents)))
    originals.append(clips["frames"])
    boxes.append(clips["boxes"])
    valid.append(clips["valid"])
  originals, recons = np.concatenate(originals), np.concatenate(recons)
  boxes, valid = np.concatenate(boxes), np.concatenate(valid)
  n, t, h, w = originals.shape[:4]

  masks = np.asarray(box_mask(jnp.asarray(boxes), jnp.asarray(valid), h, w))
  frame_psnr = [psnr(o, r) for o, r in zip(originals.reshape(n * t, h, w, 3),
                                           recons.reshape(n * t, h, w, 3))]
  face_psnr = [psnr(o, r, m) for o, r, m in zip(originals.reshape(n * t, h, w, 3),
                                                recons.reshape(n * t, h, w, 3),
                                                masks.reshape(n * t, h, w, 1))
               if m.any()]

  scorer = FaceScorer(eval_encoder)
  char_clip, char = np.nonzero(valid)                        # every present character
  crop_boxes = boxes[char_clip, char].reshape(-1, 4)         # [K * T, 4]
  repeat = lambda x: x[char_clip].reshape(-1, h, w, 3)
  emb_o = scorer.embed_crops(repeat(originals), crop_boxes).reshape(len(char_clip), t, -1)
  emb_r = scorer.embed_crops(repeat(recons), crop_boxes).reshape(len(char_clip), t, -1)
  unit = lambda e: e / np.linalg.norm(e, axis=-1, keepdims=True)
  face_sim = np.sum(unit(emb_o) * unit(emb_r), -1)            # [K, T]
  floor = np.sum(unit(emb_o) * unit(np.roll(emb_o, 1, axis=0)), -1)

  frame_boxes = einops.rearrange(np.where(valid[:, :, None, None], boxes, 0.0),
                                 "n c t x -> n t c x")   # absent characters: empty boxes
  hf = realism.hf_ratios(recons, frame_boxes, realism.laplacian_energy(originals, frame_boxes))

  report = dict(
      num_clips=int(n), num_frames=int(t), resolution=int(h),
      psnr=float(np.mean(frame_psnr)), psnr_face=float(np.mean(face_psnr)),
      face_sim=float(np.mean(face_sim)), face_sim_min=float(np.min(face_sim)),
      face_sim_floor_other_identity=float(np.mean(floor)),
      hf_ratio={k: float(v) for k, v in hf.items()},
      psnr_per_frame_index=[float(np.mean(np.reshape(frame_psnr, (n, t))[:, i]))
                            for i in range(t)])

  # Contact sheet: per clip, originals above reconstructions, 2x nearest.
  shown = min(ec.sheet_clips, n)
  frames_shown = min(ec.sheet_frames, t)
  gap = 4
  blocks = []
  for i in range(shown):
    pair = np.concatenate([einops.rearrange(originals[i, :frames_shown], "t h w c -> h (t w) c"),
                           einops.rearrange(recons[i, :frames_shown], "t h w c -> h (t w) c")])
    block = video_io.upscale(pair, 2)
    blocks.append(np.pad(block, ((gap, gap), (gap, gap), (0, 0)), constant_values=255))
  cols = 2
  while len(blocks) % cols:
    blocks.append(np.full_like(blocks[0], 255))
  rows = [np.concatenate(blocks[r:r + cols], axis=1) for r in range(0, len(blocks), cols)]
  return report, np.concatenate(rows, axis=0)


def train_autoencoder(config, workdir, progress: bool = True) -> dict:
  """Trains, saves to `workdir` with latent statistics, evaluates; returns the report.

  Writes WORKDIR/config.json, params/, latent_stats.json, report.json and
  reconstructions.png (held-out originals above their reconstructions).
  """
  done = os.path.join(workdir, REPORT_FILE)
  if os.path.exists(done):
    # Never retrain over an autoencoder that video runs may already depend on.
    with open(done) as f:
      report = json.load(f)
    print(f"autoencoder in {workdir} is already trained (delete the folder to retrain): "
          f"held-out PSNR {report['psnr']:.2f} dB, face box {report['psnr_face']:.2f} dB, "
          f"FaceSim {report['face_sim']:.3f}", flush=True)
    return report
  os.makedirs(workdir, exist_ok=True)
  face = FrozenFaceEncoder.from_workdir(config.face_encoder_workdir)
  eval_encoder = FrozenFaceEncoder.from_workdir(config.eval_encoder_workdir)

  summary = model_summary(config)
  print(f"autoencoder: {summary['encoder_params']:,} encoder + {summary['decoder_params']:,} "
        f"decoder params; encode {summary['encode_mflops_per_frame']:.0f}, decode "
        f"{summary['decode_mflops_per_frame']:.0f} MFLOP per {config.data.resolution}x"
        f"{config.data.resolution} frame", flush=True)
  start = time.perf_counter()
  module, params, history = fit(config, progress, face)
  train_seconds = time.perf_counter() - start

  mean, std = latent_statistics(module, params, config)
  save_autoencoder(workdir, config, params, mean, std)
  autoencoder = FrozenAutoencoder(config, params, mean, std)

  start = time.perf_counter()
  report, sheet = evaluate(autoencoder, eval_encoder, config)
  report.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - start,
                steps=int(config.train.steps), final_loss=history[-1][1]["loss"], **summary,
                spatial_factor=autoencoder.spatial_factor,
                temporal_factor=autoencoder.temporal_factor,
                latent_channels=autoencoder.latent_channels,
                latent_std_raw=[float(v) for v in std])
  video_io.write_png(os.path.join(workdir, SHEET_FILE), sheet, min_side=1)
  video_io.write_json(done, json.dumps(report, indent=2))
  print(f"autoencoder ({autoencoder.spatial_factor}x spatial, {autoencoder.latent_channels} "
        f"latent channels) trained {config.train.steps} steps in {train_seconds:.0f}s; "
        f"held-out ({report['num_clips']} clips x {report['num_frames']} frames): "
        f"PSNR {report['psnr']:.2f} dB, face box {report['psnr_face']:.2f} dB, "
        f"FaceSim {report['face_sim']:.3f} (min {report['face_sim_min']:.3f}; other identities "
        f"{report['face_sim_floor_other_identity']:.3f}); high-frequency energy / real: "
        + ", ".join(f"{k} {v:.2f}" for k, v in report["hf_ratio"].items())
        + f"; encode {summary['encode_mflops_per_frame']:.0f} / decode "
        f"{summary['decode_mflops_per_frame']:.0f} MFLOP per frame; contact sheet "
        f"{os.path.join(workdir, SHEET_FILE)}", flush=True)
  return report
