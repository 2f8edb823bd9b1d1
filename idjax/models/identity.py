"""Identity tokens from frozen face-encoder features, the character bank, and
the routing that decides which video tokens see which character's tokens
(`identity_context`, shared by VideoDiT and the Wan adapters).

The frozen face encoder runs OUTSIDE the model; its outputs come in through
`IdentityInputs`. Per reference, the keys are a linear projection of every
spatial cell of the encoder's feature map plus the projected pooled embedding
as one more key (the article attended over the pooled vector alone, which
makes every query return the same value). A learned bank of Q queries
cross-attends to those keys (a resampler) and yields Q identity tokens.

Reference modes:
  "mean":  each reference is encoded on its own; tokens are averaged over the
           VALID references (the article's pooling).
  "joint": all of a character's references form one key set (invalid ones
           masked out) in a single resampler pass.
"""

from typing import Any

import einops
import flax
import flax.linen as nn
import jax.numpy as jnp

from idjax.models import attention
from idjax.models import blocks

Array = Any

REFERENCE_MODES = ("mean", "joint")
ROUTINGS = ("hard", "soft", "none")


@flax.struct.dataclass
class IdentityInputs:
  ref_embeddings: Array     # [B, C, K, D_face]
  ref_features: Array       # [B, C, K, N_cells, F]
  ref_valid: Array          # bool [B, C, K]
  char_valid: Array         # bool [B, C]; a sample with no valid character gets no identity update
  face_masks: Array | None  # float [B, C, T, H, W] in [0, 1] (pixel grid), None = unrouted
  # float [B, T, H, W, channels] in the model's space: the references drawn in
  # their boxes (conditioning.reference_canvas), for models with
  # reference_canvas=True; None = no canvas (zeros).
  ref_canvas: Array | None = None


class Resampler(nn.Module):
  """Learned queries [Q, D] cross-attend to keys [N, S, D] -> tokens [N, Q, D].

  `layers` pre-LN layers of (cross-attention + MLP), then a final LayerNorm.
  key_mask: bool [N, S] or None (all keys valid).
  """
  num_tokens: int
  layers: int
  num_heads: int
  mlp_ratio: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  implementation: str = "xla"

  @nn.compact
  def __call__(self, keys, key_mask=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = keys.shape[-1]
    queries = self.param(
        "queries", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
        (self.num_tokens, width), self.param_dtype)
    x = jnp.broadcast_to(queries.astype(self.dtype), (keys.shape[0],) + queries.shape)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    for i in range(self.layers):
      kv = blocks.layer_norm(f"norm_kv_{i}", **kw)(keys)
      h = blocks.layer_norm(f"norm_q_{i}", **kw)(x)
      x = x + attention.Attention(self.num_heads, implementation=self.implementation,
                                  name=f"attn_{i}", **kw)(h, kv, mask)
      h = blocks.layer_norm(f"norm_mlp_{i}", **kw)(x)
      x = x + blocks.Mlp(self.mlp_ratio, name=f"mlp_{i}", **kw)(h)
    return blocks.layer_norm("norm_out", **kw)(x)


class IdentityEncoder(nn.Module):
  """IdentityInputs -> (tokens [B, C, Q, D], valid bool [B, C]).

  A character is valid when char_valid says so AND it has at least one valid
  reference. Tokens of invalid characters are whatever the resampler gives
  (zeros in "mean" mode); callers must mask them with `valid`.

  Attributes:
    width: D, the video model's width.
    num_tokens: Q identity tokens per character.
    layers, num_heads, mlp_ratio: of the resampler.
    reference_mode: "mean" or "joint" (see the module docstring).
    implementation: attention implementation (resolved for this backend).
  """
  width: int
  num_tokens: int
  layers: int
  num_heads: int
  mlp_ratio: float
  reference_mode: str
  implementation: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    # Configs are checked on load (idjax/config_rules.py); this catches a
    # module built by hand, before any tracing.
    if self.reference_mode not in REFERENCE_MODES:
      raise ValueError(f"reference_mode must be one of {REFERENCE_MODES}, "
                       f"got {self.reference_mode!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs: IdentityInputs):
    dtype = self.dtype
    kw = dict(dtype=dtype, param_dtype=self.param_dtype)
    width = self.width
    b, c, k, n_cells, _ = inputs.ref_features.shape

    # Batch-sharded outputs, as for the adaLN in blocks.DiTBlock.
    cells = blocks.dense(width, (None, "embed"), name="cell_proj", **kw)(
        inputs.ref_features.astype(dtype))
    cells = nn.with_logical_constraint(cells, ("batch", "chars", "refs", None, "embed"))
    pooled = blocks.dense(width, (None, "embed"), name="embedding_proj", **kw)(
        inputs.ref_embeddings.astype(dtype))
    pooled = nn.with_logical_constraint(pooled, ("batch", "chars", "refs", "embed"))
    keys = jnp.concatenate([cells, pooled[..., None, :]], axis=-2)      # [B,C,K,S,D]
    # Attention is blind to key order, so the slot (which cell, or the pooled
    # vector) is added as a learned embedding.
    slot = self.param("key_slot", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (n_cells + 1, width), self.param_dtype)
    keys = keys + slot.astype(dtype)

    resampler = Resampler(self.num_tokens, self.layers, self.num_heads, self.mlp_ratio,
                          implementation=self.implementation, name="resampler", **kw)
    ref_valid = inputs.ref_valid.astype(bool)
    if self.reference_mode == "mean":
      tokens = resampler(einops.rearrange(keys, "b c k s d -> (b c k) s d"))
      tokens = einops.rearrange(tokens, "(b c k) q d -> b c k q d", b=b, c=c)
      w = ref_valid.astype(dtype)
      count = jnp.maximum(w.sum(-1), 1.0)
      tokens = jnp.einsum("bckqd,bck->bcqd", tokens, w) / count[..., None, None]
    else:  # "joint"
      key_mask = einops.repeat(ref_valid, "b c k -> (b c) (k s)", s=n_cells + 1)
      tokens = resampler(einops.rearrange(keys, "b c k s d -> (b c) (k s) d"), key_mask)
      tokens = einops.rearrange(tokens, "(b c) q d -> b c q d", b=b)
    valid = inputs.char_valid.astype(bool) & jnp.any(ref_valid, axis=-1)
    tokens = nn.with_logical_constraint(tokens, ("batch", "chars", "length", "embed"))
    return tokens, valid


class CharacterBank(nn.Module):
  """Per-character tokens [B, C, Q, D] -> one sequence for a shared softmax.

  Used only where several characters' tokens share ONE softmax (routing
  "none", or no face masks): each character's tokens get a learned
  character-index embedding, followed by a learned separator token
  (`use_separator`), giving [B, C * (Q + 1), D] (or C * Q) and a key mask that
  drops absent characters. Under mask routing ("hard"/"soft") each video token
  only sees its own character's tokens, so neither is used there, and the
  model is equivariant to permuting characters (with their masks and
  references).
  """
  max_characters: int
  use_separator: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, valid):
    b, c, q, d = tokens.shape
    if c > self.max_characters:
      raise ValueError(f"{c} characters given but the model has max_characters="
                       f"{self.max_characters}.")
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))
    index = self.param("character_index", init, (self.max_characters, d), self.param_dtype)
    tokens = tokens + index[:c].astype(self.dtype)[None, :, None, :]
    if self.use_separator:
      sep = self.param("separator", init, (1, d), self.param_dtype).astype(self.dtype)
      tokens = jnp.concatenate([tokens, jnp.broadcast_to(sep, (b, c, 1, d))], axis=2)
    per_char = tokens.shape[2]
    bank = einops.rearrange(tokens, "b c q d -> b (c q) d")
    mask = einops.repeat(valid, "b c -> b (c q)", q=per_char)
    return bank, mask


def pool_masks(face_masks, patch_size):
  """Face masks [B, C, T, H, W] (pixels) -> coverage [B, T', P, C] in [0, 1]."""
  pt, ph, pw = patch_size
  return einops.reduce(face_masks.astype(jnp.float32),
                       "b c (t pt) (h ph) (w pw) -> b t (h w) c", "mean", pt=pt, ph=ph, pw=pw)


def route_by_masks(face_masks, tokens, valid, routing, patch_size):
  """The routed identity context (see blocks.IdentityAttention).

  "hard": a patch may attend to a character whose face covers >= half of it.
  "soft": every valid character, weighted by its coverage of the patch.
  """
  coverage = pool_masks(face_masks, patch_size)                        # [B,T,P,C]
  if routing == "hard":
    return {"tokens": tokens, "allowed": (coverage >= 0.5) & valid[:, None, None, :]}
  weights = coverage * valid[:, None, None, :].astype(coverage.dtype)
  return {"tokens": tokens, "weights": weights, "valid": valid}


def identity_context(identity: IdentityInputs, tokens, valid, *, routing, patch_size,
                     max_characters, use_separator, dtype, param_dtype):
  """What blocks.IdentityAttention reads (the `ident` dict of blocks.DiTBlock).

  Routed by the face masks ("hard"/"soft"), or, without masks or with routing
  "none", one character bank for a shared softmax. Call it inside the
  model's compact method: the bank's params ("character_bank") are the
  caller's.
  """
  if identity.face_masks is None or routing == "none":
    bank, mask = CharacterBank(max_characters, use_separator, name="character_bank",
                               dtype=dtype, param_dtype=param_dtype)(tokens, valid)
    return {"bank": bank, "bank_mask": mask}
  return route_by_masks(identity.face_masks, tokens, valid, routing, patch_size)
