"""Clips of 1 + 4k frames in the Wan 2.1 VAE's latent space (temporal factor 4).

A workdir converted from the committed tiny fixtures (the DiT cut to the
VAE's 4 latent channels, 16x16 frames: 2x2 latents, one 2x2 patch) trains
and samples 5-frame clips, i.e. 2 latent frames: latent frame 0 is frame 0
alone, latent frame 1 covers frames 1-4. Checked: which frames a latent
frame's face mask covers (against loops over a hand-made trajectory), the
identity loss's window cut from the decoded clip (against decoding by hand,
and causality of its gradient), a train step with the identity loss on a
1-device and an 8-device mesh, the Generator against an Euler loop of the
published DiT and VAE, and the refusals of frame counts that are not 1 + 4k.
"""

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from idjax import configlib, diffusion, layout, losses, rng, sharding, weight_files
from idjax.data import prompts as prompts_lib
from idjax.face.frozen import FrozenFaceEncoder
from idjax.models import build_model
from idjax.models.wan import convert, transformer_weights
from idjax.models.wan.transformer import WanTransformer
from idjax.models.wan.vae_weights import FrozenWanVAE
from idjax.sampling import samplers
from idjax.sampling.extend import extend
from idjax.sampling.generator import Generator
from idjax.train import checkpoint, trainer
from idjax.train import step as step_lib
from helpers import ROOT, converted_wan_workdir, mesh_for, put_batch

FRAMES, LATENT_FRAMES, SIDE, CHANNELS = 5, 2, 16, 4

ARGS = [
    "--config",
    f"{ROOT}/configs/wan_tiny.py",
    f"--config.data.resolution={SIDE}",
    f"--config.data.reference_resolution={SIDE}",
    f"--config.data.num_frames={FRAMES}",
    "--config.data.text_len=8",
    "--config.data.num_references=2",
    "--config.model.num_identity_tokens=4",
    "--config.model.identity_layers=1",
    "--config.train.batch_size=8",
    "--config.train.lambda_id=1.0",
    "--config.train.id_loss_max_t=1.0",  # every example's identity loss is on
    "--config.train.id_loss_frames=3",
    f"--config.sample.num_frames={FRAMES}",
    "--config.sample.steps=2",
]

# A face that jumps right at frame 3 and down at frame 4; latent frame 1
# covers frames 1-4, so its mask holds the face at all three places.
BOXES = np.array(
    [
        [0.10, 0.10, 0.50, 0.50],  # frame 0 (latent frame 0 alone)
        [0.10, 0.10, 0.50, 0.50],
        [0.10, 0.15, 0.50, 0.55],
        [0.10, 0.50, 0.50, 0.90],
        [0.50, 0.50, 0.90, 0.90],
    ],
    np.float32,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("wan_video")
  return converted_wan_workdir(root, ARGS)


# --- which frames a latent frame covers ----------------------------------------


def _union_by_loops(boxes, side, factor):
  """Each latent frame's mask as the union of its frames' masks, by loops."""
  frames = boxes.shape[-2]
  out = []
  for j in range(1 + (frames - 1) // factor):
    covered = [0] if j == 0 else range(factor * (j - 1) + 1, factor * j + 1)
    per_frame = [layout.face_masks(boxes[..., f, :], side, side) for f in covered]
    out.append(np.max(np.stack(per_frame), axis=0))
  return np.stack(out, axis=-3)


def test_latent_frames_cover_frame_0_alone_then_groups_of_4():
  np.testing.assert_array_equal(
      layout.latent_frame_groups(9, 4), [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]
  )
  np.testing.assert_array_equal(layout.latent_frame_groups(3, 1), [[0], [1], [2]])
  masks = layout.latent_face_masks(BOXES, 8, 8, 4)
  assert masks.shape == (LATENT_FRAMES, 8, 8)
  np.testing.assert_array_equal(masks, _union_by_loops(BOXES, 8, 4))
  # By hand: frame 0's face is top-left only; latent frame 1 has the face
  # top-left, top-right and bottom-right, never bottom-left.
  quadrant = lambda m, r, c: m[4 * r : 4 * r + 4, 4 * c : 4 * c + 4].max()
  assert [quadrant(masks[0], r, c) for r, c in ((0, 0), (0, 1), (1, 0), (1, 1))] == [1, 0, 0, 0]
  assert [quadrant(masks[1], r, c) for r, c in ((0, 0), (0, 1), (1, 0), (1, 1))] == [1, 1, 0, 1]
  # Batched and traced, as the train step builds them (XLA's sqrt may differ
  # from NumPy's in the last bit), and factor 1 unchanged.
  batched = np.stack([BOXES, BOXES[::-1]])[:, None]  # [2, 1, 5, 4]
  np.testing.assert_allclose(
      np.asarray(jax.jit(lambda b: layout.latent_face_masks(b, 8, 8, 4, xp=jnp))(batched)),
      _union_by_loops(batched, 8, 4),
      atol=1e-6,
  )
  np.testing.assert_array_equal(
      layout.latent_face_masks(BOXES, 8, 8, 1), layout.face_masks(BOXES, 8, 8)
  )


# --- the identity loss on a window of the decoded clip --------------------------


def _causal_decoder(latents):
  """A stand-in causal decoder with temporal factor 4: latent frame 0 -> frame
  0, latent frame j -> frames 4j-3 .. 4j (each from latent frames <= j), 4x
  upsampled through a fixed channel mix."""
  mix = jnp.asarray(np.random.default_rng(0).normal(size=(latents.shape[-1], 3)), jnp.float32)
  running = jnp.cumsum(latents, axis=1)  # frame j's pixels depend on every latent frame <= j
  later = einops.repeat(running[:, 1:], "b t h w c -> b (t f) h w c", f=4)
  scale = jnp.tile(jnp.array([0.7, 0.8, 0.9, 1.0]), latents.shape[1] - 1)[None, :, None, None, None]
  clip = jnp.concatenate([running[:, :1], later * scale], axis=1)
  return jnp.tanh(einops.repeat(clip, "b f h w c -> b f (h 4) (w 4) c") @ mix)


# About 17 s on 2 cores: in the slow set, which CI runs; the same windowing
# stays in the default run on the project's autoencoder (test_latent.py).
@pytest.mark.slow
def test_identity_loss_cuts_its_window_from_the_whole_decoded_clip():
  gen = np.random.default_rng(1)
  b, latent_frames, frames, window = 3, 3, 9, 3
  latents = jnp.asarray(gen.normal(size=(b, latent_frames, 8, 8, 4)), jnp.float32)
  centre = gen.uniform(0.35, 0.65, (b, 1, 1, 2)) + np.linspace(0, 0.05, frames)[None, None, :, None]
  boxes = jnp.asarray(np.concatenate([centre - 0.12, centre + 0.12], -1), jnp.float32)
  proj = jnp.asarray(gen.normal(size=(8 * 8 * 3, 6)), jnp.float32)
  encode = lambda crops: einops.rearrange(crops, "n h w c -> n (h w c)") @ proj
  refs = jnp.asarray(gen.normal(size=(b, 1, 2, 6)), jnp.float32)
  start = jnp.array([0, 2, 6])  # the last window ends at the clip's last frame
  common = (
      boxes,
      start,
      refs,
      jnp.ones((b, 1, 2), bool),
      jnp.ones((b, 1)),
      encode,
      8,
      window,
      0.5,
      _causal_decoder,
  )
  loss = lambda z, cells: losses.identity_loss_on_estimate(
      z, *common, latent_window=cells, temporal_factor=4
  )

  # By hand: decode everything, cut each example's frames, embed, average.
  clip = _causal_decoder(latents)
  assert clip.shape[1] == frames
  cut = np.stack([np.asarray(clip[i, s : s + window]) for i, s in enumerate([0, 2, 6])])
  cut_boxes = np.stack([np.asarray(boxes[i, :, s : s + window]) for i, s in enumerate([0, 2, 6])])
  emb = losses.face_embeddings(jnp.asarray(cut), jnp.asarray(cut_boxes), encode, 8)
  expected = losses.identity_preservation_loss(emb[:, 0], refs[:, 0], 0.5)
  np.testing.assert_allclose(loss(latents, 0)[0], expected, rtol=1e-5)
  # Decoding only the faces' windows of latent cells gives the same loss.
  np.testing.assert_allclose(loss(latents, 5)[0], expected, rtol=1e-5)
  # Causality: example 0's window (frames 0-2) reads latent frames 0 and 1 only.
  grad = jax.grad(lambda z: loss(z, 5)[0])(latents)
  assert float(jnp.abs(grad[0, :2]).max()) > 0
  assert float(jnp.abs(grad[0, 2]).max()) == 0.0


# --- a train step on 5-frame clips ----------------------------------------------


def _clip_batch(config, step=0):
  """8 examples of 5-frame clips whose face follows BOXES."""
  d, b = config.data, int(config.train.batch_size)
  gen = np.random.default_rng(step)
  c, k, r = int(d.max_characters), int(d.num_references), int(d.reference_resolution)
  return dict(
      frames=gen.integers(0, 256, (b, FRAMES, SIDE, SIDE, 3), dtype=np.uint8),
      boxes=np.broadcast_to(BOXES, (b, c, FRAMES, 4)).copy(),
      identity_ids=np.zeros((b, c), np.int32),
      character_valid=np.ones((b, c), bool),
      references=gen.integers(0, 256, (b, c, k, r, r, 3), dtype=np.uint8),
      reference_valid=np.ones((b, c, k), bool),
      text_tokens=gen.integers(1, 20, (b, int(d.text_len))).astype(np.int32),
      index=np.arange(step * b, (step + 1) * b, dtype=np.int32),
  )


def _one_step(converted, sizes):
  config = checkpoint.read_config(str(converted["out"]))
  encoder = FrozenFaceEncoder.from_workdir(config.face_encoder_workdir)
  vae = FrozenWanVAE.from_folder(config.autoencoder_workdir)
  trainer.check_latent_space(config, vae)
  mesh = mesh_for(config, sizes)
  setup = trainer.make_setup(config, build_model(config.model), encoder, mesh, vae)
  assert trainer.model_grid(config, vae) == (LATENT_FRAMES, 2, 2)
  _, metrics = setup.run_step(setup.init(), put_batch(_clip_batch(config), mesh))
  return jax.device_get(metrics)


def test_identity_window_is_drawn_over_the_clips_frames_and_context_over_latent_frames():
  tc = ml_collections.ConfigDict(
      dict(
          id_loss_frames=3,
          t_logit_mean=0.0,
          t_logit_std=1.0,
          text_dropout=0.5,
          identity_dropout=0.5,
          mask_dropout=0.5,
          context_prob=0.5,
      )
  )
  index = jnp.arange(64, dtype=jnp.int32)
  shape = (64, LATENT_FRAMES, 2, 2, CHANNELS)
  draw = lambda **kw: step_lib.draw_example_randomness(tc, jax.random.key(0), 3, index, shape, **kw)
  clip, latent = draw(clip_frames=FRAMES), draw()
  # 5 frames, a window of 3: every start 0..2 is drawn, none later.
  assert set(np.asarray(clip["id_start"]).tolist()) == {0, 1, 2}
  # Without clip_frames the window is drawn over the 2 latent frames: start 0 only.
  assert set(np.asarray(latent["id_start"]).tolist()) == {0}
  assert clip["noise"].shape == shape
  # Clean context counts the model's frames: 1 of the 2 latent frames, or none.
  assert set(np.asarray(clip["context"]).tolist()) == {0, 1}
  for key in ("t", "noise", "drop_text", "drop_identity", "drop_mask", "context"):
    np.testing.assert_array_equal(clip[key], latent[key], err_msg=key)


# About 2 minutes on 2 busy CPU cores (two compiles of the whole step, the VAE's
# encode and decode inside), so not in the default run; the pieces are
# checked above. The 8-device mesh has no tensor axis: with data=2, fsdp=2,
# tensor=2 the identity loss is 2.5% off (the denoising loss is equal). The
# cause measured outside the step: XLA's CPU partitioner (jax 0.10.2)
# decodes these 2x2 latents, sharded 2-way over height or width, wrongly
# from latent frame 1 on (up to 0.48; frame 0, and 4x4 latents, are right),
# and a tensor-sharded output projection is the likely route to that sharding.
@pytest.mark.slow
def test_train_step_on_5_frame_clips_is_finite_and_equal_on_1_and_8_devices(converted):
  one = _one_step(converted, {})
  assert one["applied"] == 1.0
  for key in ("loss", "denoise_loss", "identity_loss", "grad_norm"):
    assert np.isfinite(one[key]), key
  assert one["identity_loss"] > 0 and one["grad_norm"] > 0
  eight = _one_step(converted, dict(data=2, fsdp=4))
  for key in ("loss", "denoise_loss", "identity_loss", "grad_norm"):
    np.testing.assert_allclose(eight[key], one[key], rtol=2e-5, err_msg=key)


# --- sampling 5 frames --------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(converted):
  # One example per model call, as the Euler loop below runs them (the
  # same shapes, so the same kernels and bits).
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  return Generator.from_workdir(str(converted["out"]), mesh=mesh, per_device_batch=1)


def test_generator_samples_5_frames_as_the_published_dit_and_vae_do(generator, converted):
  """Noise at 2 latent frames, decoded to 5 frames: equal, bit for bit, to an
  Euler loop of the DiT and VAE read straight from the diffusers folder
  (fresh adapters add exactly zero), and the same on a second call."""
  source, gen = converted["source"], generator
  prompts = ["a person with pale skin and short black hair", "a person"]
  reference = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
  kw = dict(
      num_frames=FRAMES,
      steps=2,
      seed=[3, 4],
      text_guidance=1.0,
      identity_guidance=1.0,
      layout=[[BOXES], [BOXES[:1]]],
      progress=False,
  )
  out = gen.generate(prompts, [[[reference]], [[reference]]], **kw)
  frames = out["frames"]
  assert frames.shape == (2, FRAMES, SIDE, SIDE, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(
      gen.generate(prompts, [[[reference]], [[reference]]], **kw)["frames"], frames
  )

  fields = transformer_weights.transformer_fields(
      weight_files.read_diffusers_folder(source / "transformer")[0]
  )
  _, backbone = transformer_weights.load_transformer(source / "transformer")
  velocity = jax.jit(WanTransformer(**fields).apply)
  vae = FrozenWanVAE.from_folder(source / "vae")
  table = np.asarray(jax.device_get(gen.params["prompt_embedding"]["embedding"]))
  grid = samplers.timesteps(2, float(gen.config.sample.shift))
  for i, (prompt, seed) in enumerate(zip(prompts, [3, 4])):
    tokens = prompts_lib.tokenize(prompt, gen.text_len)[None]
    text = jnp.asarray(table[tokens] * (tokens != 0)[..., None], jnp.float32)
    x = jax.random.normal(
        rng.derive(seed, 0, "sample/noise"), (1, LATENT_FRAMES, 2, 2, CHANNELS), jnp.float32
    )
    for s in range(2):
      v = velocity({"params": backbone}, x, jnp.full((1,), 1000.0 * grid[s], jnp.float32), text)
      x = x + (grid[s + 1] - grid[s]) * v
    expected = np.asarray(diffusion.to_uint8(jax.jit(vae.decode)(vae.params, x)))
    np.testing.assert_array_equal(frames[i : i + 1], expected, err_msg=prompt)


def test_generator_masks_are_at_the_latent_frames(generator):
  boxes = BOXES[None, None]  # [1, 1, 5, 4]
  host = generator._host_batch(
      ["a person"],
      [[[np.zeros((16, 16, 3), np.uint8)]]],
      FRAMES,
      np.ones(1, np.float32),
      [1],
      boxes,
  )
  assert host.noise.shape[1:] == (LATENT_FRAMES, 2, 2, CHANNELS)
  np.testing.assert_array_equal(host.face_masks[:1], _union_by_loops(boxes, 2, 4))


# --- frame counts that are not 1 + 4k ------------------------------------------------


def test_frame_counts_that_are_not_1_plus_4k_are_refused_in_one_sentence(
    generator, converted, tmp_path, capsys
):
  with pytest.raises(ValueError, match=r"1 \+ 4k frames \(1, 5, 9, 13, \.\.\.\); got 6\.$"):
    layout.latent_frame_groups(6, 4)
  config = checkpoint.read_config(str(converted["out"]))
  vae = FrozenWanVAE.from_folder(config.autoencoder_workdir)
  for key in ("data", "sample"):
    bad = config.copy_and_resolve_references()
    bad[key].num_frames = 8
    with pytest.raises(configlib.UsageError) as e:
      trainer.check_latent_space(bad, vae)
    line = str(e.value)
    assert line.startswith(f"config.{key}.num_frames=8, but the autoencoder")
    assert line.endswith("clips have 1 + 4k frames (1, 5, 9, 13, ...).") and "\n" not in line
  with pytest.raises(ValueError, match=r"1 \+ 4k frames; got 6 \(1, 5, 9, 13, \.\.\. are valid\)"):
    generator.generate(["a person"], num_frames=6, steps=1, progress=False)
  # The converter refuses such a config before writing anything.
  capsys.readouterr()
  out = tmp_path / "video"
  try:
    code = convert.main(
        [
            "--diffusers-dir",
            str(converted["source"]),
            "--workdir",
            str(out),
            *converted["args"],
            "--config.data.num_frames=6",
        ]
    )
  except SystemExit as e:
    code = e.code
  assert code == 2 and not out.exists()
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "config.data.num_frames=6" in err[0] and "(1, 5, 9, 13, ...)" in err[0]


def test_chunked_extension_is_refused_for_temporal_factor_4(generator):
  with pytest.raises(ValueError, match="Chunked sampling .* packs 4 frames into a latent frame"):
    extend(generator, "a person", num_frames=9, chunk_frames=5, context_frames=1)
