"""VideoDiT: a diffusion transformer on spacetime patches, with identity tokens.

  x [B,T,H,W,C] -> patchify (p_t, p_h, p_w) -> linear embed -> depth x
  DiTBlock (scanned, rematerialised) -> final adaLN -> zero-init linear ->
  unpatchify -> velocity [B,T,H,W,C] (float32).

No learned absolute positions: RoPE inside the attentions takes positions from
the input's shape, so a model trained on short, small clips runs on longer,
larger ones.
"""

import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idjax import config_rules
from idjax.models import attention
from idjax.models import blocks
from idjax.models import identity as identity_lib
from idjax.models import text as text_lib
# Routing moved to identity.py (the Wan adapters route the same way); the
# names stay importable from here.
from idjax.models.identity import ROUTINGS, pool_masks, route_by_masks  # noqa: F401
from idjax.models.remat import REMAT_POLICIES
from idjax.models.wan.identity_dit import WanIdentityDiT


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
  """Sinusoidal embedding of t [...] in [0, 1], scaled to 0..1000 -> [..., dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def position_embedding_2d(height: int, width: int, dim: int, max_period: float = 10_000.0):
  """Fixed sin-cos embedding [height * width, dim] of each patch's (row, column),
  half the channels for the row and half for the column (as in DiT and MAE).

  RoPE tells attention only how far apart two patches are; this tells each
  patch where in the frame it is, which a picture drawn from noise needs to
  put a backdrop's top colour at the top.
  """
  if dim % 4:
    raise ValueError(f"the position embedding needs a width divisible by 4, got {dim}.")
  quarter = dim // 4
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(quarter, dtype=jnp.float32) / quarter)
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  parts = []
  for pos in (rows.reshape(-1), cols.reshape(-1)):
    args = pos[:, None] * freqs
    parts += [jnp.sin(args), jnp.cos(args)]
  return jnp.concatenate(parts, axis=-1)


def block_class(remat_policy: str, scan_blocks: bool):
  """DiTBlock wrapped in nn.remat per `remat_policy` ("none" = no remat)."""
  if remat_policy == "none":
    return blocks.DiTBlock
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy must be 'none' or one of {sorted(REMAT_POLICIES)}, "
                     f"got {remat_policy!r}.")
  # prevent_cse only matters outside scan (scan already blocks CSE).
  return nn.remat(blocks.DiTBlock, policy=REMAT_POLICIES[remat_policy],
                  prevent_cse=not scan_blocks)


# Scans this short are unrolled. A rolled scan's backward pass stacks every
# block's residuals into [depth, ...] buffers (zero-filled, written with
# dynamic-update-slice, read back with dynamic-slice): on a CPU that was
# about a quarter of the train step at issue 17's shape, none of it
# arithmetic. Unrolled, the parameters keep their stacked "layers" axis and
# the residuals are plain buffers; deeper stacks stay rolled for compile time.
MAX_UNROLLED_DEPTH = 8


def scan_unroll(depth: int) -> int:
  """nn.scan's `unroll` for a stack of `depth` blocks."""
  return depth if depth <= MAX_UNROLLED_DEPTH else 1


LAYOUT_CHANNELS = 3


def layout_map(identity, strength, shape):
  """Where the faces are, as extra input channels [B, T, H, W, 3].

  Per character c with face mask m_c: coverage m_c and the face-relative
  coordinates m_c * u_c, m_c * v_c, with (u, v) = (y - centre) / (2 std) of
  the mask (about -1..1 across an ellipse), summed over characters. With
  them a token knows where inside a face it lies, so drawing eyes, hair and
  mouth is a local function of (u, v) and the identity tokens, instead of
  something the attention must work out from the mask's edges.

  Zero when there is no identity, for characters that are not valid, for
  samples with identity_strength 0 (so these match identity=None exactly and
  the CFG null condition has no layout) and for all-ones masks, which mean
  "no layout given" (the trainer's mask dropout, sampling without boxes).
  """
  if identity is None or identity.face_masks is None:
    return jnp.zeros(shape[:4] + (LAYOUT_CHANNELS,), jnp.float32)
  m = identity.face_masks.astype(jnp.float32)                         # [B,C,T,H,W]
  _, _, _, height, width = m.shape
  ys = (jnp.arange(height, dtype=jnp.float32) + 0.5)[:, None] / height
  xs = (jnp.arange(width, dtype=jnp.float32) + 0.5)[None, :] / width
  total = jnp.maximum(jnp.sum(m, axis=(-2, -1), keepdims=True), 1e-6)

  def relative(coord):
    mean = jnp.sum(m * coord, axis=(-2, -1), keepdims=True) / total
    var = jnp.sum(m * jnp.square(coord - mean), axis=(-2, -1), keepdims=True) / total
    return (coord - mean) / (2.0 * jnp.sqrt(var) + 1e-3)

  given = jnp.min(m, axis=(-2, -1), keepdims=True) < 0.5               # not all-ones
  on = (identity.char_valid[:, :, None, None, None] & given
        & (strength > 0)[:, None, None, None, None])
  m = jnp.where(on, m, 0.0)
  channels = jnp.stack([m, m * relative(ys), m * relative(xs)], axis=-1)  # [B,C,T,H,W,3]
  return jnp.sum(channels, axis=1)


def canvas_input(identity, strength, shape):
  """identity.ref_canvas gated like the identity update: [B, T, H, W, C].

  Scaled by identity_strength, and zero without an identity, without a
  canvas, or with no valid character (the CFG null condition), so strength 0
  matches identity=None exactly.
  """
  if identity is None or identity.ref_canvas is None:
    return jnp.zeros(shape, jnp.float32)
  on = jnp.any(identity.char_valid, axis=-1).astype(jnp.float32) * strength.astype(jnp.float32)
  return identity.ref_canvas.astype(jnp.float32) * on[:, None, None, None, None]


PREDICTIONS = ("velocity", "clean")


class VideoDiT(nn.Module):
  """The video velocity model (see the module docstring).

  Built from a config by `build_model`; the fields carry the names of the
  config.model keys they come from (docs/architecture.md explains each).

  Attributes:
    patch_size: (frames, height, width) of a spacetime patch.
    width, depth, num_heads, mlp_ratio: of the DiT blocks.
    text_width, text_layers, text_vocab_size: of the text encoder.
    num_identity_tokens, identity_layers, reference_mode: of the identity
      encoder (tokens per character, resampler layers, "mean" or "joint").
    max_characters, use_separator: of the character bank (unrouted identity).
    identity_routing: "hard", "soft" or "none" (see route_by_masks).
    temporal_causal: frame t attends only to frames <= t.
    attention_impl: "xla" or "cudnn" (XLA where cuDNN is unavailable).
    scan_blocks: one scanned block (params stacked on a "layers" axis) or
      `depth` separate ones (block_0, block_1, ...).
    remat_policy: "none" or a key of REMAT_POLICIES.
    prediction: the network's output, "velocity" or the "clean" clip.
    reference_canvas: read identity.ref_canvas (the references drawn in their
      boxes, in the model's space) as extra input channels beside the clip.
    dtype, param_dtype: names of the compute and parameter dtypes.
    canvas_alpha: the canvas has one more channel, its alpha at the model's
      grid (conditioning.alpha_to_grid): where it knows the head.
    absolute_position: add position_embedding_2d to the patch tokens.
  """
  patch_size: tuple[int, int, int]
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  text_width: int
  text_layers: int
  text_vocab_size: int
  num_identity_tokens: int
  identity_layers: int
  reference_mode: str
  max_characters: int
  use_separator: bool
  identity_routing: str
  temporal_causal: bool
  attention_impl: str
  scan_blocks: bool
  remat_policy: str
  prediction: str
  reference_canvas: bool
  dtype: str
  param_dtype: str
  canvas_alpha: bool
  absolute_position: bool

  # Param scopes of the identity path, the "adapters" that
  # train.trainable = "adapters" trains (train.state.trainable_filter).
  adapter_scopes = ("identity", "character_bank")

  def __post_init__(self):
    # Configs are checked when loaded (idjax/config_rules.py); this catches a
    # model built by hand with a bad option, before anything is traced.
    choices = dict(prediction=PREDICTIONS, identity_routing=ROUTINGS,
                   reference_mode=identity_lib.REFERENCE_MODES,
                   remat_policy=("none",) + tuple(REMAT_POLICIES),
                   attention_impl=attention.IMPLEMENTATIONS)
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, t, text_tokens, identity=None, identity_strength=None, *,
               deterministic=True, text_embeddings=None):
    """Velocity for noisy clip x at noise level t.

    Args:
      x: float [B, T, H, W, C]; T, H, W divisible by the patch size.
      t: [B] in [0, 1], 1 = pure noise; or [B, T], one per frame (clean
        context frames at 0 beside noisy ones, `train.context_prob`). With a
        temporal patch pt > 1 a patch's frames take its first frame's t.
      text_tokens: int32 [B, L], 0 = pad; an all-zero row = no text. May be
        None when `text_embeddings` is given (then every position is valid).
      identity: IdentityInputs or None (no identity path).
      identity_strength: [B] in [0, 1] scaling the identity update (None = 1).
      deterministic: the model has no dropout; accepted for a uniform
        train/eval call signature.
      text_embeddings: optional precomputed [B, L, text_width]; replaces the
        text encoder (the mask still comes from text_tokens when given).
    Returns:
      float32 [B, T, H, W, C].
    """
    del deterministic
    dtype = jnp.dtype(self.dtype)
    kw = dict(dtype=dtype, param_dtype=jnp.dtype(self.param_dtype))
    impl = attention.resolve_implementation(self.attention_impl)
    pt, ph, pw = self.patch_size
    b, frames, height, width, channels = x.shape
    if frames % pt or height % ph or width % pw:
      raise ValueError(f"Clip {frames}x{height}x{width} is not divisible by the patch size "
                       f"{tuple(self.patch_size)}.")
    grid = (height // ph, width // pw)
    t = jnp.asarray(t)
    if t.ndim == 2 and t.shape != (b, frames):
      raise ValueError(f"per-frame timesteps must be [batch, frames] = {(b, frames)}, got {t.shape}.")
    token_t = t[:, ::pt] if t.ndim == 2 else t
    cond_axes = ("batch", "embed") if t.ndim == 1 else ("batch", "frames", "embed")

    # Identity strength (also gates the layout channels).
    strength = None
    if identity is not None:
      strength = (jnp.ones((b,), dtype) if identity_strength is None
                  else jnp.asarray(identity_strength, dtype).reshape(b))

    # Timestep conditioning. The per-example [B, D] vectors here and in the
    # adaLN layers are constrained batch-sharded, as the tokens are (see
    # blocks.DiTBlock for why).
    cond = timestep_embedding(token_t, 256).astype(dtype)
    cond = blocks.dense(self.width, (None, "embed"), name="time_fc1", **kw)(cond)
    cond = nn.with_logical_constraint(cond, cond_axes)
    cond = blocks.dense(self.width, ("mlp", "embed"), name="time_fc2", **kw)(nn.silu(cond))
    cond = nn.with_logical_constraint(cond, cond_axes)

    # Patchify the clip together with its layout channels, and embed.
    inputs = [x.astype(jnp.float32), layout_map(identity, strength, x.shape)]
    if self.reference_canvas:
      inputs.append(canvas_input(identity, strength,
                                 x.shape[:-1] + (x.shape[-1] + int(self.canvas_alpha),)))
    x_in = jnp.concatenate(inputs, -1)
    tokens = einops.rearrange(x_in.astype(dtype), "b (t pt) (h ph) (w pw) c -> b t (h w) (pt ph pw c)",
                              pt=pt, ph=ph, pw=pw)
    h = blocks.dense(self.width, ("conv_in", "embed"), name="patch_embed", **kw)(tokens)
    if self.absolute_position:
      h = h + position_embedding_2d(*grid, self.width).astype(dtype)
    h = nn.with_logical_constraint(h, ("batch", "frames", "patches", "embed"))

    # Text.
    if text_embeddings is None:
      text, text_mask = text_lib.TextEncoder(
          self.text_vocab_size, self.text_width, self.text_layers, self.num_heads,
          self.mlp_ratio, impl, name="text", **kw)(text_tokens)
    else:
      text = text_embeddings.astype(dtype)
      text_mask = (text_tokens != 0 if text_tokens is not None
                   else jnp.ones(text.shape[:2], bool))

    # Identity.
    ident = None
    if identity is not None:
      id_tokens, valid = identity_lib.IdentityEncoder(
          self.width, self.num_identity_tokens, self.identity_layers, self.num_heads,
          self.mlp_ratio, self.reference_mode, impl, name="identity", **kw)(identity)
      ident = self._route(identity, id_tokens, valid, kw)

    # Blocks.
    block_cls = block_class(self.remat_policy, self.scan_blocks)
    block_fields = dict(grid=grid, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                        temporal_causal=self.temporal_causal, implementation=impl, **kw)
    if self.scan_blocks:
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,) * 5, length=self.depth,
                      unroll=scan_unroll(self.depth),
                      metadata_params={nn.PARTITION_NAME: "layers"})
      h, _ = stack(name="blocks", **block_fields)(h, cond, text, text_mask, ident, strength)
    else:
      for i in range(self.depth):
        h, _ = block_cls(name=f"block_{i}", **block_fields)(
            h, cond, text, text_mask, ident, strength)

    # Final adaLN and zero-init projection back to patches.
    mod = blocks.dense(2 * self.width, ("embed", None), zero_init=True, name="final_adaln",
                       **kw)(nn.silu(cond))
    shift, scale = jnp.split(nn.with_logical_constraint(mod, cond_axes[:-1] + (None,)), 2,
                             axis=-1)
    h = blocks.modulate(blocks.layer_norm("norm_out", affine=False, **kw)(h), shift, scale)
    out = blocks.dense(pt * ph * pw * channels, ("embed", "conv_out"), zero_init=True,
                       name="unpatchify", **kw)(h)
    out = einops.rearrange(out, "b t (h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c",
                           h=grid[0], pt=pt, ph=ph, pw=pw).astype(jnp.float32)
    return output_to_velocity(out, x, t, self.prediction)

  def _route(self, identity, tokens, valid, kw):
    """The identity context for the blocks (see DiTBlock's docstring)."""
    return identity_lib.identity_context(
        identity, tokens, valid, routing=self.identity_routing, patch_size=self.patch_size,
        max_characters=self.max_characters, use_separator=self.use_separator, **kw)


# Smallest t the clean-prediction conversion divides by (as in JiT, Li & He
# 2025): below it the velocity is that of t = MIN_T, so it stays bounded.
MIN_T = 0.05


def output_to_velocity(out, x, t, prediction: str):
  """The network's raw output -> velocity v = noise - x0.

  "velocity": the network predicts v directly. "clean": it predicts the clean
  clip x0_hat and v = (x_t - x0_hat) / t. Clean prediction is what makes the
  tiny CPU model work: the network only has to draw a smooth clip, instead of
  also copying the input noise through every layer (which a velocity network
  must learn before its samples stop looking like noise at high t).
  """
  if prediction == "velocity":
    return out
  if prediction != "clean":
    raise ValueError(f"prediction must be 'velocity' or 'clean', got {prediction!r}.")
  t = jnp.maximum(t.astype(jnp.float32), MIN_T)
  t = t.reshape(t.shape + (1,) * (x.ndim - t.ndim))   # per example [B] or per frame [B, T]
  return (x.astype(jnp.float32) - out) / t


BACKBONES = ("idjax", "wan")


def build_model(model_config):
  """The video model that a config's `model` section describes.

  The one place where config keys become module fields: every field is read
  from the key of its name, and none has a default here or in the module
  (configs/tiny.py sets them all; docs/architecture.md lists them). The
  section's other keys are read elsewhere: `space` by the trainer and the
  sampler, `channels` and `text_len` for the inputs (`dummy_inputs`).

  `backbone` picks the model: "idjax", the project's VideoDiT (a config
  saved before the key existed made one: config_rules.ABSENT_AS), or "wan",
  the identity adapters on the Wan 2.1 DiT (wan.identity_dit.WanIdentityDiT;
  configs/wan_tiny.py).
  """
  m = model_config
  backbone = m.get("backbone", config_rules.ABSENT_AS["model.backbone"])
  if backbone == "wan":
    return _wan_identity_dit(m)
  if backbone != "idjax":
    raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}.")
  return VideoDiT(
      patch_size=tuple(int(p) for p in m.patch_size),
      width=m.width,
      depth=m.depth,
      num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio,
      text_width=m.text_width,
      text_layers=m.text_layers,
      text_vocab_size=m.text_vocab_size,
      num_identity_tokens=m.num_identity_tokens,
      identity_layers=m.identity_layers,
      reference_mode=m.reference_mode,
      max_characters=m.max_characters,
      use_separator=m.use_separator,
      identity_routing=m.identity_routing,
      temporal_causal=m.temporal_causal,
      attention_impl=m.attention_impl,
      scan_blocks=m.scan_blocks,
      remat_policy=m.remat_policy,
      prediction=m.prediction,
      reference_canvas=m.reference_canvas,
      dtype=m.dtype,
      param_dtype=m.param_dtype,
      canvas_alpha=m.canvas_alpha,
      absolute_position=m.absolute_position)


def _wan_identity_dit(m) -> WanIdentityDiT:
  """WanIdentityDiT's fields from the keys of a "wan" model section (configs/wan_tiny.py).

  The Wan backbone predicts velocity and reads no canvas; configs are
  checked for that when loaded, a hand-built section here.
  """
  if m.prediction != "velocity" or m.reference_canvas:
    raise ValueError("A Wan backbone predicts velocity and reads no reference canvas "
                     f"(got prediction={m.prediction!r}, reference_canvas={m.reference_canvas}).")
  if m.width % m.num_heads:
    raise ValueError(f"num_heads={m.num_heads} must divide width={m.width}.")
  return WanIdentityDiT(
      patch_size=tuple(int(p) for p in m.patch_size),
      num_heads=m.num_heads,
      head_dim=m.width // m.num_heads,
      channels=m.channels,
      text_dim=m.text_dim,
      freq_dim=m.freq_dim,
      ffn_dim=m.ffn_dim,
      num_layers=m.depth,
      text_vocab_size=m.text_vocab_size if m.text_input == "tokens" else 0,
      num_identity_tokens=m.num_identity_tokens,
      identity_layers=m.identity_layers,
      mlp_ratio=m.mlp_ratio,
      reference_mode=m.reference_mode,
      max_characters=m.max_characters,
      use_separator=m.use_separator,
      identity_routing=m.identity_routing,
      attention_impl=m.attention_impl,
      remat_policy=m.remat_policy,
      dtype=m.dtype,
      param_dtype=m.param_dtype,
      backbone_param_dtype=m.backbone_param_dtype)


def count_params(params) -> int:
  """Number of scalars in a (possibly logically boxed) parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nn.meta.unbox(params))))


def dummy_inputs(model_config, *, batch, frames, height, width, text_len, num_chars=1,
                 num_refs=1, face_embed_dim=32, face_feature_dim=32, face_cells=4,
                 with_masks=True):
  """Zero inputs of the right shapes and dtypes (for init / eval_shape / FLOPs).

  Returns the positional args (x, t, text_tokens, identity, identity_strength).
  The face dims must match the frozen face encoder the model will be used with.
  """
  b, c, k = batch, num_chars, num_refs
  identity = identity_lib.IdentityInputs(
      ref_embeddings=jnp.zeros((b, c, k, face_embed_dim), jnp.float32),
      ref_features=jnp.zeros((b, c, k, face_cells, face_feature_dim), jnp.float32),
      ref_valid=jnp.ones((b, c, k), bool),
      char_valid=jnp.ones((b, c), bool),
      face_masks=jnp.zeros((b, c, frames, height, width), jnp.float32) if with_masks else None)
  return (jnp.zeros((b, frames, height, width, model_config.channels), jnp.float32),
          jnp.zeros((b,), jnp.float32), jnp.zeros((b, text_len), jnp.int32), identity,
          jnp.ones((b,), jnp.float32))
