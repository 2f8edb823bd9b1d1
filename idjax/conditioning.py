"""Reference images -> the identity conditioning the video model reads.

Training (`idjax.train.step`) and sampling (`idjax.sampling.generator`) both
encode references here, so the model is conditioned the same way in both, and
neither imports the other.
"""

import einops
import jax
import jax.numpy as jnp

from idjax import diffusion
from idjax.face.crop import crop_and_resize


def encode_references(encoder, encoder_params, references):
  """uint8 [B, C, K, R, R, 3] -> (emb [B, C, K, D], fmap [B, C, K, N, F]).

  Each reference is resized whole (box = full image) to the encoder's input;
  no gradient reaches anything here.
  """
  b, c, k = references.shape[:3]
  x = diffusion.to_model_space(references)
  full = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 1.0]), (b, c, k, 4))
  crops = einops.rearrange(
      crop_and_resize(x, full, encoder.input_size), "b c k h w x -> (b c k) h w x"
  )
  emb, fmap = encoder.apply(encoder_params, crops)
  emb = einops.rearrange(emb, "(b c k) d -> b c k d", b=b, c=c)
  fmap = einops.rearrange(fmap, "(b c k) n f -> b c k n f", b=b, c=c)
  return jax.lax.stop_gradient(emb), jax.lax.stop_gradient(fmap)
