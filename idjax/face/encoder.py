"""A compact face-recognition ResNet (the project's own encoder family).

Pre-activation residual blocks with GroupNorm: the encoder is used frozen
inside other jitted steps, and GroupNorm has no running statistics, so there is
no mutable state to carry and train/eval behave identically.

Params carry logical axis names (conv kernels `(None, None, "conv_in",
"conv_out")`, dense kernels `("embed", "mlp")`, norms `("norm",)`) through
`nn.with_logical_partitioning`; callers that do not shard take `nn.unbox` of
the initialised variables (the frozen encoder is replicated anyway).
"""

import math
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax.numpy as jnp

_CONV_NAMES = (None, None, "conv_in", "conv_out")


def _conv(features, kernel, strides=1, name=None):
  return nn.Conv(
      features, (kernel, kernel), strides=(strides, strides), padding="SAME",
      use_bias=False, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.he_normal(), _CONV_NAMES))


def _norm(groups, name=None):
  return nn.GroupNorm(
      num_groups=groups, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class PreActBlock(nn.Module):
  """GN-ReLU-conv3x3-GN-ReLU-conv3x3 plus a (projected) shortcut."""
  features: int
  strides: int = 1
  groups: int = 8

  @nn.compact
  def __call__(self, x):  # [N, h, w, F_in] -> [N, h / strides, w / strides, F]
    y = nn.relu(_norm(math.gcd(self.groups, x.shape[-1]), "norm1")(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      # Project from the normalised input, as in pre-activation ResNets.
      shortcut = _conv(self.features, 1, self.strides, "proj")(y)
    y = _conv(self.features, 3, self.strides, "conv1")(y)
    y = nn.relu(_norm(math.gcd(self.groups, self.features), "norm2")(y))
    # Zero-initialised last conv: each block starts as the identity.
    y = nn.Conv(
        self.features, (3, 3), padding="SAME", use_bias=False, name="conv2",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.zeros, _CONV_NAMES))(y)
    return shortcut + y


class FaceEncoder(nn.Module):
  """Face crops -> (unit embedding, last spatial feature map).

  Attributes:
    widths: channels of each stage; every stage after the first halves the
      resolution, so S = 32 with a stride-2 stem and 3 stages gives a 4x4
      feature map.
    blocks: residual blocks per stage.
    embed_dim: D, size of the embedding.
    groups: GroupNorm groups (reduced to a divisor of each width).
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  blocks: Sequence[int] = (1, 1, 1, 1)
  embed_dim: int = 128
  groups: int = 8
  stem_stride: int = 1  # 2 halves the cost of everything after the stem

  @nn.compact
  def __call__(self, crops):
    """crops: float [N, S, S, 3] in [-1, 1].

    Returns:
      embeddings float32 [N, D] with unit L2 norm (axes `batch`, `embed`);
      feature_map float32 [N, h, w, F] with F = widths[-1], after the final
      norm and ReLU (the features identity tokens attend over).
    """
    x = _conv(self.widths[0], 3, self.stem_stride, "stem")(crops)
    for stage, (width, count) in enumerate(zip(self.widths, self.blocks)):
      for block in range(count):
        strides = 2 if stage > 0 and block == 0 else 1
        x = PreActBlock(width, strides, self.groups,
                        name=f"stage{stage}_block{block}")(x)
    feature_map = nn.relu(_norm(math.gcd(self.groups, x.shape[-1]), "final_norm")(x))
    # Flatten (not average-pool): where a feature sits in the face matters.
    flat = einops.rearrange(feature_map, "n h w f -> n (h w f)")
    emb = nn.Dense(
        self.embed_dim, name="embedding",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("mlp", "embed")),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("embed",)))(flat)
    emb = emb * jnp.reciprocal(
        jnp.sqrt(jnp.sum(emb * emb, axis=-1, keepdims=True) + 1e-12))
    emb = nn.with_logical_constraint(emb, ("batch", "embed"))
    return emb, feature_map


def encoder_from_config(config) -> FaceEncoder:
  """The FaceEncoder of a face-encoder config: `width` channels in the first
  of `num_stages` stages, doubling per stage, `blocks_per_stage` blocks each."""
  return FaceEncoder(
      widths=tuple(config.width * 2**i for i in range(config.num_stages)),
      blocks=(config.blocks_per_stage,) * config.num_stages,
      embed_dim=config.embed_dim, groups=config.groups,
      stem_stride=config.get("stem_stride", 1))
