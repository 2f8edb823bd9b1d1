"""A small bidirectional text encoder over word tokens (0 = padding).

Trained from scratch with the video model; prompts come from a closed
vocabulary (`idjax.data.prompts.VOCABULARY`). Positions enter through RoPE in
self-attention, so prompt length is not baked into the parameters.
"""

import flax.linen as nn
import ml_collections

from idjax.models import attention
from idjax.models import blocks
from idjax.models import rope


def check_vocab_size(vocab_size: int) -> None:
  """The embedding table must cover the tokenizer's vocabulary.

  The config holds a fixed upper bound (a multiple of 64 shards evenly); the
  import is lazy so the model does not depend on the data package at import.
  """
  from idjax.data import prompts
  if vocab_size < len(prompts.VOCABULARY):
    raise ValueError(f"text_vocab_size={vocab_size} is smaller than the prompt vocabulary "
                     f"({len(prompts.VOCABULARY)} words).")


class TextEncoder(nn.Module):
  """tokens int32 [B, L] -> (embeddings [B, L, text_width], mask bool [B, L]).

  An all-zero row (no text) gives an all-False mask, which makes the video
  model's text cross-attention add exactly zero.
  """
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, tokens):
    cfg = self.config
    dtype, param_dtype = blocks.dtypes(cfg)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    check_vocab_size(cfg.text_vocab_size)
    mask = tokens != 0
    x = nn.Embed(cfg.text_vocab_size, cfg.text_width, dtype=dtype, param_dtype=param_dtype,
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(0.02), ("vocab", "embed")), name="embed")(tokens)
    angles = rope.rope_angles(rope.grid_positions(tokens.shape[1]),
                              cfg.text_width // cfg.num_heads)
    impl = attention.resolve_implementation(cfg.attention_impl)
    for i in range(cfg.text_layers):
      h = blocks.layer_norm(f"norm_attn_{i}", **kw)(x)
      x = x + attention.Attention(cfg.num_heads, implementation=impl, name=f"attn_{i}", **kw)(
          h, mask=mask[:, None, None, :], q_angles=angles, k_angles=angles)
      h = blocks.layer_norm(f"norm_mlp_{i}", **kw)(x)
      x = x + blocks.Mlp(cfg.mlp_ratio, name=f"mlp_{i}", **kw)(h)
    x = blocks.layer_norm("norm_out", **kw)(x)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), mask
