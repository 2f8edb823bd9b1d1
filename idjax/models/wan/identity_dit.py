"""Identity adapters on the Wan 2.1 DiT: the project's identity path on a (frozen) Wan backbone.

  x [B,T,H,W,C], t [B] -> WanTransformer ("backbone", the published T2V DiT)
  with, after each block's text cross-attention, the project's face-mask-
  routed identity cross-attention (blocks.IdentityAttention) reading the
  resampler's identity tokens (identity.IdentityEncoder) -> velocity [B,T,H,W,C].

The call is VideoDiT's, so the trainer, the losses and the samplers use
either model unchanged (config.model.backbone picks one in build_model).

Velocity convention. Wan is trained with diffusers' flow matching
(FlowMatchEulerDiscreteScheduler): x_sigma = (1 - sigma) x0 + sigma noise,
timestep = 1000 sigma, and the network predicts d x_sigma / d sigma =
noise - x0 (the scheduler steps x + (sigma_next - sigma) v). That is
idjax's rectified flow exactly (idjax.diffusion: x_t = (1 - t) x0 + t noise,
v = noise - x0) with t = sigma, so the only conversion is timestep =
1000 t; the output is the velocity idjax's losses and samplers expect, with
no change of sign (model.prediction must be "velocity").

Zero-initialised adapters. Every identity cross-attention's output
projection starts at zero, so a fresh adapter adds exactly 0.0 and the
output is bit for bit the backbone's; the update is multiplied by
identity_strength, so strength 0 equals no references at all.

Text. Wan reads UMT5-XXL embeddings [B, L, text_dim], zero-padded and not
masked. Real sizes take them precomputed (`text_embeddings`;
text_vocab_size = 0). The tiny synthetic configs instead embed the
project's prompt tokens with a small trainable table into text_dim
("prompt_embedding"): the synthetic world has a 44-word vocabulary and no
UMT5 (nor its 11 GB of weights) exists offline. Either way positions whose
token is 0 (padding, or the trainer's text dropout) become zero vectors,
which is how Wan's pipeline pads, so "no text" is an all-zero context.

The adapter params (what train.trainable = "adapters" trains) are those
under `adapter_scopes`: the identity encoder, the blocks' identity
attentions, the character bank, and the prompt table when there is one.
"""

import flax.linen as nn
import jax.numpy as jnp

from idjax.models import attention
from idjax.models import identity as identity_lib
from idjax.models.remat import REMAT_POLICIES
from idjax.models.wan.transformer import WanTransformer

# Wan 2.1's transformer/config.json values that no config changes.
EPS = 1e-6
ROPE_MAX_SEQ_LEN = 1024
CROSS_ATTN_NORM = True


class WanIdentityDiT(nn.Module):
  """The Wan DiT with identity adapters (see the module docstring).

  Built from a config by `idjax.models.build_model` (config.model.backbone
  = "wan").

  Attributes:
    patch_size: (frames, height, width) of a patch; Wan 2.1 uses (1, 2, 2).
    num_heads, head_dim: attention heads of backbone and adapters.
    channels: latent channels in and out.
    text_dim: width of the text embeddings (UMT5-XXL: 4096).
    freq_dim: size of the sinusoidal timestep embedding.
    ffn_dim, num_layers: of the Wan blocks.
    text_vocab_size: rows of the prompt-token table; 0 = no table, the
      model takes precomputed `text_embeddings`.
    num_identity_tokens, identity_layers, mlp_ratio, reference_mode: of the
      identity encoder (tokens per character, resampler layers, its MLP
      ratio, "mean" or "joint").
    max_characters, use_separator: of the character bank (unrouted identity).
    identity_routing: "hard", "soft" or "none" (identity.route_by_masks).
    attention_impl: "xla" or "cudnn".
    remat_policy: "none" or a key of remat.REMAT_POLICIES.
    dtype: name of the compute dtype.
    param_dtype: of the adapters (and the prompt table): what trains.
    backbone_param_dtype: of the Wan backbone.
  """

  patch_size: tuple[int, int, int]
  num_heads: int
  head_dim: int
  channels: int
  text_dim: int
  freq_dim: int
  ffn_dim: int
  num_layers: int
  text_vocab_size: int
  num_identity_tokens: int
  identity_layers: int
  mlp_ratio: float
  reference_mode: str
  max_characters: int
  use_separator: bool
  identity_routing: str
  attention_impl: str
  remat_policy: str
  dtype: str
  param_dtype: str
  backbone_param_dtype: str

  # Read by the trainer and the sampler, as VideoDiT's fields of these names:
  # the backbone's input is the published patch embedding of the latents, so
  # there are no reference-canvas channels.
  reference_canvas = False
  # Top-level and per-block param scopes of the identity path (see
  # train.state.trainable_filter).
  adapter_scopes = ("identity", "character_bank", "prompt_embedding")

  @property
  def reads_text_embeddings(self) -> bool:
    """True when the model takes precomputed `text_embeddings` (no prompt table)."""
    return not self.text_vocab_size

  def __post_init__(self):
    # Configs are checked when loaded (idjax/config_rules.py); this catches a
    # model built by hand with a bad option, before anything is traced.
    choices = dict(
        identity_routing=identity_lib.ROUTINGS,
        reference_mode=identity_lib.REFERENCE_MODES,
        remat_policy=("none",) + tuple(REMAT_POLICIES),
        attention_impl=attention.IMPLEMENTATIONS,
    )
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      x,
      t,
      text_tokens,
      identity=None,
      identity_strength=None,
      *,
      deterministic=True,
      text_embeddings=None,
  ):
    """Velocity for noisy latents x at noise level t (VideoDiT's contract).

    Args:
      x: float [B, T, H, W, channels]; T, H, W divisible by the patch size.
      t: [B] in [0, 1], 1 = pure noise (Wan's sigma; timestep = 1000 t).
      text_tokens: int32 [B, L], 0 = pad; an all-zero row = no text. Embedded
        by the prompt table, or, with `text_embeddings`, only a mask (may be
        None).
      identity: IdentityInputs or None (no identity path).
      identity_strength: [B] in [0, 1] scaling the identity update (None = 1).
      deterministic: the model has no dropout; accepted for a uniform
        train/eval call signature.
      text_embeddings: precomputed [B, L, text_dim] UMT5 embeddings; required
        when text_vocab_size is 0.
    Returns:
      float32 [B, T, H, W, channels], the velocity noise - x0.
    """
    del deterministic
    if jnp.ndim(t) != 1:
      raise ValueError(
          "the Wan backbone takes one timestep per example (t [B]); per-frame "
          "timesteps (train.context_prob) need model.backbone = 'idjax'."
      )
    dtype = jnp.dtype(self.dtype)
    kw = dict(dtype=dtype, param_dtype=jnp.dtype(self.param_dtype))
    b = x.shape[0]
    text = self._text(text_tokens, text_embeddings)

    ident = strength = None
    if identity is not None:
      strength = (
          jnp.ones((b,), dtype)
          if identity_strength is None
          else jnp.asarray(identity_strength, dtype).reshape(b)
      )
      tokens, valid = identity_lib.IdentityEncoder(
          self.num_heads * self.head_dim,
          self.num_identity_tokens,
          self.identity_layers,
          self.num_heads,
          self.mlp_ratio,
          self.reference_mode,
          attention.resolve_implementation(self.attention_impl),
          name="identity",
          **kw,
      )(identity)
      ident = identity_lib.identity_context(
          identity,
          tokens,
          valid,
          routing=self.identity_routing,
          patch_size=self.patch_size,
          max_characters=self.max_characters,
          use_separator=self.use_separator,
          **kw,
      )

    backbone = WanTransformer(
        patch_size=tuple(self.patch_size),
        num_heads=self.num_heads,
        head_dim=self.head_dim,
        in_channels=self.channels,
        out_channels=self.channels,
        text_dim=self.text_dim,
        freq_dim=self.freq_dim,
        ffn_dim=self.ffn_dim,
        num_layers=self.num_layers,
        cross_attn_norm=CROSS_ATTN_NORM,
        eps=EPS,
        rope_max_seq_len=ROPE_MAX_SEQ_LEN,
        attention_impl=self.attention_impl,
        remat_policy=self.remat_policy,
        dtype=self.dtype,
        param_dtype=self.backbone_param_dtype,
        adapter_param_dtype=self.param_dtype,
        name="backbone",
    )
    # Same flow, same sign (module docstring): only the time unit changes.
    return backbone(x, 1000.0 * t.astype(jnp.float32), text, ident, strength)

  def _text(self, text_tokens, text_embeddings):
    """The backbone's text input [B, L, text_dim], float32, zero where the token is 0."""
    if text_embeddings is None:
      if not self.text_vocab_size:
        raise ValueError(
            f"This Wan model reads precomputed text embeddings (text_vocab_size=0): pass "
            f"text_embeddings [B, L, {self.text_dim}]."
        )
      table = nn.Embed(
          self.text_vocab_size,
          self.text_dim,
          param_dtype=jnp.dtype(self.param_dtype),
          embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", None)),
          name="prompt_embedding",
      )
      text = table(text_tokens).astype(jnp.float32)
    else:
      text = text_embeddings.astype(jnp.float32)
    if text_tokens is not None:
      text = text * (text_tokens != 0)[..., None]
    return nn.with_logical_constraint(text, ("batch", "length", None))


def dummy_text_embeddings(model, batch: int, text_len: int) -> dict:
  """Keyword inputs for init / eval_shape: zero `text_embeddings` [batch, L,
  text_dim] for a model that reads them, else none (any other model)."""
  if not getattr(model, "reads_text_embeddings", False):
    return {}
  return {"text_embeddings": jnp.zeros((batch, text_len, model.text_dim), jnp.float32)}


def with_backbone(params, backbone_params):
  """Unboxed `params` of a WanIdentityDiT with its backbone's replaced by
  `backbone_params` (e.g. transformer_weights.load_transformer's), keeping
  the adapters.

  The identity attentions live inside the backbone's scanned blocks
  (params["backbone"]["blocks"]["identity"]), so the two trees are merged
  rather than one swapped for the other. ValueError, naming the param, for a
  backbone param that is missing, extra or misshapen.
  """
  adapters = WanIdentityDiT.adapter_scopes

  def merge(ours, theirs, path):
    if not isinstance(ours, dict):
      if jnp.shape(ours) != jnp.shape(theirs):
        raise ValueError(
            f"Backbone param {path} has shape {jnp.shape(theirs)}, the model's "
            f"is {jnp.shape(ours)}."
        )
      return theirs
    if not isinstance(theirs, dict) or set(theirs) - set(ours):
      raise ValueError(f"The model has no place for backbone param(s) under {path}.")
    lacking = sorted(k for k in ours if k not in theirs and k not in adapters)
    if lacking:
      raise ValueError(f"Backbone params {path}/{lacking[0]} are missing.")
    return {k: merge(v, theirs[k], f"{path}/{k}") if k in theirs else v for k, v in ours.items()}

  return {**params, "backbone": merge(params["backbone"], backbone_params, "backbone")}
