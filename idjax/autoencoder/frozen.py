"""A trained video autoencoder, loaded for frozen use (the video DiT's latent space).

An autoencoder workdir holds `config.json` (the autoencoder config), `params/`
(an orbax checkpoint of the params, no optimizer state) and
`latent_stats.json` (per-channel mean and std of the raw latents over
training clips). `FrozenAutoencoder` is the `encode` / `decode` protocol that
a pretrained video VAE implements as well.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idjax import restore
from idjax.autoencoder.model import Autoencoder, autoencoder_from_config
from idjax.models.wan.vae_weights import FrozenWanVAE, is_wan_vae_folder

CONFIG_FILE = restore.CONFIG_FILE
PARAMS_DIR = restore.PARAMS_DIR
STATS_FILE = "latent_stats.json"


def save_autoencoder(workdir, config, params, latent_mean, latent_std) -> None:
  """Writes `config.json`, the params checkpoint and the latent statistics."""
  workdir = os.path.abspath(os.fspath(workdir))
  restore.save_params(workdir, config, params)
  # float32 -> Python float -> JSON -> float32 is exact.
  stats = dict(mean=[float(v) for v in np.asarray(latent_mean, np.float32)],
               std=[float(v) for v in np.asarray(latent_std, np.float32)])
  with open(os.path.join(workdir, STATS_FILE), "w") as f:
    json.dump(stats, f, indent=2)


def abstract_params(module: Autoencoder):
  """ShapeDtypeStructs of the module's params (no FLOPs spent)."""
  s = module.spatial_factor
  frames = jnp.zeros((1, 1, s, s, 3))
  noise = jnp.zeros((1, 1, 1, 1, module.latent_channels))
  abstract = jax.eval_shape(module.init, jax.random.key(0), frames, noise)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                      nn.unbox(abstract)["params"])


class FrozenAutoencoder:
  """Config + params + pure encode / decode of a trained video autoencoder.

  Attributes:
    config: the autoencoder ConfigDict it was trained with.
    params: its params pytree (plain arrays).
    spatial_factor: s, pixels per latent cell along height and width.
    temporal_factor: frames per latent frame (1: one latent frame per frame).
    latent_channels: C.
    latent_mean, latent_std: float32 [C], statistics of raw latents over
      training clips; `encode` returns (raw - mean) / std.
    decode_context: latent frames before a chunk that `decode_more` reads.
    decode_lead: latent frames that `decode_more` must take alone first (none).
  """

  decode_lead = 0

  def __init__(self, config, params, latent_mean, latent_std):
    self.config = config
    self.params = params
    self.module = autoencoder_from_config(config.model)
    self.spatial_factor = self.module.spatial_factor
    self.temporal_factor = 1
    self.latent_channels = self.module.latent_channels
    self.decode_context = self.module.decode_context
    self.latent_mean = np.asarray(latent_mean, np.float32).reshape(self.latent_channels)
    self.latent_std = np.asarray(latent_std, np.float32).reshape(self.latent_channels)

  @classmethod
  def from_workdir(cls, workdir) -> "FrozenAutoencoder":
    """Loads a workdir written by `save_autoencoder` (params on one device;
    users replicate them over their mesh); ValueError if none. A diffusers
    Wan 2.1 `vae/` folder (what idjax.models.wan.convert puts in a workdir)
    loads as the FrozenWanVAE, which has this class's protocol."""
    if is_wan_vae_folder(workdir):
      return FrozenWanVAE.from_folder(workdir)
    config = restore.read_frozen_config(
        workdir, "autoencoder", label="an autoencoder", holds="video autoencoder",
        advice="train one with configs/autoencoder.py first", extra_files=(STATS_FILE,))
    with open(os.path.join(os.path.abspath(os.fspath(workdir)), STATS_FILE)) as f:
      stats = json.load(f)
    params = restore.restore_params(workdir, abstract_params(autoencoder_from_config(config.model)))
    return cls(config, params, stats["mean"], stats["std"])

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple:
    """(T', h, w, C) of the latents of a [T, H, W, 3] clip."""
    s = self.spatial_factor
    if height % s or width % s:
      raise ValueError(f"Frame size {height}x{width} is not a multiple of the "
                       f"autoencoder's spatial factor {s}.")
    return (num_frames // self.temporal_factor, height // s, width // s, self.latent_channels)

  def encode(self, params, frames):
    """Pure and jit-able; deterministic.

    Args:
      params: the autoencoder's params (`self.params`, or a traced copy).
      frames: float [B, T, H, W, 3] in [-1, 1].

    Returns:
      normalised latents float32 [B, T, H / s, W / s, C]; frame t's latents
      depend on frames <= t only.
    """
    raw = self.module.apply({"params": params}, frames.astype(jnp.float32),
                            method=Autoencoder.encode)
    return (raw - self.latent_mean) / self.latent_std

  def decode(self, params, latents):
    """Pure, jit-able, differentiable w.r.t. `latents`.

    Args:
      params: the autoencoder's params.
      latents: normalised latents float [B, T, h, w, C].

    Returns:
      frames float32 [B, T, h * s, w * s, 3], roughly in [-1, 1] (not
      clipped, so gradients reach every latent).
    """
    raw = latents.astype(jnp.float32) * self.latent_std + self.latent_mean
    return self.module.apply({"params": params}, raw, method=Autoencoder.decode)

  def decode_more(self, params, latents, cache=None):
    """`decode` of a clip streamed over calls, chunk by chunk: (frames, None).

    Args:
      params: the autoencoder's params.
      latents: normalised latents [B, decode_context + n, h, w, C]: a chunk's
        n latent frames after the `decode_context` frames before it (copies of
        frame 0 where the clip has none; the causal padding repeats frame 0).
      cache: unused (None); the Wan VAE's `decode_more` carries one.

    Returns:
      (frames float32 [B, n, H, W, 3], equal to `decode`'s frames of the
      chunk inside the whole clip, None).
    """
    return self.decode(params, latents)[:, self.decode_context:], cache
