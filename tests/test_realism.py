"""Realism metrics on hand-made cases: Fréchet distance, high-frequency energy,
the attribute probe, and the 32-px FaceSim column of the eval protocol."""

import dataclasses

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idjax.data import world
from idjax.eval import benchmark, probe as probe_lib, realism

from helpers import RealClipGenerator, tiny_face_encoder, tiny_sample_config


def _rotation(theta):
  return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


# ---------------------------------------------------------------- Fréchet distance

def test_fd_of_identical_sets_is_zero():
  x = np.random.default_rng(0).normal(size=(50, 6)) * [1, 2, 3, 0.1, 5, 1]
  assert realism.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-10)


def test_fd_is_symmetric():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(40, 5))
  b = rng.normal(size=(30, 5)) @ rng.normal(size=(5, 5)) + 1.0
  assert realism.frechet_distance(a, b) == pytest.approx(realism.frechet_distance(b, a), rel=1e-10)
  assert realism.frechet_distance(a, b) > 0.5


def test_fd_closed_form_commuting_covariances():
  # Same eigenvectors: FD = |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
  r = _rotation(0.3)
  a, b = np.array([4.0, 0.25]), np.array([1.0, 9.0])
  mu_a, mu_b = np.array([1.0, -2.0]), np.array([0.0, 0.5])
  fd = realism.frechet_from_stats(mu_a, r @ np.diag(a) @ r.T, mu_b, r @ np.diag(b) @ r.T)
  expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fd == pytest.approx(expected, rel=1e-12)


def test_fd_closed_form_non_commuting_2d():
  # For 2x2 SPD A, B: (tr sqrt(AB))^2 = tr(AB) + 2 sqrt(det A det B), since
  # the eigenvalues of AB are positive (sqrt(l1) + sqrt(l2))^2 = l1 + l2 + 2 sqrt(l1 l2).
  cov_a = _rotation(0.2) @ np.diag([3.0, 0.5]) @ _rotation(0.2).T
  cov_b = _rotation(1.1) @ np.diag([0.2, 2.0]) @ _rotation(1.1).T
  dets = np.linalg.det(cov_a) * np.linalg.det(cov_b)
  cross = np.sqrt(np.trace(cov_a @ cov_b) + 2 * np.sqrt(dets))
  mu_a, mu_b = np.array([0.5, 0.0]), np.array([0.0, 1.5])
  expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
  assert realism.frechet_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-12)


def test_fd_of_samples_approaches_the_gaussians_distance():
  rng = np.random.default_rng(2)
  cov_a = np.diag([1.0, 4.0, 0.25])
  cov_b = np.diag([2.0, 1.0, 0.25])
  a = rng.multivariate_normal([0, 0, 0], cov_a, 40000)
  b = rng.multivariate_normal([1, 0, 0], cov_b, 40000)
  expected = 1.0 + (1 - np.sqrt(2)) ** 2 + (2 - 1) ** 2
  assert realism.frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_fd_rank_deficient_covariance_is_stable():
  # 5 samples in 12 dims (rank <= 4): an orthogonal embedding of 3-d features
  # into 12 dims must leave FD unchanged, and identical sets give exactly ~0.
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) * 2 + 1
  q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  embed = q[:, :3].T                                   # [3, 12], orthonormal rows
  fd_small = realism.frechet_distance(a, b)
  fd_big = realism.frechet_distance(a @ embed, b @ embed)
  assert np.isfinite(fd_big)
  assert fd_big == pytest.approx(fd_small, rel=1e-9)
  assert realism.frechet_distance(a @ embed, a @ embed) == pytest.approx(0.0, abs=1e-12)


def test_fd_needs_two_samples():
  with pytest.raises(ValueError):
    realism.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))


def test_sqrtm_psd_squares_back():
  m = np.random.default_rng(4).normal(size=(6, 3))
  cov = m @ m.T                                        # rank 3 of 6
  s = realism.sqrtm_psd(cov)
  np.testing.assert_allclose(s @ s, cov, atol=1e-12)
  np.testing.assert_allclose(s, s.T)


# ---------------------------------------------------------- high-frequency energy

@pytest.fixture(scope="module")
def real_clip():
  cfg = world.WorldConfig(resolution=32, num_frames=4, num_references=1, reference_resolution=8)
  clip = world.render_clip(cfg, 7, 0, split="heldout")
  return clip["frames"], clip["boxes"][0][:, None, :]   # [T, H, W, 3], [T, 1, 4]


def test_laplacian_hand_made():
  img = np.zeros((3, 3, 1))
  img[1, 1] = 1.0
  np.testing.assert_allclose(realism.laplacian(img)[..., 0], [[-4.0]])
  img[0, 1] = 0.5
  np.testing.assert_allclose(realism.laplacian(img)[..., 0], [[-3.5]])
  ramp = np.tile(np.linspace(0, 1, 6)[None, :, None], (5, 1, 3))
  np.testing.assert_allclose(realism.laplacian(ramp), 0.0, atol=1e-15)   # linear: no energy


def test_box_mask_uses_pixel_centres():
  mask = realism.box_mask(np.array([[0.25, 0.5, 0.75, 1.0]]), 4, 4)
  expected = np.zeros((4, 4), bool)
  expected[1:3, 2:] = True
  np.testing.assert_array_equal(mask, expected)


def test_hf_ratio_of_identical_sets_is_one(real_clip):
  frames, boxes = real_clip
  ratios = realism.hf_ratios(frames, boxes, realism.laplacian_energy(frames, boxes))
  assert ratios == {"frame": 1.0, "background": 1.0, "backdrop": 1.0, "face": 1.0}


def test_block_noise_raises_and_blur_lowers_the_hf_ratio(real_clip):
  frames, boxes = real_clip
  real = realism.laplacian_energy(frames, boxes)
  noisy = realism.hf_ratios(realism.block_noise(frames, 4, 0.1), boxes, real)
  # The smooth background shows the noise most; the detailed face least.
  assert noisy["background"] > 5.0 and min(noisy.values()) > 1.0, noisy
  blurred = realism.block_mean(frames, 2)               # low-pass: 2x2 means
  smooth = realism.hf_ratios(realism.resize_frames(realism.resize_frames(frames, 16), 32),
                             boxes, real)
  # (This clip's backdrop is a bare gradient: nothing there to blur, and its
  # energy, 1.6e-5, is uint8 rounding that the resampling reshuffles.)
  assert all(smooth[k] < 0.8 for k in ("frame", "background", "face")), smooth
  assert realism.hf_ratios(blurred, boxes, real)["face"] < 1.0


def test_noise_outside_the_box_raises_only_the_background(real_clip):
  frames, boxes = real_clip
  noisy = realism.block_noise(frames, 4, 0.2)
  # Keep the box and a 1-pixel ring around it clean: the Laplacian of a face
  # pixel reads its 4 neighbours, so then no face pixel sees the noise.
  inside = realism.box_mask(boxes, 32, 32)
  ring = inside.copy()
  ring[:, 1:] |= inside[:, :-1]
  ring[:, :-1] |= inside[:, 1:]
  ring[:, :, 1:] |= inside[:, :, :-1]
  ring[:, :, :-1] |= inside[:, :, 1:]
  mixed = np.where(ring[..., None], frames, noisy)
  ratios = realism.hf_ratios(mixed, boxes, realism.laplacian_energy(frames, boxes))
  assert ratios["background"] > 1.5
  assert ratios["face"] == 1.0
  # The whole-frame ratio is the plain mean squared Laplacian over all pixels.
  whole = np.mean(realism.laplacian(mixed) ** 2) / np.mean(realism.laplacian(frames) ** 2)
  np.testing.assert_allclose(ratios["frame"], whole, rtol=1e-9)


def test_backdrop_is_the_background_beyond_the_margin(real_clip):
  frames, boxes = real_clip
  margin = realism.backdrop_margin(32)
  assert margin == 2
  real = realism.laplacian_energy(frames, boxes)
  noisy = realism.block_noise(frames, 4, 0.2)
  # Noise within margin - 1 px of the box: a backdrop pixel's 4 neighbours
  # lie at least margin - 1 px out, so the backdrop does not see it.
  inside = realism.box_mask(boxes, 32, 32)
  near = realism.box_mask(realism.grow_boxes(boxes, margin - 1, 32, 32), 32, 32)
  ring = realism.hf_ratios(np.where((near & ~inside)[..., None], noisy, frames), boxes, real)
  assert ring["background"] > 1.2 and ring["backdrop"] == 1.0, ring
  # Noise beyond margin + 1 px: the face and the ring do not see it.
  far = ~realism.box_mask(realism.grow_boxes(boxes, margin + 1, 32, 32), 32, 32)
  ratios = realism.hf_ratios(np.where(far[..., None], noisy, frames), boxes, real)
  assert ratios["backdrop"] > ratios["background"] > 1.2 and ratios["face"] == 1.0, ratios


def test_backdrop_spread_hand_made():
  # A 16x16 frame, its face box in the top-left corner: the backdrop is
  # every pixel beyond 1 px (16 // 16) of it. Left half 0.2, right half 0.6,
  # in every channel; the frame's mean backdrop colour weighs the halves by
  # their backdrop pixels (the grown box takes 25 of the left half's).
  frame = np.full((1, 16, 16, 3), 0.2)
  frame[:, :, 8:] = 0.6
  boxes = np.array([[[0.0, 0.0, 0.25, 0.25]]])            # rows and columns 0..3
  backdrop = ~realism.box_mask(realism.grow_boxes(boxes, 1, 16, 16), 16, 16)
  left, right = backdrop[0, :, :8].sum(), backdrop[0, :, 8:].sum()
  mean = (0.2 * left + 0.6 * right) / (left + right)
  expected = (left * (0.2 - mean) ** 2 + right * (0.6 - mean) ** 2) / (left + right)
  spread = realism.laplacian_energy(frame, boxes)[realism.SPREAD]
  np.testing.assert_allclose(spread, expected, rtol=1e-12)
  # Each frame against its own mean: two flat frames of different colours
  # do not vary, however far apart their colours are.
  flat = np.concatenate([np.full((1, 16, 16, 3), 0.1), np.full((1, 16, 16, 3), 0.9)])
  assert realism.laplacian_energy(flat, np.repeat(boxes, 2, 0))[realism.SPREAD] < 1e-20


def test_backdrop_spread_ratio_flat_and_identical(real_clip):
  frames, boxes = real_clip
  real = realism.laplacian_energy(frames, boxes)
  assert realism.backdrop_spread_ratio(frames, boxes, real) == 1.0
  # The same frames with the backdrop painted in its frame's mean colour:
  # 0, while the face's high-frequency ratio stays 1.
  h, w = frames.shape[1:3]
  backdrop = ~realism.box_mask(realism.grow_boxes(boxes, realism.backdrop_margin(h), h, w), h, w)
  mean = np.stack([f[m].mean(0) for f, m in zip(frames.astype(np.float64), backdrop)])
  flat = np.where(backdrop[..., None], mean[:, None, None, :], frames / 255.0)
  assert realism.backdrop_spread_ratio(flat, boxes, real) == pytest.approx(0.0, abs=1e-12)
  assert realism.hf_ratios(flat, boxes, real)["face"] == pytest.approx(1.0, abs=1e-6)
  # This clip's backdrop is a gradient (rms 0.03 about its mean), not flat.
  assert real[realism.SPREAD] > 5e-4


def test_grow_boxes_moves_each_edge_by_whole_pixels():
  grown = realism.grow_boxes(np.array([0.25, 0.5, 0.75, 1.0]), 2, 16, 8)
  np.testing.assert_allclose(grown, [0.125, 0.25, 0.875, 1.25])
  mask = realism.box_mask(grown[None], 16, 8)
  assert mask.sum() == 12 * 6                                # rows 2..13, columns 2..7


def test_pooled_energy_is_the_energy_of_the_clips_together(real_clip):
  frames, boxes = real_clip
  other = realism.block_noise(frames, 4, 0.1)
  shifted = boxes + np.array([0.1, -0.1, 0.1, -0.1])          # another layout
  pooled = realism.pooled_energy([(frames, boxes), (other, shifted)])
  together = realism.laplacian_energy(np.stack([frames, other]), np.stack([boxes, shifted]))
  for region in (*realism.REGIONS, realism.SPREAD):
    np.testing.assert_allclose(pooled[region], together[region], rtol=1e-12)
  # Not the mean of the two clips' means: the regions differ in size.
  a = realism.laplacian_energy(frames, boxes)["background"]
  b = realism.laplacian_energy(other, shifted)["background"]
  assert abs(pooled["background"] - (a + b) / 2) > 1e-9
  with pytest.raises(ValueError, match="at least one clip"):
    realism.pooled_energy([])


def test_block_mean_hand_made():
  x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
  out = realism.block_mean(x, 2)[0, ..., 0]
  np.testing.assert_allclose(out, [[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5],
                                   [10.5, 10.5, 12.5, 12.5], [10.5, 10.5, 12.5, 12.5]])
  u8 = realism.block_mean(np.array([[[[0], [1]], [[0], [0]]]], np.uint8), 2)
  assert u8.dtype == np.uint8 and np.all(u8 == 0)      # mean 0.25 rounds to 0


def test_resize_frames_keeps_a_clip_at_its_size():
  frames = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  assert realism.resize_frames(frames, 32) is frames
  flat = np.full((1, 64, 64, 3), 77, np.uint8)
  np.testing.assert_array_equal(realism.resize_frames(flat, 32), np.full((1, 32, 32, 3), 77))


# ------------------------------------------------------------------ attribute probe

_TINY_PROBE = probe_lib.ProbeConfig(widths=(16, 32, 64), hidden=64, num_identities=1200,
                                    resolutions=(32,), steps=250, heldout_identities=120)


@pytest.fixture(scope="module")
def tiny_probe():
  return probe_lib.train_probe(_TINY_PROBE)


def test_attribute_labels_follow_the_world():
  ids = world.split_identities("heldout", 5)
  labels = probe_lib.attribute_labels(ids)
  assert labels.shape == (5, len(probe_lib.ATTRIBUTES))
  for row, i in zip(labels, ids):
    attrs = world.identity_params(int(i)).attributes()
    assert [probe_lib.CLASSES[a][c] for a, c in zip(probe_lib.ATTRIBUTES, row)] == [
        attrs[a] for a in probe_lib.ATTRIBUTES]


def test_chance_and_accuracy_hand_made():
  labels = np.array([[0, 1], [0, 0], [1, 0], [0, 0]] * 1)
  labels = np.concatenate([labels, np.zeros((4, len(probe_lib.ATTRIBUTES) - 2), int)], 1)
  c = probe_lib.chance(labels)
  assert c["skin"] == 0.75 and c["hair_colour"] == 0.75 and c["hair_style"] == 1.0
  preds = labels.copy()
  preds[0, 0] = 1
  assert probe_lib.accuracy(preds, labels)["skin"] == 0.75


@pytest.mark.slow  # about 25 s on a busy 2-core CPU: renders 1200 identities, trains 250 steps
def test_probe_beats_chance_on_heldout_real_crops(tiny_probe):
  acc = tiny_probe.report["heldout_accuracy"]["32"]
  chance = tiny_probe.report["heldout_chance"]["32"]
  assert acc["mean"] > chance["mean"] + 0.15, (acc, chance)
  assert acc["hair_colour"] > chance["hair_colour"] + 0.3, (acc, chance)


def test_probe_save_load_round_trips_exactly(tmp_path):
  # Random params (no training needed to check the file format): every leaf,
  # bit for bit, and the same predictions.
  config = dataclasses.replace(_TINY_PROBE, steps=3)
  module = probe_lib._module(config)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  rng = np.random.default_rng(6)
  params = jax.tree.map(lambda x: rng.normal(0, 0.2, x.shape).astype(x.dtype), abstract)
  probe = probe_lib.Probe(config, params, {"note": "random"})
  probe.save(tmp_path)
  loaded = probe_lib.Probe.from_workdir(tmp_path)
  assert loaded.config == config and loaded.report == {"note": "random"}
  a = flax.traverse_util.flatten_dict(probe.params)
  b = flax.traverse_util.flatten_dict(loaded.params)
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype
    np.testing.assert_array_equal(a[k], b[k])
  crops = np.random.default_rng(7).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(loaded.predict(crops), probe.predict(crops))
  # The cache: the same config loads; another config would retrain.
  logs = []
  probe_lib.load_or_train(tmp_path, config, log=logs.append)
  assert logs and "loaded" in logs[0]


# ------------------------------------------------------------- the eval protocol

def test_protocol_realism_and_32px_column():
  cfg = tiny_sample_config()
  cfg.data.resolution = 32
  cfg.data.reference_resolution = 32
  result = benchmark.evaluate(RealClipGenerator(cfg), tiny_face_encoder(seed=3), 3, seed=2)
  for row in result["rows"].values():
    assert row["face_sim_32"] == row["face_sim"]        # a 32-px clip: the same number
  assert result["position_32"] == result["position"]
  r = result["realism"]["rows"]
  assert list(r) == ["real (other renders)", "generated (refs+text)", "generated (text only)",
                     "real, 4x4 patch means"]
  gen = r["generated (refs+text)"]
  assert result["realism"]["hf_pool_clips"] == benchmark.HF_POOL_FRAMES // 2   # T = 2 frames
  # A colour layout has less detail in the face than real renders (its
  # smooth background gains steps at the patch edges, so no claim there).
  patches = r["real, 4x4 patch means"]
  assert patches["hf_face"] < 0.8 * r["real (other renders)"]["hf_face"], (patches, r)
  assert gen["fd_face"] > 0
  assert gen["fd_face_ratio"] == gen["fd_face"] / r["real (other renders)"]["fd_face"]
  real = r["real (other renders)"]
  assert real["fd_face_ratio"] == 1.0 and real["fd_frame_ratio"] == 1.0 and real["fd_face"] > 0
  assert result["realism"]["floor"]["fd_face"] == real["fd_face"]
  assert result["realism"]["samples"] == 3 * 2                 # N identities x T frames
  assert gen["attributes"] is None and result["realism"]["chance"] is None
  text = benchmark.format_table(result)
  assert "FaceSim (resized 32)" in text and "realism" in text and "done-when check" in text
  assert [c["variant"] for c in result["done_when"]] == ["generated (refs+text)"] * 4


def test_cli_takes_a_probe_workdir():
  from idjax.eval.__main__ import parse_args
  args = parse_args(["--workdir", "w", "--probe-workdir", "p"])
  assert args.probe_workdir == "p"
  assert parse_args(["--workdir", "w"]).probe_workdir is None   # beside the eval encoder
