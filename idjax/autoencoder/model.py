"""A small convolutional video autoencoder, causal in time.

Frames [B, T, H, W, 3] in [-1, 1] map to latents [B, T, H / s, W / s, C] and
back (s = `patch * 2 ** (len(widths) - 1)`, temporal factor 1). Every layer
works on one frame at a time, except (temporal_kernel > 1) the causal
temporal convolutions of the lowest-resolution level, which read frames
t - k + 1 .. t only (the past is padded by repeating the first frame). Either
way frame t's latent never depends on later frames, and a single image is a
one-frame clip. Normalisation, if any, is per frame (GroupNorm over height,
width and channel groups, never over time), which keeps the model causal too.
The shipped config (configs/autoencoder.py, which says why) uses neither
temporal convs nor normalisation.

Layout (widths (w0, w1), patch 2, 64x64 frames; a ResBlock is
[GN]-SiLU-conv3x3-[GN]-SiLU-conv3x3 plus its input):
  encoder: space-to-depth 2x -> conv3x3 w0 @32 -> ResBlocks -> stride-2 conv3x3
    w1 @16 -> ResBlocks (+ temporal) -> [GN]-SiLU-conv3x3 C @16
  decoder: conv3x3 w1 @16 -> ResBlocks (+ temporal) -> nearest 2x + conv3x3 w0
    @32 -> ResBlocks -> [GN]-SiLU -> nearest 2x + conv3x3 3 @64.
Nothing wide runs at full resolution: at 64x64 a 3x3 conv between even 16
channels costs as much as a residual block of 64 channels at 16x16. The
encoder's first map is a lossless space-to-depth, the decoder's last a conv
straight to RGB (depth-to-space there left a visible 2x2 grid).

The latent is deterministic (the encoder's output); training adds Gaussian
noise of a fixed std to it and penalises its mean square (a fixed-variance
VAE), so the decoder tolerates small errors of a diffusion model.
`PatchDiscriminator` is the training-only critic of the adversarial term.

Params carry logical axis names like the face encoder (conv kernels
`(None, None, "conv_in", "conv_out")`, norms `("norm",)`); take `nn.unbox` of
initialised variables when not sharding.
"""

import math
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax.numpy as jnp

_CONV_NAMES = (None, None, "conv_in", "conv_out")


def _conv(features, strides=1, zero=False, name=None):
  init = nn.initializers.zeros if zero else nn.initializers.he_normal()
  return nn.Conv(
      features, (3, 3), strides=(strides, strides), padding="SAME", name=name,
      kernel_init=nn.with_logical_partitioning(init, _CONV_NAMES),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def _norm(groups, features, name=None):
  """GroupNorm over (H, W, channel group) of each frame of [B, T, H, W, C];
  groups == 0: no normalisation."""
  if groups == 0:
    return lambda x: x
  return nn.GroupNorm(
      num_groups=math.gcd(groups, features), reduction_axes=(-3, -2, -1), name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class CausalTemporalConv(nn.Module):
  """y_t = sum_i W_i x_{t - k + 1 + i}: a (k, 1, 1) conv over time that reads
  only the past; frames before the first are copies of the first."""
  features: int
  kernel: int

  @nn.compact
  def __call__(self, x):  # [B, T, H, W, C] -> [B, T, H, W, F]
    t = x.shape[1]
    padded = jnp.concatenate(
        [jnp.repeat(x[:, :1], self.kernel - 1, axis=1), x], axis=1)
    windows = jnp.concatenate(
        [padded[:, i:i + t] for i in range(self.kernel)], axis=-1)
    # Zero-initialised: the sublayer starts as the identity (see ResBlock).
    return nn.Dense(
        self.features, name="proj",
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                 ("conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))(windows)


class ResBlock(nn.Module):
  """[GN]-SiLU-conv3x3-[GN]-SiLU-conv3x3 plus the input, then (temporal_kernel
  > 1) a causal temporal sublayer [GN]-SiLU-temporal conv plus its input. The
  last conv of each branch starts at zero, so a block starts as the identity."""
  features: int
  temporal_kernel: int
  groups: int

  @nn.compact
  def __call__(self, x):  # [B, T, H, W, F] -> same
    y = _conv(self.features, name="conv1")(nn.silu(_norm(self.groups, self.features, "norm1")(x)))
    y = _conv(self.features, zero=True, name="conv2")(
        nn.silu(_norm(self.groups, self.features, "norm2")(y)))
    x = x + y
    if self.temporal_kernel > 1:
      y = nn.silu(_norm(self.groups, self.features, "norm_t")(x))
      x = x + CausalTemporalConv(self.features, self.temporal_kernel, name="temporal")(y)
    return x


def _upsample(x):
  """Nearest-neighbour 2x of [B, T, H, W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


class Encoder(nn.Module):
  """Frames [B, T, H, W, 3] -> latents [B, T, H/s, W/s, C].

  Attributes:
    widths: channels per level; level 0 runs at H / patch, each later level
      halves the resolution.
    blocks: residual blocks per level.
    latent_channels: C.
    patch: space-to-depth factor before the first conv.
    temporal_kernel: frames read by the causal temporal convs of the last
      level (1 = none: every frame is encoded alone).
    groups: GroupNorm groups (reduced to a divisor of each width); 0: no
      normalisation.
  """
  widths: Sequence[int]
  blocks: Sequence[int]
  latent_channels: int
  patch: int
  temporal_kernel: int
  groups: int

  @nn.compact
  def __call__(self, frames):
    p, last = self.patch, len(self.widths) - 1
    x = einops.rearrange(frames, "b t (h p) (w q) c -> b t h w (p q c)", p=p, q=p)
    x = _conv(self.widths[0], name="stem")(x)
    for level, (width, count) in enumerate(zip(self.widths, self.blocks)):
      if level > 0:
        x = _conv(width, strides=2, name=f"down{level}")(x)
      for block in range(count):
        x = ResBlock(width, self.temporal_kernel if level == last else 1, self.groups,
                     name=f"level{level}_block{block}")(x)
    x = nn.silu(_norm(self.groups, x.shape[-1], "final_norm")(x))
    return _conv(self.latent_channels, name="to_latent")(x)


class Decoder(nn.Module):
  """Latents [B, T, h, w, C] -> frames [B, T, h * s, w * s, 3] (unclipped).

  Attributes as in `Encoder`; `blocks[i]` residual blocks run at level i.
  """
  widths: Sequence[int]
  blocks: Sequence[int]
  patch: int
  temporal_kernel: int
  groups: int

  @nn.compact
  def __call__(self, latents):
    last = len(self.widths) - 1
    x = _conv(self.widths[last], name="stem")(latents)
    for level in range(last, -1, -1):
      width = self.widths[level]
      if level < last:
        x = _conv(width, name=f"up{level}")(_upsample(x))
      for block in range(self.blocks[level]):
        x = ResBlock(width, self.temporal_kernel if level == last else 1, self.groups,
                     name=f"level{level}_block{block}")(x)
    x = nn.silu(_norm(self.groups, x.shape[-1], "final_norm")(x))
    x = jnp.repeat(jnp.repeat(x, self.patch, axis=-3), self.patch, axis=-2)
    return _conv(3, name="out")(x)


class Autoencoder(nn.Module):
  """Encoder + decoder; `__call__` reconstructs from noised latents.

  Attributes:
    widths, encoder_blocks, decoder_blocks, latent_channels, patch,
    temporal_kernel, groups: see `Encoder` / `Decoder`.
  """
  widths: Sequence[int]
  encoder_blocks: Sequence[int]
  decoder_blocks: Sequence[int]
  latent_channels: int
  patch: int
  temporal_kernel: int
  groups: int

  def setup(self):
    self.encoder = Encoder(self.widths, self.encoder_blocks, self.latent_channels,
                           self.patch, self.temporal_kernel, self.groups)
    self.decoder = Decoder(self.widths, self.decoder_blocks, self.patch,
                           self.temporal_kernel, self.groups)

  @property
  def spatial_factor(self) -> int:
    return self.patch * 2 ** (len(self.widths) - 1)

  @property
  def decode_context(self) -> int:
    """Latent frames before frame t that decoding frame t reads: k - 1 per
    causal temporal conv of the decoder, one per block of its last level
    (their receptive fields add up)."""
    return self.decoder_blocks[-1] * (self.temporal_kernel - 1)

  def encode(self, frames):
    """frames float [B, T, H, W, 3] -> raw latents [B, T, H/s, W/s, C]."""
    return self.encoder(frames)

  def decode(self, latents):
    """Raw latents [B, T, h, w, C] -> frames [B, T, h*s, w*s, 3]."""
    return self.decoder(latents)

  def __call__(self, frames, noise):
    """Reconstruction from z = encode(frames) + noise.

    Args:
      frames: float [B, T, H, W, 3] in [-1, 1].
      noise: float [B, T, H/s, W/s, C] added to the latents (zeros: none).

    Returns:
      (reconstruction [B, T, H, W, 3], latents before the noise).
    """
    z = self.encode(frames)
    return self.decode(z + noise), z


class PatchDiscriminator(nn.Module):
  """Frames [N, H, W, 3] -> real/fake logits [N, H / 4, W / 4], one per
  overlapping ~18-pixel patch. Used only in training: an adversarial term is
  what makes the decoder draw edges as sharp as the renders' rather than the
  blur that a pixel loss settles for within a few thousand steps."""
  widths: Sequence[int]  # config.train.disc_widths

  @nn.compact
  def __call__(self, frames):
    x = frames
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME", name=f"conv{i}",
                  kernel_init=nn.with_logical_partitioning(nn.initializers.he_normal(),
                                                          _CONV_NAMES))(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Conv(1, (3, 3), padding="SAME", name="logits")(x)[..., 0]


def autoencoder_from_config(model_config) -> Autoencoder:
  """The Autoencoder of an autoencoder config's `model` section; ValueError
  naming the key if the section is inconsistent."""
  levels = len(model_config.widths)
  for key in ("encoder_blocks", "decoder_blocks"):
    if len(model_config[key]) != levels:
      raise ValueError(f"model.{key} needs one entry per level of model.widths "
                       f"({levels}), got {tuple(model_config[key])}.")
  for key, low in (("latent_channels", 1), ("patch", 1), ("temporal_kernel", 1), ("groups", 0)):
    if int(model_config[key]) < low:
      raise ValueError(f"model.{key} must be >= {low}, got {model_config[key]}.")
  return Autoencoder(
      widths=tuple(model_config.widths),
      encoder_blocks=tuple(model_config.encoder_blocks),
      decoder_blocks=tuple(model_config.decoder_blocks),
      latent_channels=int(model_config.latent_channels),
      patch=int(model_config.patch),
      temporal_kernel=int(model_config.temporal_kernel),
      groups=int(model_config.groups))
