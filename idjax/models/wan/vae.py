"""The Wan 2.1 video VAE in Flax, channels last: [B, T, H, W, C].

Same layer layout as diffusers' `AutoencoderKLWan` (Wan 2.1 form: no
residual down/up blocks, no patchify), and the same parameter names with
`.N` written `_N` (`decoder.up_blocks.1.upsamplers.0.resample.1.weight` is
`decoder/up_blocks_1/upsamplers_0/resample_1/kernel`), so the converter in
`vae_weights.py` is a renaming plus transposes.

8x spatial and 4x temporal compression: a clip of T = 1 + 4k frames has
1 + k latent frames. The first frame is encoded alone (an image is a
one-frame video), then groups of 4 frames; the decoder turns the first
latent frame into 1 frame and each later one into 4.

Time is causal everywhere. Each causal conv keeps the last frames of its
input in the `cache` collection (zeros before the first chunk, which is
what zero padding on the past side gives), so after the first frame a clip
gives the same output in chunks of any size, and `encode` / `decode` below
scan over chunks in bounded memory, as diffusers does frame by frame with
its feature cache. A chunk call is the first when the caches do not exist
yet; only the temporal resamplers behave differently then (Wan passes the
first frame through them unchanged). `tiled_encode` / `tiled_decode` split
space as well, into overlapping blended tiles, as diffusers' `enable_tiling`.

The computation runs in the input's dtype (params are cast to it), so
bfloat16 frames or latents give a bfloat16 pass; norms reduce in float32.
"""

from collections.abc import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

CACHE = "cache"


def _conv(x, kernel, bias, strides, padding):
  """x [B, T, H, W, I], kernel [kt, kh, kw, I, O]: cross-correlation, as torch."""
  y = jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), strides, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
  )
  return y + bias.astype(x.dtype)


class CausalConv3d(nn.Module):
  """torch `Conv3d` padded kh // 2 in space and kt - 1 frames on the past side.

  The past frames are `past` when given (the resamplers manage their own),
  else the last kt - 1 input frames of the previous chunk from the cache.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  time_stride: int = 1

  @nn.compact
  def __call__(self, x, past=None):
    kt, kh, kw = self.kernel_size
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(), (kt, kh, kw, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if past is None and kt > 1:
      cache = self.variable(CACHE, "past", jnp.zeros, (x.shape[0], kt - 1, *x.shape[2:]), x.dtype)
      past = cache.value
      cache.value = jnp.concatenate([past, x], axis=1)[:, -(kt - 1) :]
    if past is not None:
      x = jnp.concatenate([past, x], axis=1)
    padding = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2))
    return _conv(x, kernel, bias, (self.time_stride, 1, 1), padding)


class Conv2d(nn.Module):
  """torch `Conv2d` applied to every frame; kernel [kh, kw, I, O] as in the weights."""

  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 0

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    p = (self.padding, self.padding)
    return _conv(x, kernel[None], bias, (1, self.stride, self.stride), ((0, 0), p, p))


class RMSNorm(nn.Module):
  """Wan's RMS_norm: x / ||x|| over channels * sqrt(C) * gamma (no bias in the VAE)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.ones, (c,))
    # In float32 whatever the input, as diffusers does for half precision;
    # the floor is torch's F.normalize eps.
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, 1e-12)).astype(x.dtype) * (c**0.5) * gamma.astype(x.dtype)


class ResidualBlock(nn.Module):
  """norm-SiLU-conv3x3x3, twice, plus a 1x1x1 projected shortcut when C changes."""

  features: int

  @nn.compact
  def __call__(self, x):
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = CausalConv3d(self.features, (1, 1, 1), name="conv_shortcut")(x)
    x = CausalConv3d(self.features, name="conv1")(nn.silu(RMSNorm(name="norm1")(x)))
    x = CausalConv3d(self.features, name="conv2")(nn.silu(RMSNorm(name="norm2")(x)))
    return x + shortcut


class AttentionBlock(nn.Module):
  """Single-head self-attention over the pixels of each frame (no mixing in time)."""

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    qkv = Conv2d(3 * c, 1, name="to_qkv")(RMSNorm(name="norm")(x))
    # [(b t), (h w), heads=1, c]: jax.nn.dot_product_attention's layout.
    q, k, v = jnp.split(einops.rearrange(qkv, "b t h w c -> (b t) (h w) 1 c"), 3, axis=-1)
    y = einops.rearrange(
        jax.nn.dot_product_attention(q, k, v), "(b t) (h w) 1 c -> b t h w c", b=b, h=h
    )
    return x + Conv2d(c, 1, name="proj")(y)


class MidBlock(nn.Module):
  """Residual block, attention, residual block; C unchanged."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = ResidualBlock(c, name="resnets_0")(x)
    x = AttentionBlock(name="attentions_0")(x)
    return ResidualBlock(c, name="resnets_1")(x)


class Resample(nn.Module):
  """2x up/down in space (`...2d`), and 2x in time as well (`...3d`).

  In time, Wan passes the first frame through unchanged; each later frame
  goes through `time_conv`: up, a causal 3-frame conv whose 2C outputs are
  two frames (so 1 + n frames become 1 + 2n); down, a stride-2 conv over
  the previous frame and a pair (1 + 2n frames become 1 + n). The up conv's
  past starts at zeros after the first frame (it never sees frame 0).
  """

  mode: str  # upsample2d | upsample3d | downsample2d | downsample3d

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    first = not self.has_variable(CACHE, "past")
    if self.mode == "upsample3d":
      cache = self.variable(CACHE, "past", jnp.zeros, (x.shape[0], 2, *x.shape[2:]), x.dtype)
      # On the first chunk, called only for `init` to create its params (XLA
      # drops the unused result).
      y = CausalConv3d(2 * c, (3, 1, 1), name="time_conv")(x, past=cache.value)
      if not first:
        cache.value = jnp.concatenate([cache.value, x], axis=1)[:, -2:]
        x = einops.rearrange(y, "b t h w (two c) -> b (t two) h w c", two=2)
    if self.mode.startswith("upsample"):
      # "nearest-exact" at exactly 2x repeats each pixel.
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
      # Wan 2.1 halves C in every upsampler (the next block reads C // 2).
      x = Conv2d(c // 2, 3, padding=1, name="resample_1")(x)
    else:
      # torch's ZeroPad2d((0, 1, 0, 1)): one row and column after, none before.
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
      x = Conv2d(c, 3, stride=2, name="resample_1")(x)
    if self.mode == "downsample3d":
      time_conv = CausalConv3d(c, (3, 1, 1), time_stride=2, name="time_conv")
      cache = self.variable(CACHE, "past", lambda: x[:, -1:])
      if first:
        # As above, params only: the first frame passes and becomes the past.
        time_conv(x, past=jnp.zeros((x.shape[0], 2, *x.shape[2:]), x.dtype))
      else:
        x, cache.value = time_conv(x, past=cache.value), x[:, -1:]
    return x


class Encoder(nn.Module):
  """Frames [B, T, H, W, 3] -> [B, T', H / 8, W / 8, out_features]."""

  dim: int
  out_features: int
  dim_mult: Sequence[int]
  num_res_blocks: int
  temporal_downsample: Sequence[bool]

  @nn.compact
  def __call__(self, x):
    dims = [self.dim * m for m in (1, *self.dim_mult)]
    x = CausalConv3d(dims[0], name="conv_in")(x)
    # diffusers keeps the down path as one flat list of blocks.
    index = 0
    for i, out_dim in enumerate(dims[1:]):
      for _ in range(self.num_res_blocks):
        x = ResidualBlock(out_dim, name=f"down_blocks_{index}")(x)
        index += 1
      if i != len(self.dim_mult) - 1:
        mode = "downsample3d" if self.temporal_downsample[i] else "downsample2d"
        x = Resample(mode, name=f"down_blocks_{index}")(x)
        index += 1
    x = MidBlock(name="mid_block")(x)
    x = nn.silu(RMSNorm(name="norm_out")(x))
    return CausalConv3d(self.out_features, name="conv_out")(x)


class UpBlock(nn.Module):
  """num_res_blocks + 1 residual blocks, then (unless last) an upsampler halving C."""

  features: int
  num_res_blocks: int
  upsample_mode: str | None

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_res_blocks + 1):
      x = ResidualBlock(self.features, name=f"resnets_{j}")(x)
    if self.upsample_mode:
      x = Resample(self.upsample_mode, name="upsamplers_0")(x)
    return x


class Decoder(nn.Module):
  """Latents [B, T', h, w, z] -> frames [B, T, 8h, 8w, 3]."""

  dim: int
  dim_mult: Sequence[int]
  num_res_blocks: int
  temporal_upsample: Sequence[bool]

  @nn.compact
  def __call__(self, x):
    dims = [self.dim * m for m in (self.dim_mult[-1], *self.dim_mult[::-1])]
    x = CausalConv3d(dims[0], name="conv_in")(x)
    x = MidBlock(name="mid_block")(x)
    for i, out_dim in enumerate(dims[1:]):
      mode = None
      if i != len(self.dim_mult) - 1:
        mode = "upsample3d" if self.temporal_upsample[i] else "upsample2d"
      x = UpBlock(out_dim, self.num_res_blocks, mode, name=f"up_blocks_{i}")(x)
    x = nn.silu(RMSNorm(name="norm_out")(x))
    return CausalConv3d(3, name="conv_out")(x)


class WanVAE(nn.Module):
  """The Wan 2.1 VAE, one chunk at a time (see `encode` / `decode` for clips).

  Fields as diffusers' config.json (`temperal_downsample` spelled right).
  """

  base_dim: int = 96
  decoder_base_dim: int | None = None
  z_dim: int = 16
  dim_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: Sequence[bool] = (False, True, True)

  spatial_factor = 8
  temporal_factor = 4

  def setup(self):
    self.encoder = Encoder(
        self.base_dim, 2 * self.z_dim, self.dim_mult, self.num_res_blocks, self.temporal_downsample
    )
    self.quant_conv = CausalConv3d(2 * self.z_dim, (1, 1, 1))
    self.post_quant_conv = CausalConv3d(self.z_dim, (1, 1, 1))
    self.decoder = Decoder(
        self.decoder_base_dim or self.base_dim,
        self.dim_mult,
        self.num_res_blocks,
        tuple(self.temporal_downsample)[::-1],
    )

  def encode_chunk(self, frames):
    """Frames [B, 1 or 4n, H, W, 3] -> posterior mean [B, 1 or n, H / 8, W / 8, z]."""
    moments = self.quant_conv(self.encoder(frames))
    return moments[..., : self.z_dim]  # (mean, log variance) on channels

  def decode_chunk(self, latents):
    """Raw latents [B, 1 or n, h, w, z] -> frames [B, 1 or 4n, 8h, 8w, 3], unclamped."""
    return self.decoder(self.post_quant_conv(latents))

  def __call__(self, frames):
    """Both halves on a first chunk: `init` creates every parameter."""
    return self.decode_chunk(self.encode_chunk(frames))


def _first_chunk(module, params, method, first):
  """`method` on a clip's first chunk: (its output, the causal caches after it)."""
  return module.apply({"params": params}, first, method=method, mutable=[CACHE])


def _scan(module, params, method, state, rest, steps):
  """Scans `method` over `rest` in chunks of `steps` frames from the caches
  `state`: (outputs along time, the caches after the last chunk)."""

  def step(state, chunk):
    y, state = module.apply({"params": params, **state}, chunk, method=method, mutable=[CACHE])
    return state, y

  chunks = einops.rearrange(rest, "b (n t) h w c -> n b t h w c", t=steps)
  state, ys = jax.lax.scan(step, state, chunks)
  return einops.rearrange(ys, "n b t h w c -> b (n t) h w c"), state


def _scan_chunks(module, params, method, first, rest, steps):
  """Runs `method` on `first`, then scans it over `rest` in chunks of `steps`
  frames, carrying the causal caches; returns all outputs along time."""
  out, state = _first_chunk(module, params, method, first)
  if rest.shape[1] == 0:
    return out
  ys, _ = _scan(module, params, method, state, rest, steps)
  return jnp.concatenate([out, ys], axis=1)


def _check_steps(steps: int, count: int, what: str):
  if steps < 1 or count % steps:
    raise ValueError(f"{what} per step must divide the {count} after the first; got {steps}.")


def encode(module: WanVAE, params, frames, latent_frames_per_step: int = 1):
  """Raw posterior means of a clip, encoded chunk by chunk. Pure, jit-able.

  Args:
    module: the WanVAE.
    params: its params.
    frames: float [B, 1 + 4k, H, W, 3] in [-1, 1]; H, W multiples of 8.
    latent_frames_per_step: latent frames per scan step (4 frames each); it
      must divide k. Memory grows with it; k gives one whole-clip step.

  Returns:
    [B, 1 + k, H / 8, W / 8, z]; latent frame j depends on frames <= 4j only.
  """
  t = frames.shape[1]
  if (t - 1) % 4:
    raise ValueError(f"The Wan VAE encodes 1 + 4k frames; got {t}.")
  _check_steps(latent_frames_per_step, (t - 1) // 4, "Latent frames")
  steps = 4 * latent_frames_per_step
  return _scan_chunks(module, params, WanVAE.encode_chunk, frames[:, :1], frames[:, 1:], steps)


def decode(module: WanVAE, params, latents, latent_frames_per_step: int = 1):
  """Frames of raw latents, decoded chunk by chunk. Pure, jit-able, differentiable.

  Args:
    module: the WanVAE.
    params: its params.
    latents: raw latents float [B, 1 + k, h, w, z].
    latent_frames_per_step: latent frames per scan step; it must divide k.

  Returns:
    frames float [B, 1 + 4k, 8h, 8w, 3], not clamped (diffusers clamps its
    `decode` output to [-1, 1]; clip to match it).
  """
  _check_steps(latent_frames_per_step, latents.shape[1] - 1, "Latent frames")
  first, rest = latents[:, :1], latents[:, 1:]
  return _scan_chunks(module, params, WanVAE.decode_chunk, first, rest, latent_frames_per_step)


def decode_more(module: WanVAE, params, latents, cache=None, latent_frames_per_step: int = 1):
  """`decode` of a clip streamed over calls: (frames, cache) of the next latents.

  The first call (cache None) takes latent frame 0 alone; each later call
  any number of latent frames (a multiple of `latent_frames_per_step`) with
  the cache the call before returned. The frames are `decode`'s frames of
  those latents, so a clip decodes in device memory bounded by a call's
  latents, whatever its length. Pure, jit-able.
  """
  if cache is None:
    return _first_chunk(module, params, WanVAE.decode_chunk, latents)
  _check_steps(latent_frames_per_step, latents.shape[1], "Latent frames")
  return _scan(module, params, WanVAE.decode_chunk, cache, latents, latent_frames_per_step)


def _blend(a, b, extent: int, axis: int):
  """b with its first `extent` rows along `axis` faded in from a's last ones
  (weight of b: 0, 1 / extent, ...), as diffusers' blend_v / blend_h."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent == 0:
    return b
  shape = [1] * b.ndim
  shape[axis] = extent
  ramp = (jnp.arange(extent, dtype=jnp.float32) / extent).reshape(shape).astype(b.dtype)
  tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
  head = tail * (1 - ramp) + jax.lax.slice_in_dim(b, 0, extent, axis=axis) * ramp
  return jnp.concatenate([head, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)], axis)


def _tiled(fn, x, tile: int, stride: int, in_cell: int, out_cell: int):
  """`fn` over overlapping spatial tiles of x [B, T, H, W, C], blended as
  diffusers' tiled_encode / tiled_decode do.

  Tiles are `tile` latent cells wide, one every `stride` cells, in raster
  order; each is blended with the (already blended) tiles above and to its
  left over their overlap, then cropped to `stride` cells. A latent cell is
  `in_cell` pixels of x and `out_cell` pixels of fn's output.
  """
  height, width = x.shape[2] // in_cell, x.shape[3] // in_cell
  overlap, crop = (tile - stride) * out_cell, stride * out_cell
  starts = [(i, j) for i in range(0, height, stride) for j in range(0, width, stride)]
  pieces = {
      (i, j): x[:, :, i * in_cell : (i + tile) * in_cell, j * in_cell : (j + tile) * in_cell]
      for i, j in starts
  }
  # Tiles of one shape (all but those on the far edges) go through one
  # lax.map, so XLA runs them in turn in one tile's memory; as separate calls
  # it may run them side by side (measured on CPU: no saving at all).
  by_shape = {}
  for start in starts:
    by_shape.setdefault(pieces[start].shape, []).append(start)
  outputs = {}
  for group in by_shape.values():
    ys = jax.lax.map(fn, jnp.stack([pieces[s] for s in group]))
    outputs.update({s: ys[n] for n, s in enumerate(group)})
  rows = []
  for i in range(0, height, stride):
    row = []
    for j in range(0, width, stride):
      y = outputs[i, j]
      if rows:
        y = _blend(rows[-1][len(row)], y, overlap, axis=2)
      if row:
        y = _blend(row[-1], y, overlap, axis=3)
      row.append(y)
    rows.append(row)
  out = jnp.concatenate(
      [jnp.concatenate([y[:, :, :crop, :crop] for y in row], axis=3) for row in rows], axis=2
  )
  return out[:, :, : height * out_cell, : width * out_cell]


def _check_tiling(tile: int, stride: int):
  if tile % 8 or stride % 8 or not 0 < stride <= tile:
    raise ValueError(
        f"Tiles of {tile} pixels every {stride}: both must be multiples of 8, "
        "with 0 < stride <= tile."
    )


def tiled_encode(module: WanVAE, params, frames, tile=256, stride=192, latent_frames_per_step=1):
  """`encode` of overlapping spatial tiles, blended, as diffusers' `tiled_encode`.

  Tiles are `tile` pixels square, one every `stride` pixels (diffusers'
  defaults): peak memory is one tile's. Not equal to `encode` (each tile
  sees only its own pixels); frames that fit in one tile are encoded whole.
  """
  _check_tiling(tile, stride)
  if frames.shape[2] <= tile and frames.shape[3] <= tile:
    return encode(module, params, frames, latent_frames_per_step)
  fn = lambda x: encode(module, params, x, latent_frames_per_step)
  return _tiled(fn, frames, tile // 8, stride // 8, 8, 1)


def tiled_decode(module: WanVAE, params, latents, tile=256, stride=192, latent_frames_per_step=1):
  """`decode` of overlapping spatial tiles, blended, as diffusers' `tiled_decode`.

  `tile` and `stride` are in output pixels, as for `tiled_encode`; latents
  whose frames fit in one tile are decoded whole.
  """
  _check_tiling(tile, stride)
  if latents.shape[2] <= tile // 8 and latents.shape[3] <= tile // 8:
    return decode(module, params, latents, latent_frames_per_step)
  fn = lambda z: decode(module, params, z, latent_frames_per_step)
  return _tiled(fn, latents, tile // 8, stride // 8, 1, 8)
