"""Identity metrics on hand-made cases, and the eval protocol end to end (tiny)."""

import numpy as np
import pytest

from idjax.eval import benchmark, metrics

from helpers import RealClipGenerator, tiny_face_encoder, tiny_sample_config


def _unit(v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_identical_frames_consistency_one_drift_zero():
  emb = np.tile(_unit([1.0, 2.0, 3.0]), (6, 1))
  assert metrics.temporal_consistency(emb) == pytest.approx(1.0)
  assert metrics.drift(emb) == pytest.approx(0.0, abs=1e-12)
  assert metrics.diversity(emb)["embedding"] == pytest.approx(0.0, abs=1e-12)


def test_drift_is_the_slope_of_similarity_to_frame_zero():
  # Frame t at angle a * t from frame 0: cos(a t), slope by least squares.
  a = 0.1
  t = np.arange(5)
  emb = np.stack([np.cos(a * t), np.sin(a * t)], axis=-1)
  expected = np.polyfit(t, np.cos(a * t), 1)[0]
  assert metrics.drift(emb) == pytest.approx(expected, rel=1e-9)
  assert metrics.temporal_consistency(emb) == pytest.approx(np.cos(a))


def test_face_sim_uses_the_mean_reference():
  refs = _unit([[1.0, 0.0], [0.0, 1.0]])
  crops = _unit([[1.0, 1.0], [1.0, 0.0]])
  np.testing.assert_allclose(metrics.face_sim(crops, refs), [1.0, np.sqrt(0.5)])


def test_bleed_hand_made():
  refs = _unit([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  # Character 0: 3 of 4 frames near its own ref, one near character 1's.
  c0 = _unit([[1, .1, 0], [1, .2, 0], [.1, 1, 0], [1, 0, .1]])
  c1 = _unit([[0, 1, 0]] * 4)                      # always its own
  emb = np.stack([c0, c1])
  assert metrics.bleed(emb, refs) == pytest.approx(1 / 8)
  assert metrics.bleed(emb, refs, valid=[True, False]) == 0.0


def test_pixel_diversity():
  crops = np.zeros((2, 4, 4, 3), np.uint8)
  crops[1] = 255
  d = metrics.diversity(_unit([[1, 0], [0, 1]]), crops)
  assert d["pixel"] == pytest.approx(0.5)          # std of {0, 1} is 0.5
  assert d["embedding"] == pytest.approx(1.0)      # orthogonal frames


@pytest.fixture(scope="module")
def scorer():
  return metrics.FaceScorer(tiny_face_encoder(seed=3))


def test_crop_equal_to_reference_gives_face_sim_one(scorer):
  rng = np.random.default_rng(0)
  ref = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  other = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  # A 32x32 frame whose top-left quarter is the reference, upscaled x1 (box = quarter).
  frame = np.zeros((32, 32, 3), np.uint8)
  frame[:16, :16] = ref
  frames = np.stack([frame, np.tile(other, (2, 2, 1))])
  boxes = np.array([[[0, 0, .5, .5], [0, 0, .5, .5]]], np.float32)
  m = metrics.clip_metrics(scorer, frames, [[ref]], boxes)
  assert m["box_source"] == "layout"
  sims = m["characters"][0]["face_sim_per_frame"]
  assert sims[0] == pytest.approx(1.0, abs=1e-5)
  assert sims[1] < 0.999


def test_box_search_finds_the_reference(scorer):
  rng = np.random.default_rng(1)
  ref = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  frame = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
  frame[10:26, 20:36] = ref                        # box (.25, .5, .65, .9): side 0.4
  mean = metrics.reference_mean(scorer.embed_references([ref]))
  found = scorer.search_boxes(frame[None], mean, candidates=metrics.candidate_boxes((0.4,), 0.125))
  np.testing.assert_allclose(found[0], [.25, .5, .65, .9], atol=1e-6)
  m = metrics.clip_metrics(scorer, frame[None], [[ref]])
  assert m["box_source"] == "search"


def test_protocol_ceiling_and_floor(scorer):
  cfg = tiny_sample_config()
  cfg.data.resolution = 32
  cfg.data.reference_resolution = 32
  result = benchmark.evaluate(RealClipGenerator(cfg), scorer.encoder, 3, seed=2)
  rows = result["rows"]
  assert list(rows) == ["ceiling", "generated (refs+text)", "generated (text only)", "floor"]
  assert rows["generated (refs+text)"]["face_sim"] == pytest.approx(rows["ceiling"]["face_sim"])
  # Text only got the next identity's clip, scored on the layout (clip i's boxes).
  from idjax.data import world
  wcfg = benchmark.world_config(cfg)
  ids = world.split_identities("heldout", 4)
  ids = ids[np.random.default_rng([2, 0xE7A1]).permutation(4)]
  clips = [world.render_clip(wcfg, 2, j, split="heldout", identity_ids=[ids[j]]) for j in range(4)]
  expected = np.mean([metrics.clip_metrics(scorer, clips[i + 1]["frames"], [list(clips[i]["references"][0])],
                                           clips[i]["boxes"][:1])["face_sim"] for i in range(3)])
  assert rows["generated (text only)"]["face_sim"] == pytest.approx(expected, abs=1e-6)
  floor = np.mean([metrics.clip_metrics(scorer, clips[i + 1]["frames"], [list(clips[i]["references"][0])],
                                        clips[i + 1]["boxes"][:1])["face_sim"] for i in range(3)])
  assert rows["floor"]["face_sim"] == pytest.approx(floor, abs=1e-6)
  assert result["position"]["generated (refs+text)"] == pytest.approx(1.0)
  assert "FaceSim" in benchmark.format_table(result)
  # Identification, against the clips' own embeddings: refs+text got the real clips.
  ref_means = np.stack([metrics.reference_mean(scorer.embed_references(c["references"][0]))
                        for c in clips[:3]])
  own = metrics.identification(np.stack([scorer.clip_embeddings(c["frames"], c["boxes"][0])
                                         for c in clips[:3]]), ref_means)
  assert rows["ceiling"]["identified"] == pytest.approx(np.mean(own))
  assert rows["generated (refs+text)"]["identified"] == rows["ceiling"]["identified"]
  assert "identified (of 3)" in benchmark.format_table(result)


def test_heldout_clips_show_the_identities_in_the_evals_order():
  from idjax.data import world
  first = world.split_identities("heldout", 6)
  np.testing.assert_array_equal(benchmark.heldout_identities(6), first)
  orders = [benchmark.heldout_identities(6, seed) for seed in (2, 3)]
  for ids in orders:
    assert sorted(ids) == sorted(first)
  assert list(orders[0]) != list(orders[1])  # the order follows the seed
  wcfg = world.WorldConfig(resolution=16, num_frames=2, reference_resolution=16,
                           max_characters=1, min_characters=1)
  clips = benchmark.heldout_clips(wcfg, orders[0][:3], seed=2)
  assert [int(c["identity_ids"][0]) for c in clips] == list(orders[0][:3])
  assert all(world.is_heldout(int(c["identity_ids"][0])) for c in clips)
  # The world seed reaches the clips: another seed renders other scenes.
  other = benchmark.heldout_clips(wcfg, orders[0][:1], seed=3)
  assert not np.array_equal(other[0]["frames"], clips[0]["frames"])


def test_identification_is_top1_among_the_identities():
  refs = np.eye(3, 4)                                   # identity i points along axis i
  clips = np.stack([np.tile(v, (2, 1)) for v in (
      [1.0, 0.2, 0.0, 0.0],                             # clip 0: clearly identity 0
      [0.9, 0.5, 0.0, 0.0],                             # clip 1: closer to identity 0 -> wrong
      [0.0, 0.1, 0.3, 0.9])])                           # clip 2: nearest identity 2 (axis 3 is no one)
  np.testing.assert_array_equal(metrics.identification(clips, refs), [True, False, True])
  # Frames count as unit vectors: one long frame toward identity 0 loses to two
  # short ones toward identity 1 (a raw mean would pick identity 0).
  mixed = np.array([[[10.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 1.0, 0, 0]],
                    [[0, 1.0, 0, 0]] * 3])
  np.testing.assert_array_equal(metrics.identification(mixed, np.eye(2, 4)), [False, True])
