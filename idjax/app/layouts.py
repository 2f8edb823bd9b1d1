"""Preset box trajectories for the page: where each character's face goes.

A trajectory is a start and an end box (y0, x0, y1, x1 as fractions of the
frame; the Generator interpolates between them over the clip), the form that
`sample.py --box NAME=start:end` takes. Character `index` of `count`:

  centre          still; the faces side by side across the middle.
  left-right      the row of faces slides from the left side to the right.
  walking across  each face crosses the whole frame in its own lane (lanes
                  split the height), even-numbered characters left to
                  right, odd-numbered ones right to left.

Numbers are rounded to 4 decimals, so the text the page shows is exactly
what is sampled.
"""

import numpy as np

PRESETS = ("centre", "left-right", "walking across")


def _box(y0, x0, side):
  y0, x0 = max(0.0, y0), max(0.0, x0)
  return [round(y0, 4), round(x0, 4), round(min(1.0, y0 + side), 4), round(min(1.0, x0 + side), 4)]


def preset_boxes(preset: str, index: int, count: int) -> np.ndarray:
  """float64 [2, 4]: the start and the end box of character `index` of `count`."""
  if preset not in PRESETS:
    raise ValueError(f"Unknown layout {preset!r}; expected one of {', '.join(PRESETS)}.")
  if not 0 <= index < count:
    raise ValueError(f"Character {index} of {count} does not exist.")
  if preset == "walking across":
    side = min(0.4, 0.9 / count)
    y0 = (index + 0.5) / count - side / 2
    start, end = _box(y0, 0.0, side), _box(y0, 1.0 - side, side)
    if index % 2:
      start, end = end, start
    return np.asarray([start, end], np.float64)
  side = min(0.5, 0.9 / count)
  y0 = 0.5 - side / 2
  if preset == "centre":
    x0 = (index + 0.5) / count - side / 2
    return np.asarray([_box(y0, x0, side)] * 2, np.float64)
  slack = 1.0 - count * side  # left-right: the row's free width, crossed once
  return np.asarray(
      [_box(y0, index * side, side), _box(y0, slack + index * side, side)], np.float64
  )


def box_text(box) -> str:
  """[4] -> 'y0, x0, y1, x1', the numbers as parse_box reads them back."""
  return ", ".join(f"{float(v):g}" for v in box)
