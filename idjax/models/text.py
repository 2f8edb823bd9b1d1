"""A small bidirectional text encoder over word tokens (0 = padding).

Trained from scratch with the video model; prompts come from a closed
vocabulary (`idjax.data.prompts.VOCABULARY`). Positions enter through RoPE in
self-attention, so prompt length is not baked into the parameters.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from idjax.models import attention
from idjax.models import blocks
from idjax.models import rope


class TextEncoder(nn.Module):
  """tokens int32 [B, L] -> (embeddings [B, L, text_width], mask bool [B, L]).

  An all-zero row (no text) gives an all-False mask, which makes the video
  model's text cross-attention add exactly zero.

  Attributes:
    vocab_size: rows of the embedding table; it must cover the tokenizer's
      ids (config_rules checks model.text_vocab_size against the prompt
      vocabulary when a config is loaded).
    width: text_width, the embedding size.
    layers: transformer layers (0: embeddings only).
    num_heads, mlp_ratio: of each layer.
    implementation: attention implementation (resolved for this backend).
  """
  vocab_size: int
  width: int
  layers: int
  num_heads: int
  mlp_ratio: float
  implementation: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mask = tokens != 0
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")), name="embed", **kw)(tokens)
    angles = rope.rope_angles(rope.grid_positions(tokens.shape[1]), self.width // self.num_heads)
    for i in range(self.layers):
      h = blocks.layer_norm(f"norm_attn_{i}", **kw)(x)
      x = x + attention.Attention(self.num_heads, implementation=self.implementation,
                                  name=f"attn_{i}", **kw)(
          h, mask=mask[:, None, None, :], q_angles=angles, k_angles=angles)
      h = blocks.layer_norm(f"norm_mlp_{i}", **kw)(x)
      x = x + blocks.Mlp(self.mlp_ratio, name=f"mlp_{i}", **kw)(h)
    x = blocks.layer_norm("norm_out", **kw)(x)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), mask
