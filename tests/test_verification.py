"""Verification metrics on hand-built cases and the pair protocol."""

import itertools

import chex
import numpy as np

from idjax.face import verification


def _pairs_with_cosines(cosines):
  """Unit 2-D embedding pairs whose cosines are exactly `cosines`."""
  angles = np.arccos(np.asarray(cosines, np.float64))
  emb_a = np.stack([np.ones_like(angles), np.zeros_like(angles)], -1)
  emb_b = np.stack([np.cos(angles), np.sin(angles)], -1)
  return emb_a, emb_b


def test_separable_pairs():
  emb_a, emb_b = _pairs_with_cosines([0.9, 0.8, 0.3, 0.1])
  result = verification.verification_metrics(emb_a, emb_b, [1, 1, 0, 0])
  assert result["accuracy"] == 1.0 and result["auc"] == 1.0
  np.testing.assert_allclose(result["threshold"], 0.55, atol=1e-9)


def test_given_threshold_is_applied_not_refitted():
  emb_a, emb_b = _pairs_with_cosines([0.9, 0.8, 0.3, 0.1])
  result = verification.verification_metrics(emb_a, emb_b, [1, 1, 0, 0],
                                             threshold=0.85)
  assert result["accuracy"] == 0.75 and result["threshold"] == 0.85
  assert result["auc"] == 1.0  # AUC does not depend on the threshold


def test_reversed_scores_and_ties():
  emb_a, emb_b = _pairs_with_cosines([0.1, 0.2, 0.8, 0.9])
  assert verification.verification_metrics(emb_a, emb_b, [1, 1, 0, 0])["auc"] == 0.0
  emb_a, emb_b = _pairs_with_cosines([0.5, 0.5, 0.5, 0.5])
  result = verification.verification_metrics(emb_a, emb_b, [1, 0, 1, 0])
  assert result["auc"] == 0.5 and result["accuracy"] == 0.5
  # (pos, neg) pairs: (.5, .5) counts 1/2, the other three count 1.
  assert verification.roc_auc([0.5, 0.5, 0.9, 0.1], [1, 0, 1, 0]) == 0.875


def test_auc_and_threshold_match_brute_force():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 6, 40).astype(float)  # many ties
  positive = rng.random(40) < 0.5
  wins = [1.0 if p > n else 0.5 if p == n else 0.0
          for p, n in itertools.product(scores[positive], scores[~positive])]
  np.testing.assert_allclose(verification.roc_auc(scores, positive), np.mean(wins))
  best = max(np.mean((scores >= t) == positive)
             for t in np.r_[scores, scores.max() + 1])
  t = verification.best_threshold(scores, positive)
  np.testing.assert_allclose(np.mean((scores >= t) == positive), best)


def test_make_pairs_is_balanced_and_from_different_clips():
  pairs = verification.make_pairs("heldout", 3, resolution=32, crop_size=16,
                                  seed=5)
  chex.assert_shape([pairs.crops_a, pairs.crops_b], (6, 16, 16, 3))
  chex.assert_type([pairs.crops_a, pairs.crops_b], np.uint8)
  np.testing.assert_array_equal(pairs.same, [1, 1, 1, 0, 0, 0])
  # Same-identity crops come from two clips with their own nuisance.
  assert all(np.any(pairs.crops_a[i] != pairs.crops_b[i]) for i in range(3))
  # Different pairs reuse the first crops against another identity's second.
  np.testing.assert_array_equal(pairs.crops_a[3:], pairs.crops_a[:3])
  np.testing.assert_array_equal(pairs.crops_b[3:], np.roll(pairs.crops_b[:3], -1, 0))
