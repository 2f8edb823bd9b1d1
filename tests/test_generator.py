"""Generator: inputs, layouts, guidance passes, outputs; plus tiny-model helpers
shared by the sampling tests (test_samplers.py, test_sample_cli.py)."""

import functools
import importlib.util
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idjax import configlib, models, sharding
from idjax.face.frozen import FrozenFaceEncoder, build_encoder, save_face_encoder
from idjax.sampling import layout as layout_lib
from idjax.sampling.generator import Generator, prepare_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config():
  """configs/tiny.py shrunk to compile and run in seconds."""
  cfg = _load("tiny")
  cfg.data.resolution = 16
  cfg.data.num_frames = 2
  cfg.sample.num_frames = 2
  cfg.data.reference_resolution = 16
  cfg.data.num_references = 2
  cfg.model.width = 32
  cfg.model.depth = 1
  cfg.model.num_heads = 2
  cfg.model.text_width = 32
  cfg.model.text_layers = 1
  cfg.model.num_identity_tokens = 4
  cfg.model.identity_layers = 1
  cfg.sample.steps = 2
  return cfg


def random_params(abstract, seed):
  """NumPy params for a tree of shapes: no compilation (eager or jitted init of
  even a tiny model takes tens of seconds on the shared 2-core CPU).
  Kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1), biases ~ N(0, 0.1)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if leaf.ndim >= 2 and "scale" not in name:
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
    base = 1.0 if "scale" in name else 0.0
    return (base + rng.normal(0, 0.1, leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def tiny_face_encoder(seed=1):
  """The real FaceEncoder, tiny, with random params."""
  fcfg = _load("face_encoder")
  fcfg.input_size = 16
  fcfg.width = 4
  fcfg.num_stages = 2
  fcfg.embed_dim = 16
  fcfg.groups = 2
  module = build_encoder(fcfg)
  abstract = jax.eval_shape(
      lambda: nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"])
  return FrozenFaceEncoder(fcfg, random_params(abstract, seed))


def tiny_params(cfg, fe, seed=0):
  """Random params for the tiny model (zero-initialised layers too, so every path acts)."""
  args = models.dummy_inputs(
      cfg.model, batch=1, frames=1, height=cfg.data.resolution, width=cfg.data.resolution,
      text_len=cfg.model.text_len, num_chars=cfg.model.max_characters,
      num_refs=cfg.data.num_references, face_embed_dim=fe.embed_dim,
      face_feature_dim=fe.feature_dim, face_cells=fe.feature_cells)
  model = models.build_model(cfg.model)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *args))["params"])
  return random_params(abstract, seed)


@functools.lru_cache(maxsize=None)
def tiny_parts():
  cfg = tiny_config()
  fe = tiny_face_encoder()
  return cfg, tiny_params(cfg, fe), fe


def one_device_mesh():
  return sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])


def make_workdir(root, with_eval_encoder=True):
  """A video workdir in the trainer's format (config.json + orbax checkpoint)
  whose config points at face-encoder workdirs next to it."""
  from idjax.train import checkpoint
  from idjax.train.state import create_state, make_optimizer
  cfg, params, fe = tiny_parts()
  cfg = cfg.copy_and_resolve_references()
  os.makedirs(root, exist_ok=True)
  save_face_encoder(os.path.join(root, "face"), fe.config, fe.params)
  cfg.face_encoder_workdir = os.path.join(root, "face")
  cfg.eval_encoder_workdir = os.path.join(root, "face_eval")
  if with_eval_encoder:
    other = tiny_face_encoder(seed=7)
    save_face_encoder(cfg.eval_encoder_workdir, other.config, other.params)
  video = os.path.join(root, "video")
  os.makedirs(video, exist_ok=True)
  configlib.save_config(cfg, os.path.join(video, checkpoint.CONFIG_FILE))
  tx, _ = make_optimizer(cfg.train)
  manager = checkpoint.make_manager(video, cfg.train)
  checkpoint.save(manager, create_state(params, tx, 0), force=True)
  manager.wait_until_finished()
  manager.close()
  return video


def random_refs(rng, n, size=16):
  return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def gen():
  cfg, params, fe = tiny_parts()
  return Generator(cfg, params, fe, mesh=one_device_mesh())


def test_output_shapes_layout_and_metadata(gen):
  rng = np.random.default_rng(0)
  refs = [[random_refs(rng, 1)], [], [random_refs(rng, 2)]]
  out = gen.generate(["a person with blue eyes", "a person", "a person with glasses"], refs,
                     seed=5, layout=[[[0.1, 0.1, 0.6, 0.6]], [], [[[0, 0, .5, .5], [.5, .5, 1, 1]]]],
                     progress=False)
  chex.assert_shape(out["frames"], (3, 2, 16, 16, 3))
  chex.assert_type(out["frames"], np.uint8)
  chex.assert_shape(out["boxes"], (3, 1, 2, 4))
  chex.assert_shape(out["masks"], (3, 1, 2, 16, 16))
  # A start and an end box interpolate over the 2 frames.
  np.testing.assert_allclose(out["boxes"][2, 0], [[0, 0, .5, .5], [.5, .5, 1, 1]])
  assert out["masks"][1].max() == 0.0          # a prompt without characters: no mask
  assert [m["seed"] for m in out["metadata"]] == [5, 6, 7]
  assert [m["num_references"] for m in out["metadata"]] == [[1], [], [2]]
  assert out["timings"]["model_passes_per_evaluation"] == 1


def test_references_change_the_sample_and_seeds_are_per_sample(gen):
  rng = np.random.default_rng(1)
  refs = [[random_refs(rng, 2)], [random_refs(rng, 2)]]
  a = gen.generate(["a person", "a person"], refs, seed=[3, 3], progress=False)
  b = gen.generate(["a person", "a person"], [refs[0], []], seed=[3, 3], progress=False)
  assert not np.array_equal(a["frames"][0], a["frames"][1])   # other references
  np.testing.assert_array_equal(a["frames"][0], b["frames"][0])
  assert not np.array_equal(b["frames"][0], b["frames"][1])


def test_guidance_scales_one_equal_single_pass_formula(gen):
  """s_id = 1 in the 2-pass formula is the 1-pass result (to rounding)."""
  rng = np.random.default_rng(2)
  refs = [[random_refs(rng, 2)]]
  one = gen.generate(["a person with red hair"], refs, seed=1, progress=False)
  step2 = gen._step_fn("euler", 2)
  step1 = gen._step_fn("euler", 1)
  host = gen._host_batch(["a person with red hair"], refs, 2, np.ones(1, np.float32), [1], None)
  emb, feat = gen._encode_fn()(gen.face_params, jnp.asarray(host.references))
  ident = models.IdentityInputs(emb, feat, jnp.asarray(host.ref_valid),
                                jnp.asarray(host.char_valid), jnp.asarray(host.face_masks))
  x = jnp.asarray(host.noise)
  args = (jnp.float32(1.0), jnp.float32(0.5), jnp.asarray(host.text), ident,
          jnp.asarray(host.strength), jnp.float32(1.0), jnp.float32(1.0))
  x1 = step1(gen.params, x.copy(), *args)
  x2 = step2(gen.params, x.copy(), *args)
  np.testing.assert_allclose(np.asarray(x1), np.asarray(x2), atol=1e-5)
  assert one["frames"].shape == (1, 2, 16, 16, 3)


def test_guided_sampling_uses_more_passes_and_differs(gen):
  rng = np.random.default_rng(3)
  refs = [[random_refs(rng, 1)]]
  base = gen.generate(["a person"], refs, seed=0, progress=False)
  guided = gen.generate(["a person"], refs, seed=0, identity_guidance=3.0, progress=False)
  assert guided["timings"]["model_passes_per_evaluation"] == 2
  assert not np.array_equal(base["frames"], guided["frames"])


def test_bad_inputs_raise_value_errors(gen):
  rng = np.random.default_rng(4)
  with pytest.raises(ValueError, match="reference images"):
    gen.generate(["a"], [[random_refs(rng, 3)]], progress=False)   # K = 2
  with pytest.raises(ValueError, match="identity_strength"):
    gen.generate(["a"], None, identity_strength=1.5, progress=False)
  with pytest.raises(ValueError, match="steps"):
    gen.generate(["a"], None, steps=0, progress=False)
  with pytest.raises(ValueError, match="characters"):
    gen.generate(["a"], [[random_refs(rng, 1), random_refs(rng, 1)]], progress=False)
  with pytest.raises(ValueError, match="box"):
    gen.generate(["a"], [[random_refs(rng, 1)]], layout=[[[0.5, 0.5, 0.2, 0.9]]], progress=False)


def test_prepare_reference_modes_and_sizes():
  rgba = np.zeros((30, 20, 4), np.uint8)
  rgba[..., 0] = 200
  out = prepare_reference(rgba, 16)
  chex.assert_shape(out, (16, 16, 3))
  assert out[..., 0].min() == 200 and out[..., 1:].max() == 0
  gray = np.full((9, 9), 77, np.uint8)
  np.testing.assert_array_equal(prepare_reference(gray, 16), np.full((16, 16, 3), 77, np.uint8))


def test_layout_masks_match_box_geometry():
  boxes = np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)
  ellipse = layout_lib.face_masks(boxes, 32, 32)[0]
  box = layout_lib.face_masks(boxes, 32, 32, shape="box")[0]
  assert box[8:24, 8:24].min() > 0.99 and box[:7].max() == 0 and box[:, 25:].max() == 0
  np.testing.assert_allclose(box.sum(), 16 * 16, atol=1e-3)
  # The inscribed disc covers about pi/4 of the box.
  np.testing.assert_allclose(ellipse.sum() / (16 * 16), np.pi / 4, atol=0.03)
  assert ellipse[16, 16] == 1.0 and ellipse[8, 8] < 0.5
  np.testing.assert_array_equal(layout_lib.face_masks(np.zeros((1, 4)), 8, 8), 0.0)
  traj = layout_lib.box_trajectory([[0, 0, .5, .5], [.5, .5, 1, 1]], 3)
  np.testing.assert_allclose(traj[1], [.25, .25, .75, .75])
