"""Identity metrics of generated clips under the EVALUATION face encoder.

The evaluation encoder is trained independently of the one used for
conditioning and for the identity loss, so a model cannot score well by
fooling the very network it was optimised against.

Pure NumPy functions on embeddings (`face_sim`, `identification`,
`temporal_consistency`, `drift`, `bleed`, `diversity`) plus `FaceScorer`, which crops faces and embeds
them. Embeddings are unit vectors; "the reference" of a character is the
re-normalised mean of its K reference embeddings.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from idjax.face.crop import crop_and_resize


def normalize(x, axis=-1):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def reference_mean(ref_emb) -> np.ndarray:
  """[K, D] reference embeddings -> the unit mean direction [D]."""
  return normalize(np.mean(normalize(ref_emb), axis=0))


def face_sim(crop_emb, ref_emb) -> np.ndarray:
  """Cosine of each crop [..., D] to the mean reference of ref_emb [K, D] -> [...]."""
  return normalize(crop_emb) @ reference_mean(ref_emb)


def identification(clip_emb, ref_means) -> np.ndarray:
  """Top-1 identification among the N identities of an evaluation.

  Args:
    clip_emb: [N, T, D] frame embeddings; clip i is meant to show identity i.
    ref_means: [N, D] each identity's reference direction (`reference_mean`).
  Returns:
    bool [N]: whether clip i's mean direction is closer to identity i's
    references than to any other identity's, i.e. whether a face-recognition
    system would name the right person.
  """
  clip_dirs = normalize(np.mean(normalize(clip_emb), axis=1))
  sims = clip_dirs @ normalize(ref_means).T
  return np.argmax(sims, axis=1) == np.arange(len(sims))


def temporal_consistency(emb) -> float:
  """Mean cosine of adjacent frames' embeddings [T, D] (1.0 for T < 2)."""
  emb = normalize(emb)
  if len(emb) < 2:
    return 1.0
  return float(np.mean(np.sum(emb[1:] * emb[:-1], axis=-1)))


def drift(emb) -> float:
  """Least-squares slope, per frame, of cos(frame t, frame 0) over t; 0 for T < 2.

  Negative: the face moves away from where it started.
  """
  emb = normalize(emb)
  if len(emb) < 2:
    return 0.0
  sim = emb @ emb[0]
  t = np.arange(len(emb), dtype=np.float64)
  t -= t.mean()
  return float(np.sum(t * (sim - sim.mean())) / np.sum(t * t))


def bleed(emb, ref_means, valid=None) -> float:
  """Share of crops nearer another character's reference than their own.

  Args:
    emb: [C, T, D] crop embeddings per character.
    ref_means: [C, D] each character's mean reference.
    valid: bool [C] (default all); only valid characters count, both as
      crops and as competitors.

  Returns:
    fraction in [0, 1]; 0.0 when fewer than two characters are valid.
  """
  emb, ref_means = normalize(emb), normalize(ref_means)
  c = emb.shape[0]
  valid = np.ones((c,), bool) if valid is None else np.asarray(valid, bool)
  if valid.sum() < 2:
    return 0.0
  sims = np.einsum("ctd,kd->ctk", emb, ref_means)              # [C, T, C]
  sims = np.where(valid[None, None, :], sims, -np.inf)
  own = sims[np.arange(c), :, np.arange(c)]                     # [C, T]
  others = np.where(np.eye(c, dtype=bool)[:, None, :], -np.inf, sims).max(-1)
  return float(np.mean((others > own)[valid]))


def diversity(emb, crops=None) -> dict:
  """Expression / pose variation over a clip.

  Args:
    emb: [T, D] crop embeddings.
    crops: optional float or uint8 [T, S, S, 3] face crops.

  Returns:
    dict(embedding: 1 - mean pairwise cosine over distinct frames,
         pixel: mean over pixels of the std over time, in [0, 1] units, or None).
  """
  emb = normalize(emb)
  t = len(emb)
  if t < 2:
    spread = 0.0
  else:
    gram = emb @ emb.T
    spread = float(1.0 - (gram.sum() - np.trace(gram)) / (t * (t - 1)))
  pixel = None
  if crops is not None:
    crops = np.asarray(crops, np.float64)
    if np.issubdtype(np.asarray(crops).dtype, np.integer) or crops.max() > 1.5:
      crops = crops / 255.0
    pixel = float(np.mean(np.std(crops, axis=0)))
  return dict(embedding=spread, pixel=pixel)


def candidate_boxes(sides=(0.4, 0.55, 0.7, 0.85), stride_fraction=0.25) -> np.ndarray:
  """A grid of square boxes [N, 4] that a face search scores (sides and
  positions as fractions of the frame; the stride is a fraction of the side)."""
  boxes = []
  for side in sides:
    stride = side * stride_fraction
    starts = np.arange(0.0, 1.0 - side + 1e-6, stride)
    if starts[-1] < 1.0 - side - 1e-6:
      starts = np.append(starts, 1.0 - side)
    for y, x in itertools.product(starts, starts):
      boxes.append((y, x, y + side, x + side))
  return np.asarray(boxes, np.float32)


class FaceScorer:
  """Crops and embeds faces with a FrozenFaceEncoder (the evaluation one)."""

  def __init__(self, encoder):
    self.encoder = encoder
    size = encoder.input_size

    def embed(params, images, boxes):
      crops = crop_and_resize(images, boxes, size) / 127.5 - 1.0
      return encoder.apply(params, crops)[0]

    self._embed = jax.jit(embed)

  def embed_crops(self, images, boxes, batch_size: int = 256) -> np.ndarray:
    """uint8 images [N, H, W, 3] and boxes [N, 4] -> unit embeddings [N, D].

    Same arithmetic as `FrozenFaceEncoder.embed_uint8` (crop in 0..255, then
    scale), so an image cropped with the full box embeds exactly like a
    reference. Padded to a power of two: few compilations.
    """
    images = np.asarray(images)
    boxes = np.asarray(boxes, np.float32)
    n = len(images)
    if n == 0:
      return np.zeros((0, self.encoder.embed_dim), np.float32)
    size = min(batch_size, 1 << max(n - 1, 0).bit_length())
    out = []
    for lo in range(0, n, size):
      chunk_i, chunk_b = images[lo:lo + size], boxes[lo:lo + size]
      pad = size - len(chunk_i)
      chunk_i = np.concatenate([chunk_i, np.zeros((pad,) + chunk_i.shape[1:], chunk_i.dtype)])
      chunk_b = np.concatenate([chunk_b, np.tile([[0, 0, 1, 1]], (pad, 1)).astype(np.float32)])
      emb = self._embed(self.encoder.params, jnp.asarray(chunk_i), jnp.asarray(chunk_b))
      out.append(np.asarray(emb)[:len(images[lo:lo + size])])
    return np.concatenate(out).astype(np.float32)

  def embed_references(self, references) -> np.ndarray:
    """K uint8 reference images (any size) -> [K, D]."""
    return np.concatenate([self.encoder.embed_uint8(np.asarray(r)[None]) for r in references])

  def clip_embeddings(self, frames, boxes) -> np.ndarray:
    """frames uint8 [T, H, W, 3], boxes [T, 4] -> [T, D]."""
    return self.embed_crops(frames, boxes)

  def search_boxes(self, frames, ref_mean, candidates=None) -> np.ndarray:
    """Per frame, the candidate box whose crop is most similar to ref_mean [D].

    Used when a clip has no layout: [T, 4].
    """
    frames = np.asarray(frames)
    candidates = candidate_boxes() if candidates is None else np.asarray(candidates, np.float32)
    t, n = len(frames), len(candidates)
    images = np.repeat(frames, n, axis=0)
    boxes = np.tile(candidates, (t, 1))
    sims = (self.embed_crops(images, boxes) @ np.asarray(ref_mean, np.float32)).reshape(t, n)
    return candidates[np.argmax(sims, axis=1)]


def character_metrics(scorer: FaceScorer, frames, boxes, ref_emb):
  """One character's metrics in a clip, and its frame embeddings.

  Args:
    frames: uint8 [T, H, W, 3]; boxes: float [T, 4]; ref_emb: [K, D].
  Returns:
    (dict(face_sim, face_sim_per_frame, temporal_consistency, drift,
    diversity), frame embeddings [T, D]).
  """
  emb = scorer.clip_embeddings(frames, boxes)
  crops = np.asarray(crop_and_resize(frames, boxes, scorer.encoder.input_size))
  sims = face_sim(emb, ref_emb)
  return dict(
      face_sim=float(sims.mean()), face_sim_per_frame=[float(s) for s in sims],
      temporal_consistency=temporal_consistency(emb), drift=drift(emb),
      diversity=diversity(emb, crops)), emb


def clip_metrics(scorer: FaceScorer, frames, references, boxes=None) -> dict:
  """All metrics of one clip.

  Args:
    scorer: FaceScorer of the evaluation encoder.
    frames: uint8 [T, H, W, 3].
    references: per character, a list of uint8 reference images.
    boxes: float [C, T, 4] face boxes (from the layout), or None to search
      for each character's face (then `box_source` says "search").

  Returns:
    dict(box_source, characters: per character dict(face_sim, face_sim_per_frame,
    temporal_consistency, drift, diversity), face_sim (mean over characters),
    temporal_consistency, drift, bleed).
  """
  frames = np.asarray(frames)
  ref_embs = [scorer.embed_references(r) for r in references]
  means = np.stack([reference_mean(e) for e in ref_embs]) if ref_embs else np.zeros((0, 1))
  source = "layout" if boxes is not None else "search"
  per_char, embs = [], []
  for c, ref_emb in enumerate(ref_embs):
    char_boxes = (np.asarray(boxes[c], np.float32) if boxes is not None
                  else scorer.search_boxes(frames, means[c]))
    row, emb = character_metrics(scorer, frames, char_boxes, ref_emb)
    per_char.append(row)
    embs.append(emb)
  mean = lambda key: float(np.mean([p[key] for p in per_char])) if per_char else None
  return dict(
      box_source=source, characters=per_char, face_sim=mean("face_sim"),
      temporal_consistency=mean("temporal_consistency"), drift=mean("drift"),
      bleed=bleed(np.stack(embs), means) if len(embs) > 1 else 0.0)
