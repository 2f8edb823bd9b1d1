"""Face verification: is this pair of crops the same identity?

The protocol is zero-shot: the decision threshold is fitted on pairs of
*training* identities and then applied, unchanged, to pairs of held-out
identities, so the reported accuracy measures generalisation to unseen faces.
"""

import dataclasses

import numpy as np

from idjax.data import world
from idjax.face.crop import crop_and_resize


def cosine_scores(emb_a, emb_b) -> np.ndarray:
  """Cosine similarity of each pair: [N, D], [N, D] -> float64 [N]."""
  a = np.asarray(emb_a, np.float64)
  b = np.asarray(emb_b, np.float64)
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return np.sum(a * b, axis=-1)


def roc_auc(scores, positive) -> float:
  """Area under the ROC curve by the rank (Mann-Whitney) statistic.

  Tied scores get their average rank, so a tie between a positive and a
  negative counts one half. Returns nan if either class is empty.
  """
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  num_pos, num_neg = positive.sum(), (~positive).sum()
  if num_pos == 0 or num_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(len(scores), np.float64)
  # Average 1-based rank over each run of equal scores.
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], len(scores)]
  for start, end in zip(starts, ends):
    ranks[order[start:end]] = 0.5 * (start + 1 + end)
  rank_sum = ranks[positive].sum()
  return float((rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def best_threshold(scores, positive) -> float:
  """The threshold t maximising accuracy of the rule `same iff score >= t`.

  Candidates are midpoints between consecutive distinct scores plus one value
  below and one above all scores; the first (lowest) best one is returned.
  """
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  distinct = np.unique(scores)
  candidates = np.r_[distinct[0] - 1.0, (distinct[1:] + distinct[:-1]) / 2,
                     distinct[-1] + 1.0]
  predicted = scores[None, :] >= candidates[:, None]            # [cand, N]
  accuracy = np.mean(predicted == positive[None, :], axis=1)
  return float(candidates[int(np.argmax(accuracy))])


def verification_metrics(emb_a, emb_b, same, threshold=None) -> dict:
  """Accuracy and ROC AUC of cosine-similarity verification.

  Args:
    emb_a, emb_b: float [N, D] embeddings of the two crops of each pair.
    same: bool [N], whether the pair shows one identity.
    threshold: decision threshold on the cosine; None fits the best one on
      these pairs (what the protocol does on training identities).

  Returns:
    dict(accuracy, auc, threshold) of Python floats.
  """
  scores = cosine_scores(emb_a, emb_b)
  same = np.asarray(same, bool)
  if threshold is None:
    threshold = best_threshold(scores, same)
  accuracy = float(np.mean((scores >= threshold) == same))
  return dict(accuracy=accuracy, auc=roc_auc(scores, same),
              threshold=float(threshold))


@dataclasses.dataclass(frozen=True)
class PairSet:
  """Balanced pairs: crops_a/crops_b uint8 [N, S, S, 3], same bool [N]."""
  crops_a: np.ndarray
  crops_b: np.ndarray
  same: np.ndarray


def make_pairs(split: str, num_identities: int, resolution: int,
               crop_size: int, seed: int, start: int = 0) -> PairSet:
  """Pairs of face crops from different clips of `split` identities.

  Each identity is rendered in two independent clips (different nuisance);
  its two crops form a "same" pair, and its first crop with the second crop of
  the next identity (a cyclic shift, so never itself) a "different" pair:
  2 * num_identities pairs, exactly balanced.
  """
  cfg = world.WorldConfig(resolution=resolution, num_frames=1,
                          max_characters=1, min_characters=1, num_references=1,
                          reference_resolution=min(resolution, 32))
  ids = world.split_identities(split, num_identities, start)
  frames, boxes = [], []
  for i, identity in enumerate(ids):
    for view in range(2):
      clip = world.render_clip(cfg, seed, 2 * i + view, split=split,
                               identity_ids=[int(identity)])
      frames.append(clip["frames"][0])
      boxes.append(clip["boxes"][0, 0])
  crops = np.asarray(crop_and_resize(np.stack(frames), np.stack(boxes),
                                     crop_size))
  crops = np.clip(np.round(crops), 0, 255).astype(np.uint8)
  first, second = crops[0::2], crops[1::2]
  return PairSet(
      crops_a=np.concatenate([first, first]),
      crops_b=np.concatenate([second, np.roll(second, -1, axis=0)]),
      same=np.r_[np.ones(len(ids), bool), np.zeros(len(ids), bool)])


def run_verification(embed_uint8, *, crop_size: int, resolution: int,
                     num_identities: int, seed: int,
                     threshold_start: int = 0) -> dict:
  """The full protocol for one encoder at one clip resolution.

  Args:
    embed_uint8: uint8 [N, S, S, 3] face crops -> float [N, D] embeddings
      (e.g. `FrozenFaceEncoder.embed_uint8`).
    crop_size: S, the side the crops are resized to (the encoder input size).
    resolution: side of the rendered clips.
    num_identities: identities per split (2x as many pairs per split).
    seed: world seed of the pair clips (keep it apart from training seeds).
    threshold_start: first train identity used for threshold fitting.

  Returns:
    dict(accuracy, auc, threshold, train_accuracy, train_auc, num_pairs).
  """
  def embed(pairs):
    return embed_uint8(pairs.crops_a), embed_uint8(pairs.crops_b)

  train = make_pairs("train", num_identities, resolution, crop_size, seed,
                     threshold_start)
  fitted = verification_metrics(*embed(train), train.same)
  heldout = make_pairs("heldout", num_identities, resolution, crop_size,
                       seed + 1)
  result = verification_metrics(*embed(heldout), heldout.same,
                                threshold=fitted["threshold"])
  result.update(train_accuracy=fitted["accuracy"], train_auc=fitted["auc"],
                num_pairs=int(len(heldout.same)))
  return result
