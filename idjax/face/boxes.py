"""Face boxes for training crops: enlarged context crops and jittered boxes.

The face-encoder trainer caches each face as a crop of its box enlarged by a
`context` factor, then draws a jittered face box inside it every step; the
attribute probe (`idjax.eval.probe`) trains on the same crops.
"""

import numpy as np


def context_boxes(boxes, context: float):
  """Boxes [..., 4] grown about their centres by the factor `context`."""
  boxes = np.asarray(boxes, np.float32)
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2
  half = (boxes[..., 2:] - boxes[..., :2]) / 2 * context
  return np.concatenate([centre - half, centre + half], axis=-1)


def jittered_boxes(
    generator: np.random.Generator, batch: int, context: float, jitter: float
) -> np.ndarray:
  """Face boxes inside context crops: float32 [batch, 4], shifted and scaled
  by up to `jitter` of the box side."""
  side = 1.0 / context
  centre = 0.5 + generator.uniform(-jitter, jitter, (batch, 2)) * side
  half = side / 2 * (1.0 + generator.uniform(-jitter, jitter, (batch, 1)))
  return np.concatenate([centre - half, centre + half], -1).astype(np.float32)
