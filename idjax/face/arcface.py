"""ArcFace: additive angular margin softmax (Deng et al., 2019).

The target logit is s * cos(theta + m) instead of s * cos(theta): a sample must
sit at least m radians closer to its own class centre than to any other before
the loss stops pushing, which gives embeddings usable for open-set
verification (comparing faces of identities never seen in training).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# cos(theta) is clipped away from +-1: d/dcos sqrt(1 - cos^2) is infinite there.
_COS_EPS = 1e-6


def margin_logits(cosines, labels, margin: float, scale: float,
                  easy_margin: bool = False):
  """Scaled logits with the angular margin on each sample's own class.

  Args:
    cosines: float [N, K], cosine of each embedding to each class centre.
    labels: int [N] in [0, K).
    margin: m, radians.
    scale: s.
    easy_margin: apply the margin only where cos(theta) > 0; otherwise use the
      standard fallback cos(theta) - m sin(m) where theta + m would pass pi
      (there cos(theta + m) stops decreasing in theta, so the penalty would no
      longer be monotone).

  Returns:
    float32 [N, K].
  """
  cos = jnp.clip(cosines, -1.0 + _COS_EPS, 1.0 - _COS_EPS)
  sin = jnp.sqrt(1.0 - cos * cos)
  cos_m, sin_m = jnp.cos(margin), jnp.sin(margin)
  with_margin = cos * cos_m - sin * sin_m          # cos(theta + m)
  if easy_margin:
    with_margin = jnp.where(cos > 0.0, with_margin, cos)
  else:
    threshold = jnp.cos(jnp.pi - margin)           # theta + m == pi
    with_margin = jnp.where(cos > threshold, with_margin,
                            cos - jnp.sin(jnp.pi - margin) * margin)
  target = jax.nn.one_hot(labels, cosines.shape[-1], dtype=bool)
  return scale * jnp.where(target, with_margin, cos)


def arcface_loss(cosines, labels, margin: float, scale: float,
                 easy_margin: bool = False):
  """Mean softmax cross-entropy of the margin logits: scalar."""
  logits = margin_logits(cosines, labels, margin, scale, easy_margin)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


class ArcFaceHead(nn.Module):
  """Normalised class centres: embeddings [N, D] -> cosines [N, num_classes]."""
  num_classes: int

  @nn.compact
  def __call__(self, embeddings):
    centres = self.param(
        "centres",
        nn.with_logical_partitioning(
            nn.initializers.normal(0.01), ("embed", "vocab")),
        (embeddings.shape[-1], self.num_classes))
    centres = centres * jax.lax.rsqrt(
        jnp.sum(centres * centres, axis=0, keepdims=True) + 1e-12)
    emb = embeddings * jax.lax.rsqrt(
        jnp.sum(embeddings * embeddings, axis=-1, keepdims=True) + 1e-12)
    return emb @ centres
