"""The triple-attention transformer block of the video DiT.

One block, on video tokens x [B, T, P, D] (T frames of P = h*w patches):

  1. spatial self-attention inside each frame      (adaLN-Zero, 2-axis RoPE)
  2. temporal self-attention at each location      (adaLN-Zero, 1-axis RoPE)
  3. text cross-attention                          (pre-LN, zero-init output)
  4. identity cross-attention, routed by face masks (pre-LN, zero-init output,
     scaled by identity_strength)
  5. MLP with GELU                                 (adaLN-Zero)

The adaLN modulation is zero-initialised, so every gate starts at 0 and the
block starts as the identity map (DiT's adaLN-Zero).

Every module takes its settings as fields (VideoDiT passes them; see
`idjax.models.build_model` for where they come from in a config).
`implementation` is an attention implementation already resolved for this
backend (`attention.resolve_implementation`).
"""

from typing import Any

import einops
import flax.linen as nn
import jax.numpy as jnp

from idjax.models import attention
from idjax.models import rope


def layer_norm(name, *, affine=True, dtype=jnp.float32, param_dtype=jnp.float32):
  """LayerNorm with logically named params; `affine=False` for adaLN."""
  return nn.LayerNorm(
      epsilon=1e-6, use_scale=affine, use_bias=affine, dtype=dtype, param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
      name=name)


def dense(features, names, *, dtype, param_dtype, zero_init=False, name=None):
  kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(
      features, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[-1:]))


class Mlp(nn.Module):
  """x [..., D] -> GELU MLP with hidden width mlp_ratio * D -> [..., D]."""
  mlp_ratio: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(int(width * self.mlp_ratio), ("embed", "mlp"), name="fc1", **kw)(x)
    h = nn.gelu(h)
    return dense(width, ("mlp", "embed"), name="fc2", **kw)(h)


def per_token(v, x):
  """A modulation v, per example [B, D] or per frame [B, T, D] (per-frame
  timesteps), shaped to broadcast against tokens x [B, T, ..., D]."""
  lead = v.shape[:-1]
  return v.reshape(lead + (1,) * (x.ndim - len(lead) - 1) + v.shape[-1:])


def modulate(x, shift, scale):
  """adaLN: x [B, T, ..., D] with shift, scale [B, D] or [B, T, D] (`per_token`)."""
  return x * (1 + per_token(scale, x)) + per_token(shift, x)


class SpatialAttention(nn.Module):
  """x [B,T,P,D] -> x + gate * attention within each frame (2-axis RoPE on (h, w)).

  Frames never mix: with frames sharded this layer needs no communication.
  shift, scale, gate: [B, D] adaLN-Zero modulation. `grid` = (h, w) patches
  per frame.
  """
  grid: tuple[int, int]
  num_heads: int
  implementation: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, shift, scale, gate):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b = x.shape[0]
    x = nn.with_logical_constraint(x, ("batch", "frames", "patches", "embed"))
    h = modulate(layer_norm("norm", affine=False, **kw)(x), shift, scale)
    h = einops.rearrange(h, "b t p d -> (b t) p d")
    angles = rope.rope_angles(rope.grid_positions(*self.grid), x.shape[-1] // self.num_heads)
    h = attention.Attention(self.num_heads, implementation=self.implementation, name="attn",
                            **kw)(h, q_angles=angles, k_angles=angles)
    return x + per_token(gate, x) * einops.rearrange(h, "(b t) p d -> b t p d", b=b)


# Frames per block of temporal attention's queries on long clips (XLA): the
# one attention whose length grows with the clip, so its score matrix would
# grow with frames squared (attention._attend_query_blocks). Training clips
# and default samples are shorter, so they attend all at once, as before.
TEMPORAL_QUERY_BLOCK = 64


class TemporalAttention(nn.Module):
  """x [B,T,P,D] -> x + gate * attention across frames at each location (RoPE on t).

  Locations never mix. The input is constrained to (batch, temporal_frames,
  temporal_patches, embed): the one resharding, moving `sequence` from frames
  to patches. With `temporal_causal`, frame t sees only frames <= t.
  """
  num_heads: int
  temporal_causal: bool
  implementation: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, shift, scale, gate):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, t = x.shape[:2]
    x = nn.with_logical_constraint(x, ("batch", "temporal_frames", "temporal_patches", "embed"))
    h = modulate(layer_norm("norm", affine=False, **kw)(x), shift, scale)
    h = einops.rearrange(h, "b t p d -> (b p) t d")
    angles = rope.rope_angles(rope.grid_positions(t), x.shape[-1] // self.num_heads)
    h = attention.Attention(self.num_heads, implementation=self.implementation, name="attn",
                            query_block=TEMPORAL_QUERY_BLOCK, **kw)(
                                h, q_angles=angles, k_angles=angles,
                                is_causal=self.temporal_causal)
    x = x + per_token(gate, x) * einops.rearrange(h, "(b p) t d -> b t p d", b=b)
    return nn.with_logical_constraint(x, ("batch", "frames", "patches", "embed"))


class IdentityAttention(nn.Module):
  """The identity update [B,T,P,D] (to be ADDED to x), routed by face masks.

  ident is one of (see DiTBlock):
    {"bank", "bank_mask"}: one softmax over all valid characters' tokens.
    {"tokens", "allowed"}: hard routing; a token attends to the union of the
        characters whose coverage >= 0.5 there; no such character -> zero.
    {"tokens", "weights", "valid"}: soft routing; one softmax per character,
        outputs summed with weights = coverage (0 for invalid characters).
  The update is multiplied by strength [B], so strength 0 adds exactly 0.
  """
  num_heads: int
  implementation: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, ident, strength):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t = x.shape[1]
    h = einops.rearrange(layer_norm("norm", **kw)(x), "b t p d -> b (t p) d")
    layer = attention.Attention(self.num_heads, implementation=self.implementation,
                                zero_init_out=True, name="attn", **kw)
    if "bank" in ident:
      h = layer(h, ident["bank"], ident["bank_mask"][:, None, None, :])
    elif "allowed" in ident:
      tokens = ident["tokens"]
      allowed = einops.repeat(ident["allowed"], "b t p c -> b (t p) (c q)", q=tokens.shape[2])
      h = layer(h, einops.rearrange(tokens, "b c q d -> b (c q) d"), allowed[:, None])
    else:
      weights = einops.rearrange(ident["weights"], "b t p c -> b (t p) c")
      h = layer(h, ident["tokens"], ident["valid"][:, :, None, None, None], group_weights=weights)
    h = h * strength.astype(h.dtype)[:, None, None]
    return einops.rearrange(h, "b (t p) d -> b t p d", t=t)


class DiTBlock(nn.Module):
  """Triple-attention block. `grid` = (h, w) patches per frame (static).

  Call: (x, cond, text, text_mask, ident, strength) -> (x, None); the pair
  return is what `nn.scan` wants.
    x         [B, T, P, D] video tokens, P = h * w
    cond      [B, D] timestep embedding, or [B, T, D] with per-frame timesteps
    text      [B, L, Dt] text embeddings; text_mask bool [B, L] (all False =
              no text: the text update is exactly zero)
    ident     None (no identity path at all) or a dict of arrays, one of:
                {"bank" [B, S, D], "bank_mask" bool [B, S]}   one softmax over
                    all valid characters (unrouted / routing "none")
                {"tokens" [B, C, Q, D], "allowed" bool [B, T, P, C]}   hard
                {"tokens" [B, C, Q, D], "weights" [B, T, P, C], "valid" bool
                    [B, C]}   soft
    strength  [B] identity_strength (ignored when ident is None)
  """
  grid: tuple[int, int]
  num_heads: int
  mlp_ratio: float
  temporal_causal: bool
  implementation: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, text, text_mask, ident, strength):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads, impl = self.num_heads, self.implementation
    t = x.shape[1]
    mod = dense(9 * x.shape[-1], ("embed", None), zero_init=True, name="adaln", **kw)(
        nn.silu(cond))
    # Batch-sharded, as x is: each device then computes its own examples at
    # full width, on the shapes one device would use. Left to itself XLA may
    # split this small product along the fsdp-sharded kernel instead, and
    # other shapes (or partial sums) change the last bits, which sampling's
    # bit-identical frames across meshes cannot afford.
    mod = nn.with_logical_constraint(mod, ("batch", None) if mod.ndim == 2
                                     else ("batch", "frames", None))
    (sh_s, sc_s, g_s, sh_t, sc_t, g_t, sh_m, sc_m, g_m) = jnp.split(mod, 9, axis=-1)

    x = SpatialAttention(self.grid, heads, impl, name="spatial", **kw)(x, sh_s, sc_s, g_s)
    x = TemporalAttention(heads, self.temporal_causal, impl, name="temporal", **kw)(
        x, sh_t, sc_t, g_t)

    # Text cross-attention (pre-LN, zero-init output).
    h = einops.rearrange(layer_norm("norm_text", **kw)(x), "b t p d -> b (t p) d")
    h = attention.Attention(heads, implementation=impl, zero_init_out=True, name="text", **kw)(
        h, text, text_mask[:, None, None, :])
    x = x + einops.rearrange(h, "b (t p) d -> b t p d", t=t)

    # With ident None the identity branch does not exist; with strength 0 it
    # adds exactly 0.0, so the output is bitwise the same.
    if ident is not None:
      x = x + IdentityAttention(heads, impl, name="identity", **kw)(x, ident, strength)

    h = modulate(layer_norm("norm_mlp", affine=False, **kw)(x), sh_m, sc_m)
    x = x + per_token(g_m, x) * Mlp(self.mlp_ratio, name="mlp", **kw)(h)
    x = nn.with_logical_constraint(x, ("batch", "frames", "patches", "embed"))
    return x, None
