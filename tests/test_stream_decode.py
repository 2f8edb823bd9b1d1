"""Long clips in bounded memory: the final latents decoded chunk by chunk
(Generator._to_frames, the autoencoders' decode_more), equal to a whole-clip
decode. The MP4 that takes the chunks: test_video_io.py."""

import chex
import jax
import numpy as np
import pytest

from idjax import configlib, diffusion
from idjax.autoencoder.frozen import FrozenAutoencoder, abstract_params
from idjax.autoencoder.model import autoencoder_from_config
from idjax.sampling.generator import Generator

from helpers import (
    latent_config,
    one_device_mesh,
    random_params,
    random_refs,
    tiny_autoencoder,
    tiny_face_encoder,
    tiny_params,
    tiny_sample_config,
)


def shipped_autoencoder():
  """configs/autoencoder.py's model (no temporal convs), random params."""
  config = configlib.load_config_file("configs/autoencoder.py")
  module = autoencoder_from_config(config.model)
  c = module.latent_channels
  return FrozenAutoencoder(
      config,
      random_params(abstract_params(module), 5),
      np.full(c, 0.1, np.float32),
      np.full(c, 2.0, np.float32),
  )


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
  chunks = [
      np.asarray(more(ae.params, padded[:, lo : lo + context + n])[0]) for lo in range(0, 7, n)
  ]
  for chunk in chunks:
    chex.assert_shape(chunk, (1, n, side, side, 3))
  np.testing.assert_array_equal(np.concatenate(chunks, 1)[:, :7], whole)
  if context:  # k - 1 = 2 frames of context are too few for two stacked convs
    short = np.asarray(decode(ae.params, z[:, 1:6]))[:, 2:]
    assert np.abs(short - whole[:, 3:6]).max() > 1e-3


@pytest.fixture(scope="module")
def latent_gen():
  """The tiny latent generator on the temporal autoencoder, 3 latent frames per decode."""
  ae = tiny_autoencoder(**TEMPORAL)
  cfg = latent_config(tiny_sample_config(), ae)
  fe = tiny_face_encoder()
  grid = cfg.copy_and_resolve_references()
  grid.data.resolution = 4  # params are shaped by the latent grid
  return Generator(
      cfg, tiny_params(grid, fe), fe, mesh=one_device_mesh(), autoencoder=ae, decode_frames=3
  )


def _one_shot(gen):
  """The decode before chunking: the whole clip in one call."""
  decode = jax.jit(lambda p, z: diffusion.to_uint8(gen.autoencoder.decode(p, z)))
  return lambda x, on_frames=None: np.asarray(decode(gen.autoencoder_params, x))[..., :3]


def test_generator_decodes_chunks_of_the_clip_as_one_shot(latent_gen):
  z = _latents(latent_gen.autoencoder, 8, 16, seed=1)
  got = []
  frames = latent_gen._to_frames(z, got.append)
  chex.assert_shape(frames, (1, 8, 16, 16, 3))
  assert [f.shape[1] for f in got] == [3, 3, 2]  # the last chunk's padding dropped
  np.testing.assert_array_equal(np.concatenate(got, 1), frames)
  np.testing.assert_array_equal(frames, _one_shot(latent_gen)(z))
  assert latent_gen._decode_fn(3)._cache_size() == 1  # one program for every chunk


def test_generated_clip_through_chunks_equals_one_shot_decode(latent_gen, monkeypatch):
  refs = [[random_refs(np.random.default_rng(0), 1)]] * 2
  kw = dict(num_frames=7, seed=2, layout=[[[0.1, 0.1, 0.6, 0.6]]] * 2, progress=False)
  streamed = []
  out = latent_gen.generate(
      ["a person", "another"], refs, on_frames=lambda i, f: streamed.append((i, f)), **kw
  )
  chex.assert_shape(out["frames"], (2, 7, 16, 16, 3))
  # One sample per call (per_device_batch 1): sample 0's chunks, then sample 1's.
  assert [(i, f.shape[:2]) for i, f in streamed] == [
      (0, (1, 3)),
      (0, (1, 3)),
      (0, (1, 1)),
      (1, (1, 3)),
      (1, (1, 3)),
      (1, (1, 1)),
  ]
  for i in range(2):
    np.testing.assert_array_equal(
        np.concatenate([f for j, f in streamed if j == i], 1)[0], out["frames"][i]
    )
  monkeypatch.setattr(latent_gen, "_to_frames", _one_shot(latent_gen))
  np.testing.assert_array_equal(
      latent_gen.generate(["a person", "another"], refs, **kw)["frames"], out["frames"]
  )


def test_decode_frames_must_be_positive(latent_gen):
  with pytest.raises(ValueError, match="decode_frames must be >= 1"):
    Generator(
        latent_gen.config,
        latent_gen.params,
        latent_gen.face_encoder,
        mesh=latent_gen.mesh,
        autoencoder=latent_gen.autoencoder,
        decode_frames=0,
    )
