"""The video autoencoder: shapes, causality, latent normalisation, save/load,
gradients, sharding invariance, the FLOP budget, and (slow) a real training
run that reconstructs held-out renders."""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from idjax import configlib
from idjax.autoencoder import FrozenAutoencoder, save_autoencoder
from idjax.autoencoder import train as ae_train
from idjax.autoencoder.frozen import abstract_params
from idjax.autoencoder.model import autoencoder_from_config
from idjax.face.frozen import FrozenFaceEncoder, build_encoder

CONFIG_PATH = os.path.join(os.path.dirname(__file__), "..", "configs", "autoencoder.py")


def small_config():
  """The shipped config with a small model: 4x spatial, 4 latent channels,
  and the causal temporal convs and GroupNorm that the shipped model leaves
  off, so that their causality is tested too."""
  config = configlib.load_config_file(CONFIG_PATH)
  config.model.widths = (8, 16)
  config.model.encoder_blocks = (1, 1)
  config.model.decoder_blocks = (1, 1)
  config.model.latent_channels = 4
  config.model.temporal_kernel = 3
  config.model.groups = 4
  config.data.resolution = 32
  return config


def perturbed_params(module, seed=0, scale=0.1):
  """Random params: He-scaled normal kernels, small biases and norms off
  their init, so zero-initialised layers (the temporal convs among them) act
  and invariance tests are not vacuous. Drawn with NumPy: partitionable
  threefry compiles slowly on CPU."""
  generator = np.random.default_rng(seed)

  def draw(path, x):
    name = path[-1].key
    if name == "kernel":
      mean, std = 0.0, np.sqrt(2.0 / np.prod(x.shape[:-1]))
    else:
      mean, std = (1.0 if name == "scale" else 0.0), scale
    return jnp.asarray(mean + std * generator.standard_normal(x.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract_params(module))


@pytest.fixture(scope="module")
def small():
  config = small_config()
  module = autoencoder_from_config(config.model)
  params = perturbed_params(module)
  mean = np.linspace(-0.5, 0.5, 4).astype(np.float32)
  std = np.linspace(0.5, 2.0, 4).astype(np.float32)
  return config, FrozenAutoencoder(config, params, mean, std)


def random_frames(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape), jnp.float32)


def test_shapes(small):
  config, ae = small
  assert (ae.spatial_factor, ae.temporal_factor, ae.latent_channels) == (4, 1, 4)
  frames = random_frames((2, 5, 32, 32, 3))
  latents = jax.jit(ae.encode)(ae.params, frames)
  chex.assert_shape(latents, (2, 5, 8, 8, 4))
  chex.assert_type(latents, jnp.float32)
  assert ae.latent_shape(5, 32, 32) == (5, 8, 8, 4)
  recon = jax.jit(ae.decode)(ae.params, latents)
  chex.assert_shape(recon, (2, 5, 32, 32, 3))
  chex.assert_tree_all_finite(recon)
  # A single image is a one-frame clip, and non-square frames work.
  chex.assert_shape(ae.encode(ae.params, frames[:, :1, :, :16]), (2, 1, 8, 4, 4))
  with pytest.raises(ValueError, match="spatial factor 4"):
    ae.latent_shape(4, 30, 32)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_encode_and_decode_are_causal(small, k):
  _, ae = small
  frames = random_frames((1, 6, 32, 32, 3), seed=1)
  changed = frames.at[:, k + 1:].set(random_frames((1, 5 - k, 32, 32, 3), seed=2))
  encode = jax.jit(ae.encode)
  before, after = np.asarray(encode(ae.params, frames)), np.asarray(encode(ae.params, changed))
  np.testing.assert_array_equal(before[:, :k + 1], after[:, :k + 1])
  assert np.abs(before[:, k + 1:] - after[:, k + 1:]).min(axis=(0, 2, 3, 4)).max() > 0

  latents = jnp.asarray(before)
  changed_latents = latents.at[:, k + 1:].add(1.0)
  decode = jax.jit(ae.decode)
  out, out_changed = np.asarray(decode(ae.params, latents)), np.asarray(
      decode(ae.params, changed_latents))
  np.testing.assert_array_equal(out[:, :k + 1], out_changed[:, :k + 1])


def test_temporal_convs_read_the_past(small):
  """Frame 3's latent depends on frames 1-3 (temporal kernel 3), not on frame 0."""
  _, ae = small
  frames = random_frames((1, 6, 32, 32, 3), seed=3)
  encode = jax.jit(ae.encode)
  base = np.asarray(encode(ae.params, frames))
  for earlier, expect_change in [(0, False), (1, True), (2, True)]:
    changed = frames.at[:, earlier].set(random_frames((1, 32, 32, 3), seed=4 + earlier))
    delta = np.abs(np.asarray(encode(ae.params, changed))[:, 3] - base[:, 3]).max()
    assert (delta > 0) == expect_change, (earlier, delta)


def test_first_frame_is_encoded_like_an_image(small):
  _, ae = small
  frames = random_frames((1, 4, 32, 32, 3), seed=5)
  clip = np.asarray(ae.encode(ae.params, frames))
  image = np.asarray(ae.encode(ae.params, frames[:, :1]))
  np.testing.assert_allclose(clip[:, :1], image, rtol=0, atol=1e-5)


def test_decode_is_differentiable(small):
  _, ae = small
  latents = jnp.asarray(np.random.default_rng(7).standard_normal((1, 3, 8, 8, 4)), jnp.float32)
  target = random_frames((1, 3, 32, 32, 3), seed=8)
  grad = jax.jit(jax.grad(lambda z: jnp.mean(jnp.square(ae.decode(ae.params, z) - target))))(
      latents)
  chex.assert_tree_all_finite(grad)
  # Every latent cell of every frame and channel receives gradient.
  assert np.all(np.abs(np.asarray(grad)) > 0)


def test_latent_normalisation_and_save_load(tmp_path):
  config = small_config()
  config.stats.num_clips = 6
  config.stats.batch_size = 3
  module = autoencoder_from_config(config.model)
  params = perturbed_params(module)
  mean, std = ae_train.latent_statistics(module, params, config)
  chex.assert_shape([mean, std], (4,))
  # The statistics' own clips, encoded and normalised: zero mean, unit std.
  cfg = ae_train.world_config(config.data, config.data.num_frames)
  clips = ae_train.render_clips(cfg, config.data.seed,
                                range(config.stats.index_start,
                                      config.stats.index_start + config.stats.num_clips),
                                "train")
  ae = FrozenAutoencoder(config, params, mean, std)
  latents = np.asarray(ae.encode(ae.params, ae_train.to_signed(clips["frames"])), np.float64)
  flat = latents.reshape(-1, 4)
  np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-4)

  save_autoencoder(tmp_path, config, params, mean, std)
  loaded = FrozenAutoencoder.from_workdir(tmp_path)
  np.testing.assert_array_equal(loaded.latent_mean, mean)
  np.testing.assert_array_equal(loaded.latent_std, std)
  assert autoencoder_from_config(loaded.config.model) == autoencoder_from_config(config.model)
  frames = ae_train.to_signed(clips["frames"][:2])
  encode = jax.jit(ae.encode)
  np.testing.assert_array_equal(np.asarray(encode(ae.params, frames)),
                                np.asarray(jax.jit(loaded.encode)(loaded.params, frames)))


def test_from_workdir_refuses_other_folders(tmp_path):
  with pytest.raises(ValueError, match="holds no video autoencoder"):
    FrozenAutoencoder.from_workdir(tmp_path)
  (tmp_path / "params").mkdir()
  (tmp_path / "latent_stats.json").write_text('{"mean": [0], "std": [1]}')
  (tmp_path / "config.json").write_text('{"kind": "face_encoder"}')
  with pytest.raises(ValueError, match="not an autoencoder config"):
    FrozenAutoencoder.from_workdir(tmp_path)


def test_encode_is_the_same_on_a_batch_sharded_mesh(small, devices):
  _, ae = small
  frames = random_frames((8, 2, 32, 32, 3), seed=9)
  single = np.asarray(jax.jit(ae.encode)(ae.params, frames))
  mesh = Mesh(np.asarray(devices), ("data",))
  sharded = jax.jit(ae.encode, in_shardings=(NamedSharding(mesh, P()),
                                             NamedSharding(mesh, P("data"))))
  np.testing.assert_allclose(np.asarray(sharded(ae.params, frames)), single, rtol=0, atol=1e-5)


def test_box_mask_and_psnr_by_hand():
  boxes = jnp.asarray([[[[0.25, 0.5, 0.75, 1.0]]], [[[0.0, 0.0, 0.5, 0.5]]]])  # [B=2, C=1, T=1, 4]
  mask = np.asarray(ae_train.box_mask(boxes, jnp.asarray([[True], [False]]), 4, 4))
  expect = np.zeros((2, 1, 4, 4, 1), np.float32)
  expect[0, 0, 1:3, 2:4] = 1.0                  # rows 1-2, columns 2-3; the absent box is empty
  np.testing.assert_array_equal(mask, expect)

  a = np.zeros((4, 4, 3), np.uint8)
  b = a.copy()
  b[0, 0, 0] = 255                              # MSE = 255^2 / 48
  assert ae_train.psnr(a, b) == pytest.approx(10 * np.log10(48))
  inside = np.zeros((4, 4, 1))
  inside[1:, 1:] = 1
  assert ae_train.psnr(a, b, inside) > 90       # the error is outside the mask


def test_default_model_fits_the_flop_budget():
  """The DiT step runs encode on every training frame and decode (forward +
  backward) on the identity-loss frames: each stays near 100-150 MFLOP per
  64x64 frame (XLA's count)."""
  config = configlib.load_config_file(CONFIG_PATH)
  module = autoencoder_from_config(config.model)
  c = module.latent_channels
  ae = FrozenAutoencoder(config, abstract_params(module), np.zeros(c), np.ones(c))
  frames = jax.ShapeDtypeStruct((1, 4, 64, 64, 3), jnp.float32)
  latents = jax.ShapeDtypeStruct((1,) + ae.latent_shape(4, 64, 64), jnp.float32)
  flops = lambda f, *a: jax.jit(f).lower(*a).cost_analysis()["flops"] / 4
  encode, decode = flops(ae.encode, ae.params, frames), flops(ae.decode, ae.params, latents)
  assert 50e6 < encode < 150e6, encode
  assert 50e6 < decode < 160e6, decode


def test_init_and_noise_are_functions_of_the_seed():
  config = small_config()
  module = autoencoder_from_config(config.model)
  chex.assert_trees_all_equal(ae_train.init_params(module, config),
                              ae_train.init_params(module, config))
  noise = lambda step: ae_train.step_noise(0, step, (2, 3))
  np.testing.assert_array_equal(noise(5), noise(5))
  assert not np.array_equal(noise(5), noise(6))


@pytest.mark.slow
def test_same_config_same_params():
  """Two runs of the same config (GAN term on from the second step) give
  bit-identical params."""
  config = small_config()
  config.train.steps = 3
  config.train.batch_size = 1
  config.data.num_frames = 2
  config.train.face_weight = 0.0
  config.train.gan_weight = 0.1
  config.train.gan_start = 1
  face = _random_face_encoder()
  runs = [ae_train.fit(config, show_progress=False, face=face)[1] for _ in range(2)]
  chex.assert_trees_all_equal(*runs)


def _random_face_encoder():
  """An untrained face encoder (tests must not need runs/demo/face)."""
  config = configlib.load_config_file(
      os.path.join(os.path.dirname(__file__), "..", "configs", "face_encoder.py"))
  module = build_encoder(config)
  with jax.threefry_partitionable(False):   # compiles in a fraction of the time on CPU
    params = nn.unbox(jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return FrozenFaceEncoder(config, params["params"])


@pytest.mark.slow
def test_short_training_reconstructs_heldout_renders():
  """300 steps (about 40 s) of the shipped model on real renders reconstruct
  held-out identities far better than the untrained model. Bound: 22 dB
  whole-frame PSNR (measured: 27.0 dB trained, 7.9 dB untrained)."""
  config = configlib.load_config_file(CONFIG_PATH)
  config.train.steps = 300
  config.train.face_weight = 0.0   # no trained face encoder needed
  config.eval.num_clips = 8
  config.eval.batch_size = 8
  config.stats.num_clips = 16
  face = _random_face_encoder()
  module, params, _ = ae_train.fit(config, show_progress=False, face=face)
  results = {}
  for name, p in [("trained", params), ("untrained", ae_train.init_params(module, config))]:
    mean, std = ae_train.latent_statistics(module, p, config)
    report, _ = ae_train.evaluate(FrozenAutoencoder(config, p, mean, std), face, config)
    results[name] = report["psnr"]
  print(results)
  assert results["trained"] > 22.0, results
  assert results["untrained"] < 15.0, results


def test_config_mistakes_name_the_key():
  config = small_config()
  config.model.decoder_blocks = (1, 1, 1)
  with pytest.raises(ValueError, match="model.decoder_blocks"):
    autoencoder_from_config(config.model)
  config = small_config()
  config.model.groups = -1
  with pytest.raises(ValueError, match="model.groups"):
    autoencoder_from_config(config.model)
