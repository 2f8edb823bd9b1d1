"""The Wan 2.1 DiT (diffusers' WanTransformer3DModel, text-to-video) in Flax Linen.

  latents [B,T,H,W,C] -> (1,2,2) patches -> linear embed -> num_layers x
  WanBlock (scanned, rematerialised) -> output norm with the time shift and
  scale -> proj_out -> unpatchify -> [B,T,H,W,C_out] (float32).

Each block: full spatio-temporal self-attention with 3D RoPE and RMS q/k norm
over all heads, text cross-attention (pre-LN with affine when
`cross_attn_norm`), and a GELU-tanh FFN; self-attention and FFN are modulated
by the shared time projection (6 vectors per sample) plus the block's own
learned `scale_shift_table`.

Layout: channels last, as everywhere in idjax. diffusers takes and returns
NCTHW; `einops.rearrange(x, "b c t h w -> b t h w c")` converts. Tokens are
kept as [B, F, P, D] (F latent frames of P = h*w patches) so that `frames`
can be split over the `sequence` mesh axis; attention flattens them to
F*P tokens in (f, h, w) row-major order, diffusers' order.

Timesteps are in Wan's units, 0..1000 (the flow-matching sigma times 1000);
idjax's t in [0, 1] is timestep / 1000.

Numerics follow diffusers: layer norms, modulation and gated residual adds in
float32, cast back to `dtype`. The time and text conditioning are computed
entirely in float32 (diffusers keeps only the time MLP there); they are
[B, D] and [B, L, D], so this costs nothing and only differs below bfloat16
resolution.

The image-to-video variant (image embedder, added k/v projections) is not
here; transformer_weights refuses such a config.
"""

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idjax.models import attention
from idjax.models import blocks
from idjax.models import rope
from idjax.models.remat import REMAT_POLICIES

ROPE_THETA = 10_000.0
# Query tokens per block of XLA self-attention (WanAttention): longer clips
# attend this many queries at a time.
QUERY_BLOCK = 2048

TOKENS = ("batch", "frames", "patches", "embed")


def rope_split(head_dim: int) -> tuple[int, int, int]:
  """Channels of a head rotated by frame, row and column position (diffusers' split).

  Height and width get 2 * (head_dim // 6) each, frames the rest, so frames
  get more channels when head_dim is not a multiple of 6 (128 -> 44, 42, 42).
  """
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float = ROPE_THETA):
  """Rotation angles [F*P, head_dim / 2] of Wan's 3D RoPE on an (f, h, w) patch grid.

  Tokens are in (f, h, w) row-major order. Channel pairs (2i, 2i+1) of the
  first rope_split(head_dim)[0] channels turn with the frame index, the next
  with the row, the last with the column; each axis has its own frequencies
  theta^(-2i / axis_channels). Float64 here, a float32 constant when traced.
  """
  positions = rope.grid_positions(*grid).astype(np.float64)  # [L, 3]
  parts = []
  for axis, channels in enumerate(rope_split(head_dim)):
    inv_freq = theta ** (-np.arange(0, channels, 2, dtype=np.float64) / channels)
    parts.append(positions[:, axis : axis + 1] * inv_freq[None, :])
  return np.concatenate(parts, axis=-1).astype(np.float32)


def timestep_embedding(timestep, dim: int, max_period: float = 10_000.0):
  """Sinusoidal [cos, sin] embedding of timestep [B] (0..1000) -> float32 [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = timestep.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def modulate(x, shift, scale):
  """Float32 x * (1 + scale) + shift; shift, scale [B, D] broadcast over tokens."""
  expand = (slice(None),) + (None,) * (x.ndim - 2)
  return x.astype(jnp.float32) * (1 + scale[expand]) + shift[expand]


class LayerNorm32(nn.Module):
  """LayerNorm over the last axis, in float32 (diffusers' FP32LayerNorm) -> float32."""

  eps: float
  affine: bool
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    if self.affine:
      d = x.shape[-1]
      scale = self.param(
          "scale",
          nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
          (d,),
          self.param_dtype,
      )
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
          (d,),
          self.param_dtype,
      )
      y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y


class HeadsRMSNorm(nn.Module):
  """RMS norm of x [..., N, H] over all heads together (Wan's "rms_norm_across_heads")."""

  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.ones_init(), ("heads", "head_dim")),
        x.shape[-2:],
        self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    ms = jnp.mean(jnp.square(x32), axis=(-2, -1), keepdims=True)
    return (x32 * jax.lax.rsqrt(ms + self.eps) * scale.astype(jnp.float32)).astype(x.dtype)


class WanAttention(nn.Module):
  """Self-attention of tokens x [B,F,P,D] (with 3D RoPE) or cross-attention to context [B,L,D].

  q and k are RMS-normalised across all heads before RoPE; no mask (Wan pads
  text embeddings with zeros and attends to the padding, as the original).
  """

  num_heads: int
  head_dim: int
  eps: float
  implementation: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, angles=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads = (self.num_heads, self.head_dim)
    proj = lambda name: attention.HeadProjection(
        heads, 1, ("embed", "heads", "head_dim"), name=name, **kw
    )
    norm = lambda name: HeadsRMSNorm(self.eps, self.param_dtype, name=name)
    f = x.shape[1]
    q = norm("norm_q")(proj("query")(x))  # [B,F,P,N,H]
    q = nn.with_logical_constraint(q, ("batch", "frames", "patches", "heads", "head_dim"))
    q = einops.rearrange(q, "b f p n h -> b (f p) n h")
    if context is None:
      k = norm("norm_k")(proj("key")(x))
      v = proj("value")(x)
      k, v = (
          einops.rearrange(
              nn.with_logical_constraint(a, ("batch", "frames", "patches", "heads", "head_dim")),
              "b f p n h -> b (f p) n h",
          )
          for a in (k, v)
      )
    else:
      k = norm("norm_k")(proj("key")(context))
      v = proj("value")(context)
      k, v = (
          nn.with_logical_constraint(a, ("batch", "length", "heads", "head_dim")) for a in (k, v)
      )
    if angles is not None:
      q, k = rope.apply_rope(q, angles), rope.apply_rope(k, angles)
    # Self-attention over a whole clip (81 frames at 480x480: 18,900 tokens)
    # would hold every query's scores at once under XLA; QUERY_BLOCK rows at a
    # time keep it linear in tokens (cuDNN's flash kernel needs no blocks).
    block = QUERY_BLOCK if context is None else None
    out = attention.dot_product_attention(
        q, k, v, implementation=self.implementation, query_block=block
    )
    out = einops.rearrange(out, "b (f p) n h -> b f p n h", f=f)
    out = nn.with_logical_constraint(out, ("batch", "frames", "patches", "heads", "head_dim"))
    return attention.HeadProjection(
        (self.num_heads * self.head_dim,), 2, ("heads", "head_dim", "embed"), name="out", **kw
    )(out)


class WanBlock(nn.Module):
  """x [B,F,P,D] -> x after self-attention, text cross-attention and FFN.

  context: projected text [B, L, D]. time6: [B, 6, D] float32, the shared
  time projection; with the block's scale_shift_table it gives shift, scale
  and gate of the self-attention and of the FFN. Returns (x, None) for
  nn.scan.

  ident, strength: None (the Wan block as published), or the identity
  context and identity_strength [B] of blocks.DiTBlock; then the project's
  identity cross-attention (blocks.IdentityAttention, zero-initialised,
  params in `adapter_param_dtype`) adds its update right after the text
  cross-attention, as in the project's own block.
  """

  grid: tuple[int, int, int]
  num_heads: int
  head_dim: int
  ffn_dim: int
  cross_attn_norm: bool
  eps: float
  implementation: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  adapter_param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context, time6, ident=None, strength=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = self.num_heads * self.head_dim
    attn = lambda name: WanAttention(
        self.num_heads, self.head_dim, self.eps, self.implementation, name=name, **kw
    )
    table = self.param(
        "scale_shift_table",
        nn.with_logical_partitioning(nn.initializers.normal(width**-0.5), (None, "embed")),
        (6, width),
        self.param_dtype,
    )
    mod = nn.with_logical_constraint(
        table.astype(jnp.float32)[None] + time6, ("batch", None, "embed")
    )
    shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = (mod[:, i] for i in range(6))
    gated = lambda x, h, g: (
        x.astype(jnp.float32) + h.astype(jnp.float32) * g[:, None, None, :]
    ).astype(self.dtype)
    x = nn.with_logical_constraint(x, TOKENS)

    norm = lambda y: LayerNorm32(self.eps, affine=False)(y)
    h = modulate(norm(x), shift, scale).astype(self.dtype)
    x = gated(x, attn("attn1")(h, angles=rope_angles(self.grid, self.head_dim)), gate)

    h = x
    if self.cross_attn_norm:
      h = LayerNorm32(self.eps, affine=True, param_dtype=self.param_dtype, name="norm2")(x)
    x = x + attn("attn2")(h.astype(self.dtype), context).astype(self.dtype)
    if ident is not None:
      x = x + blocks.IdentityAttention(
          self.num_heads,
          self.implementation,
          name="identity",
          dtype=self.dtype,
          param_dtype=self.adapter_param_dtype,
      )(x, ident, strength)

    h = modulate(norm(x), ffn_shift, ffn_scale).astype(self.dtype)
    h = blocks.dense(self.ffn_dim, ("embed", "mlp"), name="ffn_fc1", **kw)(h)
    h = blocks.dense(width, ("mlp", "embed"), name="ffn_fc2", **kw)(nn.gelu(h, approximate=True))
    return nn.with_logical_constraint(gated(x, h, ffn_gate), TOKENS), None


class WanTransformer(nn.Module):
  """Wan 2.1 text-to-video DiT (see the module docstring).

  Architecture fields carry diffusers' config.json values (mapped in
  transformer_weights.transformer_fields); the last four choose how it runs.

  Attributes:
    patch_size: (frames, height, width) of a patch; Wan 2.1 uses (1, 2, 2).
    num_heads, head_dim: attention heads; the width is their product.
    in_channels, out_channels: latent channels in and out.
    text_dim: width of the text encoder's embeddings (UMT5-XXL: 4096).
    freq_dim: size of the sinusoidal timestep embedding.
    ffn_dim: hidden width of the FFN.
    num_layers: blocks, scanned (params stacked on a `layers` axis).
    cross_attn_norm: LayerNorm with affine before the text cross-attention.
    eps: of every norm.
    rope_max_seq_len: longest patch grid axis diffusers' RoPE table allows.
    attention_impl: "xla" or "cudnn" (XLA where cuDNN is unavailable).
    remat_policy: "none" or a key of remat.REMAT_POLICIES.
    dtype, param_dtype: names of the compute and parameter dtypes.
    adapter_param_dtype: of the identity cross-attentions (built only when
      called with an identity context; see WanBlock).
  """

  patch_size: tuple[int, int, int]
  num_heads: int
  head_dim: int
  in_channels: int
  out_channels: int
  text_dim: int
  freq_dim: int
  ffn_dim: int
  num_layers: int
  cross_attn_norm: bool
  eps: float
  rope_max_seq_len: int
  attention_impl: str = "xla"
  remat_policy: str = "full"
  dtype: str = "float32"
  param_dtype: str = "float32"
  adapter_param_dtype: str = "float32"

  def __post_init__(self):
    if self.remat_policy != "none" and self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"remat_policy must be 'none' or one of {sorted(REMAT_POLICIES)}, "
          f"got {self.remat_policy!r}."
      )
    if self.head_dim % 2 or min(rope_split(self.head_dim)) <= 0:
      raise ValueError(
          f"head_dim={self.head_dim} cannot be split into even RoPE channels "
          "for frames, height and width; it must be even and at least 6."
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x, timestep, text, ident=None, strength=None):
    """Wan's prediction (the flow velocity) for latents x at `timestep`.

    Args:
      x: float [B, T, H, W, in_channels]; T, H, W divisible by patch_size.
      timestep: [B], 0..1000.
      text: [B, L, text_dim] text-encoder embeddings (zero-padded, no mask).
      ident, strength: None, or an identity context and identity_strength [B]
        for the blocks' identity cross-attentions (see WanBlock).
    Returns:
      float32 [B, T, H, W, out_channels].
    """
    dtype = jnp.dtype(self.dtype)
    kw = dict(dtype=dtype, param_dtype=jnp.dtype(self.param_dtype))
    kw32 = dict(dtype=jnp.float32, param_dtype=jnp.dtype(self.param_dtype))
    pt, ph, pw = self.patch_size
    _, frames, height, width, _ = x.shape
    if frames % pt or height % ph or width % pw:
      raise ValueError(
          f"Latents {frames}x{height}x{width} are not divisible by the patch size "
          f"{tuple(self.patch_size)}."
      )
    grid = (frames // pt, height // ph, width // pw)
    if max(grid) > self.rope_max_seq_len:
      raise ValueError(
          f"Patch grid {grid} is longer than rope_max_seq_len="
          f"{self.rope_max_seq_len} on some axis."
      )
    dim = self.num_heads * self.head_dim

    tokens = einops.rearrange(
        x.astype(dtype), "b (f pt) (h ph) (w pw) c -> b f (h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw
    )
    h = blocks.dense(dim, ("conv_in", "embed"), name="patch_embedding", **kw)(tokens)
    h = nn.with_logical_constraint(h, TOKENS)

    # Conditioning, all float32 (see the module docstring).
    temb = timestep_embedding(timestep, self.freq_dim)
    temb = blocks.dense(dim, (None, "embed"), name="time_embedder_1", **kw32)(temb)
    temb = nn.with_logical_constraint(temb, ("batch", "embed"))
    temb = blocks.dense(dim, ("mlp", "embed"), name="time_embedder_2", **kw32)(nn.silu(temb))
    temb = nn.with_logical_constraint(temb, ("batch", "embed"))
    time6 = blocks.dense(6 * dim, ("embed", None), name="time_proj", **kw32)(nn.silu(temb))
    time6 = einops.rearrange(time6, "b (six d) -> b six d", six=6)
    context = blocks.dense(dim, (None, "embed"), name="text_embedder_1", **kw32)(text)
    context = nn.with_logical_constraint(context, ("batch", "length", "embed"))
    context = blocks.dense(dim, ("mlp", "embed"), name="text_embedder_2", **kw32)(
        nn.gelu(context, approximate=True)
    )
    context = nn.with_logical_constraint(context.astype(dtype), ("batch", "length", "embed"))

    block_cls = WanBlock
    if self.remat_policy != "none":
      # prevent_cse is not needed under scan, which already blocks CSE.
      block_cls = nn.remat(WanBlock, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=False)
    stack = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * 4,
        length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    h, _ = stack(
        grid=grid,
        num_heads=self.num_heads,
        head_dim=self.head_dim,
        ffn_dim=self.ffn_dim,
        cross_attn_norm=self.cross_attn_norm,
        eps=self.eps,
        implementation=attention.resolve_implementation(self.attention_impl),
        adapter_param_dtype=jnp.dtype(self.adapter_param_dtype),
        name="blocks",
        **kw,
    )(h, context, time6, ident, strength)

    # Output: shift and scale come from the time embedding itself, not time_proj.
    table = self.param(
        "scale_shift_table",
        nn.with_logical_partitioning(nn.initializers.normal(dim**-0.5), (None, "embed")),
        (2, dim),
        kw["param_dtype"],
    )
    shift, scale = (table.astype(jnp.float32)[i] + temb for i in range(2))
    h = modulate(LayerNorm32(self.eps, affine=False)(h), shift, scale).astype(dtype)
    out = blocks.dense(
        pt * ph * pw * self.out_channels, ("embed", "conv_out"), name="proj_out", **kw
    )(h)
    return einops.rearrange(
        out, "b f (h w) (pt ph pw c) -> b (f pt) (h ph) (w pw) c", h=grid[1], pt=pt, ph=ph, pw=pw
    ).astype(jnp.float32)
