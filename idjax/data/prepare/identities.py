"""Identities: tracks clustered by face embedding across videos, and their split.

Clustering is agglomerative with average linkage on Euclidean distances:
the two closest clusters merge while their mean pairwise distance is under
`threshold` (dlib's 0.6 for its ResNet descriptors). Two tracks seen in the
same frames of one video are two people, so clusters holding such a pair
never merge (a cannot-link constraint).

The split is identity-level: a cluster is held out when a crc32 hash of its
first track's key falls under `heldout_fraction` of the hash range, so one
person is never in both splits and the choice is stable across runs.
"""

import zlib

import numpy as np


def cluster(embeddings, threshold: float, cannot_link=None) -> np.ndarray:
  """int64 [N] cluster index per row of embeddings [N, D], numbered in order
  of first appearance. cannot_link: bool [N, N] pairs that must stay apart."""
  x = np.asarray(embeddings, np.float64)
  n = len(x)
  if n == 0:
    return np.zeros(0, np.int64)
  dist = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0.0))
  apart = np.zeros((n, n), bool) if cannot_link is None else np.array(cannot_link, bool)
  size = np.ones(n)
  alive = np.ones(n, bool)
  members = {i: [i] for i in range(n)}
  blocked = dist.copy()
  np.fill_diagonal(blocked, np.inf)
  blocked[apart] = np.inf
  while True:
    flat = int(np.argmin(blocked))
    i, j = divmod(flat, n)
    if not np.isfinite(blocked[i, j]) or blocked[i, j] >= threshold:
      break
    i, j = min(i, j), max(i, j)
    # Average linkage: the merged row is the size-weighted mean of the two.
    dist[i] = (size[i] * dist[i] + size[j] * dist[j]) / (size[i] + size[j])
    dist[:, i] = dist[i]
    apart[i] |= apart[j]
    apart[:, i] = apart[i]
    size[i] += size[j]
    alive[j] = False
    members[i].extend(members.pop(j))
    blocked[i] = np.where(apart[i] | ~alive, np.inf, dist[i])
    blocked[:, i] = blocked[i]
    blocked[i, i] = np.inf
    blocked[j, :] = np.inf
    blocked[:, j] = np.inf
  labels = np.empty(n, np.int64)
  for number, root in enumerate(sorted(members, key=lambda r: min(members[r]))):
    labels[members[root]] = number
  return labels


def purity(clusters, truth) -> dict:
  """How clusters match known labels (rows with truth < 0 are ignored).

  purity: share of tracks whose cluster's majority label is theirs (1 = no
  cluster mixes people); inverse_purity: the same with the roles swapped
  (1 = no person split over clusters).
  """
  clusters, truth = np.asarray(clusters), np.asarray(truth)
  keep = truth >= 0
  clusters, truth = clusters[keep], truth[keep]
  if not len(truth):
    return dict(tracks=0, purity=None, inverse_purity=None, clusters=0, identities=0)

  def majority_share(a, b):
    hits = sum(
        np.bincount(np.unique(b[a == c], return_inverse=True)[1]).max() for c in np.unique(a)
    )
    return float(hits / len(a))

  return dict(
      tracks=int(len(truth)),
      purity=majority_share(clusters, truth),
      inverse_purity=majority_share(truth, clusters),
      clusters=int(len(np.unique(clusters))),
      identities=int(len(np.unique(truth))),
  )


def is_heldout(key: str, heldout_fraction: float) -> bool:
  return zlib.crc32(f"idjax-prepare-{key}".encode()) < heldout_fraction * 2**32


def split(keys: list[str], heldout_fraction: float) -> np.ndarray:
  """bool [N]: identity i is held out. With two or more identities each split
  gets at least one (the lowest hash moves if the hash put all on one side)."""
  held = np.array([is_heldout(k, heldout_fraction) for k in keys], bool)
  if len(keys) >= 2 and heldout_fraction > 0 and (held.all() or not held.any()):
    hashes = [zlib.crc32(f"idjax-prepare-{k}".encode()) for k in keys]
    held[:] = False
    held[int(np.argmin(hashes))] = True
  return held
