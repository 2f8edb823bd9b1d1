"""The published Wan 2.1 VAE (a diffusers `vae/` folder), read with NumPy and used frozen.

  vae = FrozenWanVAE.from_folder("Wan2.1-T2V-1.3B-Diffusers/vae")
  latents = vae.encode(vae.params, frames)  # [B, 1 + 4k, H, W, 3] in [-1, 1]
  frames = vae.decode(vae.params, latents)

`FrozenWanVAE` follows the protocol of `idjax.autoencoder.frozen.FrozenAutoencoder`
(latent_shape, pure encode / decode of normalised latents), with a temporal
factor of 4.
"""

import json
import os
import re

import einops
import flax
import jax
import jax.numpy as jnp
import numpy as np

from idjax import weight_files
from idjax.models.wan import vae as vae_lib

# config.json keys that must hold these values: other values are Wan 2.2's
# VAE or layouts diffusers itself cannot run.
FIXED = dict(is_residual=False, patch_size=None, in_channels=3, out_channels=3, attn_scales=[])


def vae_from_config(config: dict) -> vae_lib.WanVAE:
  """The WanVAE that a diffusers `AutoencoderKLWan` config.json describes.

  Raises ValueError naming a key whose value this implementation does not
  support. Missing keys take diffusers' defaults, as `from_pretrained` does.
  """
  name = config.get("_class_name", "AutoencoderKLWan")
  if name != "AutoencoderKLWan":
    raise ValueError(f"config.json describes a {name}, not an AutoencoderKLWan.")
  for key, value in FIXED.items():
    if config.get(key, value) != value:
      raise ValueError(
          f"config.json key {key} is {config[key]!r}; only {value!r} is "
          "supported (the Wan 2.1 VAE)."
      )
  defaults = vae_lib.WanVAE()
  dim_mult = tuple(config.get("dim_mult", defaults.dim_mult))
  temporal = tuple(bool(v) for v in config.get("temperal_downsample", defaults.temporal_downsample))
  if len(temporal) != len(dim_mult) - 1 or sum(temporal) != 2 or len(dim_mult) != 4:
    raise ValueError(
        f"config.json keys dim_mult {list(dim_mult)} and temperal_downsample "
        f"{list(temporal)}: expected 4 stages and 2 temporal downsamplers "
        "(8x spatial, 4x temporal compression)."
    )
  return vae_lib.WanVAE(
      base_dim=int(config.get("base_dim", defaults.base_dim)),
      decoder_base_dim=config.get("decoder_base_dim"),
      z_dim=int(config.get("z_dim", defaults.z_dim)),
      dim_mult=dim_mult,
      num_res_blocks=int(config.get("num_res_blocks", defaults.num_res_blocks)),
      temporal_downsample=temporal,
  )


def is_wan_vae_folder(folder) -> bool:
  """True when `folder`/config.json is a diffusers AutoencoderKLWan's (a `vae/`
  folder), so that loaders of the project's own autoencoder workdirs can
  hand it to FrozenWanVAE."""
  try:
    with open(os.path.join(os.fspath(folder), "config.json")) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and config.get("_class_name") == "AutoencoderKLWan"


def abstract_params(module: vae_lib.WanVAE) -> dict:
  """ShapeDtypeStructs of the module's params (no FLOPs spent)."""
  frames = jax.ShapeDtypeStruct((1, 1, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), frames)
  return variables["params"]


def _torch_name(path: tuple) -> str:
  # ("decoder", "up_blocks_1", "resnets_0", "conv1", "kernel") -> decoder.up_blocks.1.resnets.0.conv1.weight
  parts = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
  return ".".join(parts + [{"kernel": "weight"}.get(path[-1], path[-1])])


def _torch_shape(path: tuple, shape: tuple) -> tuple:
  if path[-1] == "kernel":  # [kt,] kh, kw, I, O -> O, I, [kt,] kh, kw
    return (shape[-1], shape[-2], *shape[:-2])
  if path[-1] == "gamma":
    # The attention norm is an image norm [C, 1, 1]; the others are [C, 1, 1, 1].
    return (shape[0], 1, 1) if path[-2] == "norm" else (shape[0], 1, 1, 1)
  return tuple(shape)


def _layout(module: vae_lib.WanVAE) -> list:
  """(Flax path, Flax shape, diffusers name, torch shape) of each param of `module`."""
  flat = flax.traverse_util.flatten_dict(abstract_params(module))
  return [(p, leaf.shape, _torch_name(p), _torch_shape(p, leaf.shape)) for p, leaf in flat.items()]


def torch_shapes(module: vae_lib.WanVAE) -> dict:
  """{diffusers tensor name: torch shape} that `convert_state_dict` expects."""
  return {name: shape for _, _, name, shape in _layout(module)}


def _to_flax(tensor: np.ndarray, flax_shape: tuple) -> np.ndarray:
  tensor = np.asarray(tensor, np.float32)
  if len(flax_shape) == 5:  # Conv3d
    return einops.rearrange(tensor, "o i t h w -> t h w i o")
  if len(flax_shape) == 4:  # Conv2d
    return einops.rearrange(tensor, "o i h w -> h w i o")
  return tensor.reshape(flax_shape)  # biases; gains lose their singleton axes


def convert_state_dict(state: dict, module: vae_lib.WanVAE) -> dict:
  """diffusers `AutoencoderKLWan` state dict -> float32 Flax params of `module`.

  Raises WeightFileError (a ValueError) in one sentence naming the first
  missing or misshapen tensor with its expected shape, or the tensors the
  config has no place for.
  """
  params, used = {}, set()
  for path, flax_shape, name, shape in _layout(module):
    if name not in state:
      raise weight_files.WeightFileError(
          f"The Wan VAE weights have no tensor {name} (expected shape {list(shape)})."
      )
    if tuple(state[name].shape) != shape:
      raise weight_files.WeightFileError(
          f"Wan VAE tensor {name} has shape {list(state[name].shape)}, but the config "
          f"expects {list(shape)}."
      )
    params[path] = _to_flax(state[name], flax_shape)
    used.add(name)
  unused = sorted(set(state) - used)
  if unused:
    raise weight_files.WeightFileError(
        f"The Wan VAE weights hold {len(unused)} tensor(s) the config has no place for "
        f"(first: {unused[0]}); config.json does not describe these weights."
    )
  return flax.traverse_util.unflatten_dict(params)


class FrozenWanVAE:
  """The Wan 2.1 VAE with pure encode / decode of normalised latents.

  Attributes:
    config: the diffusers config.json, as a dict.
    module: the WanVAE.
    params: its float32 params (on the default device; users replicate them
      over their mesh).
    spatial_factor: 8, pixels per latent cell along height and width.
    temporal_factor: 4; a clip of 1 + 4k frames has 1 + k latent frames.
    latent_channels: z (16 at the published size).
    latent_mean, latent_std: float32 [z], config.json's latents_mean and
      latents_std; `encode` returns (raw - mean) / std, as Wan's pipelines do.
    latent_frames_per_step: latent frames per chunk of `encode` / `decode`
      (4 frames each): the memory knob.
    dtype: the dtype the network computes in (float32, or bfloat16 for
      speed); inputs and outputs stay float32.
    tiling: None, or (tile, stride) in pixels: encode and decode overlapping
      tiles, blended, as diffusers' `enable_tiling` (its default: 256, 192).
      Peak memory is then one tile's; the output differs a little.
    decode_context: latent frames before a chunk that `decode_more` reads
      (none: it carries the causal caches instead).
    decode_lead: latent frames that `decode_more` takes alone first (1: the
      first latent frame decodes to one frame, through other resamplers).
  """

  spatial_factor = vae_lib.WanVAE.spatial_factor
  temporal_factor = vae_lib.WanVAE.temporal_factor
  decode_context = 0
  decode_lead = 1

  def __init__(
      self,
      config: dict,
      params,
      latent_frames_per_step: int = 1,
      dtype=jnp.float32,
      tiling: tuple[int, int] | None = None,
  ):
    self.config = config
    self.dtype = dtype
    self.tiling = tiling
    self.module = vae_from_config(config)
    self.params = params
    self.latent_channels = self.module.z_dim
    self.latent_frames_per_step = latent_frames_per_step
    for key in ("latents_mean", "latents_std"):
      if len(config.get(key, ())) != self.latent_channels:
        raise ValueError(
            f"config.json key {key} needs {self.latent_channels} values (z_dim), "
            f"got {len(config.get(key, ()))}."
        )
    self.latent_mean = np.asarray(config["latents_mean"], np.float32)
    self.latent_std = np.asarray(config["latents_std"], np.float32)

  @classmethod
  def from_folder(cls, folder, **kwargs) -> "FrozenWanVAE":
    """Loads a diffusers `vae/` folder, or a model folder holding one.

    Raises WeightFileError / ValueError in one sentence on a missing file,
    an unsupported config or a missing or misshapen tensor.
    """
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
      if os.path.isfile(os.path.join(folder, "vae", "config.json")):
        folder = os.path.join(folder, "vae")
    config, state = weight_files.read_diffusers_folder(folder)
    params = convert_state_dict(state, vae_from_config(config))
    return cls(config, jax.tree.map(jnp.asarray, params), **kwargs)

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple:
    """(T', h, w, C) of the latents of a [T, H, W, 3] clip, T = 1 + 4 (T' - 1)."""
    s = self.spatial_factor
    if height % s or width % s:
      raise ValueError(
          f"Frame size {height}x{width} is not a multiple of the "
          f"autoencoder's spatial factor {s}."
      )
    if num_frames < 1 or (num_frames - 1) % self.temporal_factor:
      raise ValueError(
          f"The Wan VAE takes 1 + 4k frames; got {num_frames} (1, 5, 9, 13, ... are valid)."
      )
    return (1 + (num_frames - 1) // 4, height // s, width // s, self.latent_channels)

  def encode(self, params, frames):
    """Pure and jit-able; deterministic (the posterior mean).

    Args:
      params: the VAE's params (`self.params`, or a traced copy).
      frames: float [B, 1 + 4k, H, W, 3] in [-1, 1].

    Returns:
      normalised latents float32 [B, 1 + k, H / 8, W / 8, C]; latent frame j
      depends on frames <= 4j only.
    """
    frames, steps = frames.astype(self.dtype), self.latent_frames_per_step
    if self.tiling:
      raw = vae_lib.tiled_encode(self.module, params, frames, *self.tiling, steps)
    else:
      raw = vae_lib.encode(self.module, params, frames, steps)
    return (raw.astype(jnp.float32) - self.latent_mean) / self.latent_std

  def decode(self, params, latents):
    """Pure, jit-able, differentiable w.r.t. `latents`.

    Args:
      params: the VAE's params.
      latents: normalised latents float [B, 1 + k, h, w, C].

    Returns:
      frames float32 [B, 1 + 4k, 8h, 8w, 3], roughly in [-1, 1] and not
      clipped, so gradients reach every latent (diffusers' `decode` clamps
      to [-1, 1]: clip to get its output).
    """
    raw, steps = self._raw(latents), self.latent_frames_per_step
    if self.tiling:
      frames = vae_lib.tiled_decode(self.module, params, raw, *self.tiling, steps)
    else:
      frames = vae_lib.decode(self.module, params, raw, steps)
    return frames.astype(jnp.float32)

  def decode_more(self, params, latents, cache=None):
    """`decode` of a clip streamed over calls (vae.decode_more): (frames, cache).

    The first call (cache None) takes latent frame 0 alone, each later one
    the next latent frames (a multiple of latent_frames_per_step) and the
    cache the call before returned. Not tiled. Pure, jit-able.
    """
    frames, cache = vae_lib.decode_more(
        self.module, params, self._raw(latents), cache, self.latent_frames_per_step
    )
    return frames.astype(jnp.float32), cache

  def _raw(self, latents):
    """Normalised latents -> raw ones, in the compute dtype."""
    return (latents.astype(jnp.float32) * self.latent_std + self.latent_mean).astype(self.dtype)
