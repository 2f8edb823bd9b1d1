"""Long clips in bounded memory: the autoencoders' decode_more decodes a
clip chunk by chunk, equal to a whole-clip decode. The MP4 that takes the
chunks: test_video_io.py."""

import chex
import jax
import numpy as np
import pytest

from idjax import configlib
from idjax.autoencoder.frozen import FrozenAutoencoder, abstract_params
from idjax.autoencoder.model import autoencoder_from_config

from helpers import random_params, tiny_autoencoder


def shipped_autoencoder():
  """configs/autoencoder.py's model (no temporal convs), random params."""
  config = configlib.load_config_file("configs/autoencoder.py")
  module = autoencoder_from_config(config.model)
  c = module.latent_channels
  return FrozenAutoencoder(config, random_params(abstract_params(module), 5),
                           np.full(c, 0.1, np.float32), np.full(c, 2.0, np.float32))


# Two causal temporal convs of kernel 3 in the decoder's last level: a frame
# reads 4 latent frames before it, not 2 (their receptive fields add up).
TEMPORAL = dict(temporal_kernel=3, decoder_blocks=(1, 2))


@pytest.fixture(scope="module", params=["shipped", "temporal"])
def autoencoder(request):
  """(autoencoder, its frame side)."""
  if request.param == "shipped":
    return shipped_autoencoder(), 64
  return tiny_autoencoder(**TEMPORAL), 16


def _latents(ae, frames, side, seed=0):
  shape = (1, frames, side // ae.spatial_factor, side // ae.spatial_factor, ae.latent_channels)
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_decode_more_chunks_equal_the_whole_clip_decode_bit_for_bit(autoencoder):
  ae, side = autoencoder
  context = ae.decode_context
  assert context == (0 if ae.module.temporal_kernel == 1 else 4)
  z = _latents(ae, 7, side)
  decode = jax.jit(ae.decode)
  whole = np.asarray(decode(ae.params, z))
  chex.assert_shape(whole, (1, 7, side, side, 3))
  # Chunks of 3 (7 is not a multiple): each after `context` frames of the
  # clip, copies of frame 0 before it; the last chunk padded with its last frame.
  n = 3
  padded = np.concatenate([np.repeat(z[:, :1], context, 1), z, np.repeat(z[:, -1:], 2, 1)], 1)
  more = jax.jit(ae.decode_more)
  chunks = [np.asarray(more(ae.params, padded[:, lo:lo + context + n])[0])
            for lo in range(0, 7, n)]
  for chunk in chunks:
    chex.assert_shape(chunk, (1, n, side, side, 3))
  np.testing.assert_array_equal(np.concatenate(chunks, 1)[:, :7], whole)
  if context:  # k - 1 = 2 frames of context are too few for two stacked convs
    short = np.asarray(decode(ae.params, z[:, 1:6]))[:, 2:]
    assert np.abs(short - whole[:, 3:6]).max() > 1e-3
