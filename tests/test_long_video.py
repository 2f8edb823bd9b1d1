"""Long clips: one-shot sampling with frames sharded over the `sequence` mesh
axis, and chunked extension (idjax.sampling.extend) in pixel and latent space."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

import sample  # the entry point (the repository root is on pytest's pythonpath)
from idjax import sharding
from idjax.sampling import extend as extend_lib
from idjax.sampling.generator import Generator

from helpers import (
    latent_config,
    make_workdir,
    one_device_mesh,
    random_refs,
    tiny_autoencoder,
    tiny_face_encoder,
    tiny_params,
    tiny_parts,
    tiny_sample_config,
)

LAYOUT = [[[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9]]]  # one character moving down-right


@pytest.fixture(scope="module")
def gen():
  cfg, params, fe = tiny_parts()
  return Generator(cfg, params, fe, mesh=one_device_mesh())


@pytest.fixture(scope="module")
def latent_gen():
  autoencoder = tiny_autoencoder()
  cfg = latent_config(tiny_sample_config(), autoencoder)
  fe = tiny_face_encoder()
  grid = cfg.copy_and_resolve_references()
  grid.data.resolution = 4  # params are shaped by the latent grid
  return Generator(cfg, tiny_params(grid, fe), fe, mesh=one_device_mesh(), autoencoder=autoencoder)


@pytest.fixture(scope="module")
def refs():
  return [random_refs(np.random.default_rng(0), 1)]


def _sequence_gen(gen, size):
  mesh = sharding.make_mesh({"sequence": size}, devices=jax.devices()[:size])
  return Generator(
      gen.config,
      jax.device_get(gen.params),
      gen.face_encoder,
      mesh=mesh,
      autoencoder=gen.autoencoder,
  )


# --- one shot, frames over `sequence` -------------------------------------------


def test_sequence_mesh_shards_the_clip_state_over_frames(gen):
  """The ODE state lives split over the sequence devices (per-device memory
  falls as 1/sequence), not replicated on each."""
  seq = _sequence_gen(gen, 4)
  x = jax.device_put(np.zeros((1, 16, 16, 16, 3), np.float32), seq._frames_sharding(5))
  assert {s.data.shape for s in x.addressable_shards} == {(1, 4, 16, 16, 3)}
  # Without a sequence axis the sharding is the plain batch one.
  assert gen._frames_sharding(5).is_equivalent_to(
      sharding.batch_sharding(gen.mesh, 5, gen.rules), 5
  )


@pytest.mark.parametrize("size", [pytest.param(2, marks=pytest.mark.slow), 4, 8])
def test_sequence_sharded_frames_equal_one_device(gen, refs, size):
  """16 frames (2 per device at sequence=8), layout-routed identity."""
  kw = dict(num_frames=16, seed=3, layout=[LAYOUT], progress=False)
  one = gen.generate(["a person"], [refs], **kw)["frames"]
  out = _sequence_gen(gen, size).generate(["a person"], [refs], **kw)["frames"]
  np.testing.assert_array_equal(out, one)


def test_240_frames_one_shot_on_sequence_4_equals_one_device(gen, refs):
  kw = dict(num_frames=240, seed=3, layout=[LAYOUT], progress=False)
  one = gen.generate(["a person"], [refs], **kw)["frames"]
  assert one.shape == (1, 240, 16, 16, 3)
  np.testing.assert_array_equal(
      _sequence_gen(gen, 4).generate(["a person"], [refs], **kw)["frames"], one
  )
  # sequence=8: XLA CPU sums some per-device products in another order
  # (measured: state differences of 5e-7), which can move a pixel by one level.
  eight = _sequence_gen(gen, 8).generate(["a person"], [refs], **kw)["frames"]
  diff = np.abs(eight.astype(int) - one)
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3


# --- chunked extension ----------------------------------------------------------


def test_chunked_clip_is_deterministic_and_extension_reproduces_it(gen, refs):
  kw = dict(chunk_frames=4, context_frames=2, seed=11, layout=LAYOUT)
  a = extend_lib.extend(gen, "a person", refs, 12, **kw)
  b = extend_lib.extend(gen, "a person", refs, 12, **kw)
  np.testing.assert_array_equal(a["frames"], b["frames"])
  assert a["frames"].shape == (12, 16, 16, 3) and a["frames"].std() > 0
  assert a["chunk_starts"] == [4, 6, 8, 10]
  np.testing.assert_allclose(a["boxes"][0, [0, -1]], LAYOUT[0][0:2])
  # Continuing the first chunk reproduces the rest of the chunked clip.
  cont = extend_lib.extend(gen, "a person", refs, 12, given=a["frames"][:4], **kw)
  np.testing.assert_array_equal(cont["frames"], a["frames"])
  # Another seed, another clip; no context: independent chunks (naive).
  other = extend_lib.extend(gen, "a person", refs, 12, **{**kw, "seed": 12})
  assert not np.array_equal(other["frames"], a["frames"])
  naive = extend_lib.extend(gen, "a person", refs, 12, **{**kw, "context_frames": 0})
  assert naive["chunk_starts"] == [4, 8]
  np.testing.assert_array_equal(naive["frames"][:4], a["frames"][:4])  # same first chunk


def test_renoised_chunks_are_deterministic_and_extension_reproduces_them(gen, refs):
  """sample.renoise in chunked sampling: each step's fresh noise is drawn per
  frame index, so continuing the first chunk remakes the same clip."""
  kw = dict(chunk_frames=4, context_frames=2, seed=11, steps=3)
  a = extend_lib.extend(gen, "a person", refs, 8, renoise=1.0, **kw)
  cont = extend_lib.extend(gen, "a person", refs, 8, given=a["frames"][:4], renoise=1.0, **kw)
  np.testing.assert_array_equal(cont["frames"], a["frames"])
  ode = extend_lib.extend(gen, "a person", refs, 8, **kw)
  assert not np.array_equal(a["frames"], ode["frames"])  # the fresh noise acts
  np.testing.assert_array_equal(  # renoise = 0 is the ODE sampler, bit for bit
      extend_lib.extend(gen, "a person", refs, 8, renoise=0.0, **kw)["frames"], ode["frames"]
  )
  with pytest.raises(ValueError, match="euler"):
    extend_lib.extend(gen, "a person", refs, 8, renoise=0.5, sampler="heun", **kw)


def test_context_conditions_the_new_frames(gen, refs):
  """The same window and noise after two different contexts differs."""
  kw = dict(chunk_frames=4, context_frames=2, seed=5)
  rng = np.random.default_rng(1)
  x = extend_lib.extend(
      gen, "a person", refs, 6, given=rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8), **kw
  )
  y = extend_lib.extend(
      gen, "a person", refs, 6, given=rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8), **kw
  )
  assert not np.array_equal(x["frames"][2:], y["frames"][2:])


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_given_frames_are_kept_bit_exact(gen, latent_gen, refs, space):
  g = gen if space == "pixel" else latent_gen
  given = np.random.default_rng(2).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  out = extend_lib.extend(
      g, "a person", refs, 9, given=given, chunk_frames=4, context_frames=2, seed=1
  )
  assert out["frames"].shape == (9, 16, 16, 3) and out["num_given"] == 5
  np.testing.assert_array_equal(out["frames"][:5], given)
  assert out["chunk_starts"] == [5, 7]


def test_bad_extension_settings_raise_one_sentence(gen):
  with pytest.raises(ValueError, match="context_frames"):
    extend_lib.extend(gen, "a person", [], 8, chunk_frames=4, context_frames=4)
  with pytest.raises(ValueError, match="nothing to add"):
    extend_lib.extend(gen, "a person", [], 4, given=np.zeros((4, 16, 16, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    extend_lib.extend(gen, "a person", [], 8, given=np.zeros((2, 8, 8, 3), np.uint8))


# --- sample.py --extend ---------------------------------------------------------


@pytest.mark.slow  # ~35 s; test_given_frames_are_kept_bit_exact checks the same frames without the CLI
def test_sample_cli_extends_a_clip_keeping_its_frames(tmp_path, capsys):
  video = make_workdir(str(tmp_path / "runs"))
  rng = np.random.default_rng(3)
  Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
  given = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  np.save(tmp_path / "in.npy", given)
  out = str(tmp_path / "out" / "long.mp4")
  common = ["--workdir", video, "--reference", str(tmp_path / "a.png"), "--prompt", "a person"]
  args = ["--out", out, "--extend", str(tmp_path / "in.npy"), "--frames", "7"]
  sample.main(common + args + ["--chunk-frames", "4", "--context-frames", "2", "--no-progress"])
  frames = np.load(out[:-4] + ".npy")
  assert frames.shape == (7, 16, 16, 3)
  np.testing.assert_array_equal(frames[:3], given)
  summary = json.load(open(out[:-4] + ".json"))
  assert summary["metadata"]["chunk_starts"] == [3, 5] and summary["num_frames"] == 7
  # An MP4 works as input too (decoded, then resized to the model's 16 px).
  sample.main(
      common
      + [
          "--out",
          str(tmp_path / "again.mp4"),
          "--extend",
          out,
          "--frames",
          "9",
          "--chunk-frames",
          "4",
          "--no-progress",
      ]
  )
  assert np.load(tmp_path / "again.npy").shape == (9, 16, 16, 3)
  # Usage errors: one sentence, exit 2.
  for bad, message in [(["--frames", "3"], "must exceed"), ([], "needs --frames")]:
    argv = common + ["--out", str(tmp_path / "bad.mp4"), "--extend", str(tmp_path / "in.npy")]
    with pytest.raises(SystemExit) as e:
      sample.main(argv + bad)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_model_trained_with_clean_context_is_given_it_at_t_0(gen, refs):
  """train.context_prob > 0: the context frames enter every step clean with
  per-frame t = 0 (not re-noised to t, as for other models)."""
  cfg = gen.config.copy_and_resolve_references()
  cfg.train.context_prob = 0.5
  clean = Generator(cfg, jax.device_get(gen.params), gen.face_encoder, mesh=one_device_mesh())
  rng = np.random.default_rng(3)
  given = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  kw = dict(given=given, chunk_frames=4, context_frames=2, seed=5)
  a = extend_lib.extend(clean, "a person", refs, 6, **kw)
  np.testing.assert_array_equal(
      a["frames"], extend_lib.extend(clean, "a person", refs, 6, **kw)["frames"]
  )
  np.testing.assert_array_equal(a["frames"][:2], given)
  # Renoising leaves the clean context (t = 0) where it is, too.
  renoised = extend_lib.extend(clean, "a person", refs, 6, renoise=1.0, **kw)
  np.testing.assert_array_equal(renoised["frames"][:2], given)
  assert not np.array_equal(renoised["frames"][2:], a["frames"][2:])
  replaced = extend_lib.extend(gen, "a person", refs, 6, **kw)
  assert not np.array_equal(a["frames"][2:], replaced["frames"][2:])
  other = extend_lib.extend(
      clean,
      "a person",
      refs,
      6,
      **{**kw, "given": rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)},
  )
  assert not np.array_equal(a["frames"][2:], other["frames"][2:])
