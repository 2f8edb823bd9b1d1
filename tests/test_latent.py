"""The DiT in an autoencoder's latent space: the windowed identity loss, the
latent train step on several meshes, and latent sampling through the decoder."""

import chex
import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idjax import configlib, losses
from idjax.sampling.generator import Generator
from idjax.train import trainer

from helpers import (TinyVideoModel, latent_config, mesh_for, numpy_batch, one_device_mesh,
                     put_batch, random_refs, tiny_autoencoder, tiny_encoder, tiny_face_encoder,
                     tiny_params, tiny_sample_config, tiny_train_config)


# --- the windowed identity loss ----------------------------------------------

def _upsample_decoder(latents):
  """A per-cell 'decoder': 4x nearest upsampling and a fixed channel mix, so a
  window decodes to exactly the pixels the whole frame decodes to there."""
  mix = jnp.asarray(np.random.default_rng(0).normal(size=(latents.shape[-1], 3)), jnp.float32)
  pixels = einops.repeat(latents, "b f h w c -> b f (h 4) (w 4) c") @ mix
  return jnp.tanh(pixels)


def test_latent_windows_cut_at_the_face_and_map_its_box():
  latents = jnp.arange(2 * 3 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 3, 8, 8, 1)
  boxes = jnp.array([[[[0.5, 0.5, 0.75, 0.75]] * 3], [[[0.0, 0.0, 0.25, 0.25]] * 3]])
  windows, inner = losses.latent_face_windows(latents, boxes, 4)
  chex.assert_shape(windows, (2, 1, 3, 4, 4, 1))
  # Box centre 5 cells -> window from cell 3; the top-left face clamps to 0.
  np.testing.assert_array_equal(windows[0, 0], latents[0, :, 3:7, 3:7])
  np.testing.assert_array_equal(windows[1, 0], latents[1, :, 0:4, 0:4])
  np.testing.assert_allclose(inner[0, 0, 0], [0.25, 0.25, 0.75, 0.75])
  np.testing.assert_allclose(inner[1, 0, 0], [0.0, 0.0, 0.5, 0.5])


def test_windowed_identity_loss_equals_whole_frame_decoding():
  rng = np.random.default_rng(1)
  latents = jnp.asarray(rng.normal(size=(3, 4, 8, 8, 4)), jnp.float32)
  centre = rng.uniform(0.35, 0.65, (3, 1, 1, 2)) + np.linspace(0, 0.05, 4)[None, None, :, None]
  boxes = jnp.asarray(np.concatenate([centre - 0.12, centre + 0.12], -1), jnp.float32)
  proj = jnp.asarray(rng.normal(size=(8 * 8 * 3, 6)), jnp.float32)
  encode = lambda crops: einops.rearrange(crops, "n h w c -> n (h w c)") @ proj
  refs = jnp.asarray(rng.normal(size=(3, 1, 2, 6)), jnp.float32)
  common = (boxes, jnp.array([0, 1, 2]), refs, jnp.ones((3, 1, 2), bool), jnp.ones((3, 1)),
            encode, 8, 2, 0.5, _upsample_decoder)
  whole, whole_terms = losses.identity_loss_on_estimate(latents, *common, latent_window=0)
  windowed, window_terms = losses.identity_loss_on_estimate(latents, *common, latent_window=5)
  np.testing.assert_allclose(windowed, whole, rtol=1e-5)
  np.testing.assert_allclose(window_terms["temporal"], whole_terms["temporal"], rtol=1e-5)
  # The decoder's gradient reaches the latents, in the face only.
  grad = jax.grad(lambda z: losses.identity_loss_on_estimate(z, *common, latent_window=5)[0])(
      latents)
  assert float(jnp.abs(grad).max()) > 0
  assert float(jnp.abs(grad[:, :, 0, 0]).max()) == 0.0


# --- the latent train step ----------------------------------------------------

@pytest.fixture(scope="module")
def parts():
  return tiny_encoder(), tiny_autoencoder()


def _one_step(config, encoder, autoencoder, sizes):
  mesh = mesh_for(config, sizes)
  # With the reference canvas, which the step draws and encodes on each mesh.
  model = TinyVideoModel(reference_canvas=True)
  setup = trainer.make_setup(config, model, encoder, mesh, autoencoder)
  state = setup.init()
  new_state, metrics = setup.run_step(state, put_batch(numpy_batch(0), mesh))
  return jax.device_get(new_state), jax.device_get(metrics)


def test_latent_step_is_mesh_invariant(parts):
  encoder, autoencoder = parts
  config = latent_config(tiny_train_config(), autoencoder)
  ref_state, ref = _one_step(config, encoder, autoencoder, {})
  assert ref["applied"] == 1.0 and ref["identity_loss"] > 0
  state, metrics = _one_step(config, encoder, autoencoder, dict(data=2, fsdp=2, tensor=2))
  for key in ("loss", "denoise_loss", "identity_loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref[key], rtol=2e-5, err_msg=key)
  chex.assert_trees_all_close(state.params, ref_state.params, atol=1e-6, rtol=1e-5)


# A third compilation of the step (about 10 s on 2 cores): in the slow set, which CI runs.
@pytest.mark.slow
def test_latent_identity_loss_changes_the_update(parts):
  """The identity loss, through the decoder, changes the update."""
  encoder, autoencoder = parts
  config = latent_config(tiny_train_config(), autoencoder)
  ref_state, _ = _one_step(config, encoder, autoencoder, {})
  no_id = config.copy_and_resolve_references()
  no_id.train.lambda_id = 0.0
  other_state, _ = _one_step(no_id, encoder, autoencoder, {})
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), other_state.params,
                       ref_state.params)
  assert max(jax.tree.leaves(moved)) > 1e-6


def test_latent_config_must_match_the_autoencoder(parts, tmp_path):
  encoder, autoencoder = parts
  config = latent_config(tiny_train_config(), autoencoder)
  config.model.channels = 3
  with pytest.raises(configlib.UsageError, match="4-channel latents"):
    trainer.check_latent_space(config, autoencoder)
  config.model.channels = 4
  config.autoencoder_workdir = str(tmp_path / "none")
  with pytest.raises(configlib.UsageError, match="configs/autoencoder.py"):
    trainer.load_autoencoder(config)


# --- latent sampling ------------------------------------------------------------

@pytest.fixture(scope="module")
def latent_gen(parts):
  _, autoencoder = parts
  cfg = latent_config(tiny_sample_config(), autoencoder)
  cfg.model.reference_canvas = True
  fe = tiny_face_encoder()
  grid = cfg.copy_and_resolve_references()
  grid.data.resolution = 4      # params are shaped by the latent grid (4x4 cells)
  params = tiny_params(grid, fe)
  return Generator(cfg, params, fe, mesh=one_device_mesh(), autoencoder=autoencoder)


def test_latent_sampling_decodes_frames_and_strength_zero_ignores_references(latent_gen):
  rng = np.random.default_rng(0)
  refs = [[random_refs(rng, 2)]]
  out = latent_gen.generate(["a person with blue eyes"], refs, identity_strength=0.0,
                            layout=[[[0.2, 0.2, 0.8, 0.8]]], progress=False)
  chex.assert_shape(out["frames"], (1, 2, 16, 16, 3))
  assert out["frames"].dtype == np.uint8 and out["frames"].std() > 0
  chex.assert_shape(out["masks"], (1, 1, 2, 16, 16))
  plain = latent_gen.generate(["a person with blue eyes"], [[]], progress=False)
  np.testing.assert_array_equal(out["frames"], plain["frames"])
  strong = latent_gen.generate(["a person with blue eyes"], refs, identity_strength=1.0,
                               layout=[[[0.2, 0.2, 0.8, 0.8]]], progress=False)
  assert np.abs(strong["frames"].astype(int) - plain["frames"]).max() > 0


def test_latent_sampling_is_bit_identical_on_eight_devices(latent_gen, parts):
  _, autoencoder = parts
  rng = np.random.default_rng(2)
  prompts = [f"a person {i}" for i in range(3)]
  refs = [[random_refs(rng, 1)] for _ in prompts]
  layout = [[[[0.1, 0.2, 0.6, 0.7], [0.3, 0.3, 0.9, 0.9]]] for _ in prompts]
  one = latent_gen.generate(prompts, refs, seed=5, layout=layout, progress=False)
  mesh = trainer.sharding.make_mesh({"data": 8}, devices=jax.devices()[:8])
  eight = Generator(latent_gen.config, jax.device_get(latent_gen.params), latent_gen.face_encoder,
                    mesh=mesh, autoencoder=autoencoder)
  np.testing.assert_array_equal(
      eight.generate(prompts, refs, seed=5, layout=layout, progress=False)["frames"], one["frames"])
