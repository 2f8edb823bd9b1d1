"""Multi-head attention on `jax.nn.dot_product_attention`, with safe masking.

Everything that attends in idjax (spatial, temporal, text, identity, the
identity resampler, the text encoder) goes through `Attention`, so the
implementation switch (`xla` / `cudnn`) and the fully-masked-row rule live in
one place.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from idjax.models import rope

IMPLEMENTATIONS = ("xla", "cudnn")


def resolve_implementation(name: str):
  """config.model.attention_impl -> the `implementation` argument.

  "cudnn" only exists on GPUs; elsewhere (CPU tests, TPU pods, eval_shape of
  the base config on a laptop) it falls back to XLA so a config runs anywhere.
  """
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention_impl must be 'xla' or 'cudnn', got {name!r}.")
  if name == "cudnn" and jax.default_backend() != "gpu":
    return "xla"
  return name


def dot_product_attention(q, k, v, mask=None, *, is_causal=False, implementation="xla",
                          query_block=None):
  """softmax(q k^T / sqrt(H)) v, zero where a query row has no allowed key.

  Args:
    q: [B, Lq, N, H]; k, v: [B, Lk, N, H].
    mask: bool, broadcastable to [B, N, Lq, Lk]; True = may attend.
    is_causal: query i sees keys j <= i (Lq == Lk).
    query_block: with XLA and no causal mask, attend this many query rows at
      a time when Lq is longer (see `_attend_query_blocks`); None: all at once.
  Returns:
    [B, Lq, N, H]. A query whose keys are all masked gets exactly zero (the
    softmax alone would give NaN or a uniform average of masked values); this
    is what makes "no text", "no identity" and "outside every face" null
    updates.
  """
  if mask is None:
    any_key, attend_mask = None, None
  else:
    mask = jnp.broadcast_to(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    any_key = jnp.any(mask, axis=-1, keepdims=True)        # [B, N, Lq, 1]
    # A row with no allowed key attends to every key instead, and is zeroed
    # below. Its zero cotangent then adds nothing to any gradient, whereas
    # cuDNN's backward pass gives NaN in dq for a fully-masked row (seen on
    # an H200, jax 0.11.2: scripts/check_cudnn_attention.py).
    attend_mask = mask | ~any_key
  if implementation == "cudnn":
    out = _attend_even_lengths(q, k, v, attend_mask, is_causal, implementation)
  elif query_block is not None and q.shape[1] > query_block and not is_causal:
    out = _attend_query_blocks(q, k, v, attend_mask, query_block)
  else:
    out = jax.nn.dot_product_attention(
        q, k, v, mask=attend_mask, is_causal=is_causal, implementation=implementation)
  if any_key is not None:
    keep = jnp.transpose(any_key[..., 0], (0, 2, 1))[..., None]  # [B, Lq, N, 1]
    out = jnp.where(keep, out, jnp.zeros_like(out))
  return out


def _attend_query_blocks(q, k, v, mask, block):
  """XLA attention `block` query rows at a time (a sequential lax.map).

  XLA's attention holds the whole [B, N, Lq, Lk] score matrix, so memory is
  quadratic in the sequence: temporal attention over a 480-frame clip took
  476 MiB of step temporaries for the demo model, against 126 at 240
  (bench/sample_frames.py). Blocks of query rows keep [B, N, block, Lk] at a
  time, linear in Lk. Each row's softmax is its own, so the result is the
  same attention (to float rounding: XLA fuses the blocked form otherwise);
  the queries are padded to a whole number of blocks, the pad rows sliced
  away.
  """
  b, lq, n, h = q.shape
  blocks = -(-lq // block)
  pad = blocks * block - lq
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  q = jnp.moveaxis(q.reshape(b, blocks, block, n, h), 1, 0)
  # Rematerialised, so the backward pass keeps each block's inputs, not its
  # scores: otherwise the saved residuals are the whole score matrix again.
  attend = jax.checkpoint(lambda qb, mb: jax.nn.dot_product_attention(qb, k, v, mask=mb))
  if mask is None:
    out = jax.lax.map(lambda qb: attend(qb, None), q)
  else:
    mask = jnp.broadcast_to(mask, (b, n, lq, k.shape[1]))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)
    mask = jnp.moveaxis(mask.reshape(b, n, blocks, block, k.shape[1]), 2, 0)
    out = jax.lax.map(lambda a: attend(*a), (q, mask))
  return jnp.moveaxis(out, 0, 1).reshape(b, blocks * block, n, h)[:, :lq]


def _attend_even_lengths(q, k, v, mask, is_causal, implementation):
  """Attention with both sequence lengths padded to even.

  cuDNN's flash kernel refuses a mask (a bias, to it) in training when a
  length is odd, and ours are often odd (3 references x 17 cells = 51 keys).
  The extra key is masked out, so real rows are unchanged; the extra query row
  sees every key (a fully-masked pad row could put NaN into the backward
  pass) and is sliced away.
  """
  lq, lk = q.shape[1], k.shape[1]
  pad_q, pad_k = lq % 2, lk % 2
  if is_causal:          # causal needs Lq == Lk; the pad key sits after every real query
    pad_q = pad_k = max(pad_q, pad_k)
  if not (pad_q or pad_k):
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=is_causal, implementation=implementation)
  if mask is None:
    mask = jnp.ones((q.shape[0], q.shape[2], lq, lk), bool)
  seq_pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad_k)), constant_values=False)
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_q), (0, 0)), constant_values=True)
  out = jax.nn.dot_product_attention(
      seq_pad(q, pad_q), seq_pad(k, pad_k), seq_pad(v, pad_k), mask=mask,
      is_causal=is_causal, implementation=implementation)
  return out[:, :lq]


class HeadProjection(nn.Module):
  """Contracts the last `contract` axes of x with a kernel [*x.shape[-contract:], *features].

  Used for [.., D] -> [.., N, H] (q, k, v) and [.., N, H] -> [.., D] (out).
  A hand-rolled DenseGeneral: Flax's reshapes a boxed kernel, which breaks
  logical sharding constraints on multi-axis kernels inside a mesh context.
  """
  features: tuple[int, ...]
  contract: int
  names: tuple[str | None, ...]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  zero_init: bool = False
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    n_in = self.contract
    shape = tuple(x.shape[-n_in:]) + tuple(self.features)
    init = nn.initializers.zeros_init() if self.zero_init else nn.initializers.lecun_normal(
        in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, len(shape))))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names), shape,
                        self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=n_in)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), self.names[n_in:]), tuple(self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class Attention(nn.Module):
  """Multi-head (self- or cross-) attention with optional RoPE on q and k.

  Attributes:
    num_heads: N; head size is width // N.
    zero_init_out: output projection starts at zero, so a residual branch
      built on it starts as the identity map.
  """
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  implementation: str = "xla"
  zero_init_out: bool = False
  query_block: int | None = None  # see dot_product_attention

  @nn.compact
  def __call__(self, x, context=None, mask=None, *, q_angles=None, k_angles=None,
               is_causal=False, group_weights=None):
    """x [B, Lq, D] attends to context [B, Lk, Dc] (default: x) -> [B, Lq, D].

    mask: bool broadcastable to [B, N, Lq, Lk]. q_angles / k_angles: RoPE
    tables [Lq, R/2] / [Lk, R/2] (see rope.rope_angles).

    Grouped form (soft identity routing): context [B, G, Lk, Dc], mask
    broadcastable to [B, G, N, Lq, Lk], group_weights [B, Lq, G]. Each group
    gets its own softmax; the per-group outputs are summed with the weights
    (before the output projection, which is linear, so this is the same as
    summing projected outputs).
    """
    context = x if context is None else context
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
    head_dim = width // self.num_heads
    proj = lambda name: HeadProjection(
        (self.num_heads, head_dim), 1, ("embed", "heads", "head_dim"), self.dtype,
        self.param_dtype, name=name)
    q = proj("query")(x)
    k = proj("key")(context)
    v = proj("value")(context)
    if q_angles is not None:
      q = rope.apply_rope(q, q_angles)
    if k_angles is not None:
      k = rope.apply_rope(k, k_angles)
    attend = lambda k, v, m: dot_product_attention(
        q, k, v, m, is_causal=is_causal, implementation=self.implementation,
        query_block=self.query_block)
    if group_weights is None:
      out = attend(k, v, mask)
    else:
      mask = jnp.broadcast_to(mask, (q.shape[0], k.shape[1], self.num_heads, q.shape[1], k.shape[2]))
      per_group = jax.vmap(attend, in_axes=(1, 1, 1), out_axes=3)(k, v, mask)  # [B,Lq,N,G,H]
      out = jnp.einsum("bqngh,bqg->bqnh", per_group, group_weights.astype(per_group.dtype))
    # No output bias: a query with nothing to attend to must stay exactly zero
    # after the projection (no text, no valid character, outside every face).
    return HeadProjection((width,), 2, ("heads", "head_dim", "embed"), self.dtype,
                          self.param_dtype, zero_init=self.zero_init_out, use_bias=False,
                          name="out")(out)
