"""Drift over a long clip: how FaceSim moves from the first frame to the last,
and whether the seams of a clip made chunk by chunk show.

Pure NumPy on per-frame series (FaceSim to the references, as
`metrics.character_metrics` returns it) and per-frame embeddings, plus a PNG
of FaceSim per frame, one line per variant.

  slope_per_100    least-squares slope of FaceSim against the frame index,
                   times 100: FaceSim gained (lost, if negative) per 100 frames.
  end_minus_start  mean FaceSim of the last 10% of the frames minus that of
                   the first 10% (at least one frame each).
  seam             mean cosine of adjacent frames' embeddings across chunk
                   boundaries (frame b-1 to frame b, b the first new frame of
                   a chunk), against the same within chunks; `seam_gap` is
                   within - seam (positive: the seams are visible).
  frame_jumps      the same for the pixels: mean absolute change of adjacent
                   frames across seams against within chunks (a jump of the
                   background or the lighting that leaves the face alone).
"""

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from idjax.eval import metrics, plots

SIZE = (900, 500)
_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def _series(values) -> np.ndarray:
  values = np.asarray(values, np.float64).reshape(-1)
  if not np.all(np.isfinite(values)):
    raise ValueError("a FaceSim series must be finite.")
  return values


def slope_per_100(face_sim) -> float:
  """Least-squares slope of a per-frame series [T] per 100 frames (0 for T < 2)."""
  y = _series(face_sim)
  if len(y) < 2:
    return 0.0
  t = np.arange(len(y), dtype=np.float64)
  t -= t.mean()
  return float(100.0 * np.sum(t * (y - y.mean())) / np.sum(t * t))


def edge_frames(num_frames: int, fraction: float = 0.1) -> int:
  """Frames in the first (and in the last) `fraction` of a clip: at least one."""
  if not 0 < fraction <= 0.5:
    raise ValueError(f"fraction must lie in (0, 0.5], got {fraction}.")
  return max(1, math.ceil(fraction * num_frames - 1e-9))


def end_minus_start(face_sim, fraction: float = 0.1) -> float:
  """Mean of the last `fraction` of a series [T] minus the mean of the first."""
  y = _series(face_sim)
  if len(y) == 0:
    raise ValueError("an empty FaceSim series has no start or end.")
  n = edge_frames(len(y), fraction)
  return float(y[-n:].mean() - y[:n].mean())


def adjacent_similarity(emb) -> np.ndarray:
  """Cosine of frame t and t+1 for embeddings [T, D] -> [T-1]."""
  emb = metrics.normalize(emb)
  return np.sum(emb[1:] * emb[:-1], axis=-1)


def chunk_starts(num_frames: int, chunk_frames: int, context_frames: int = 0) -> list[int]:
  """The first new frame of every chunk after the first, for a clip made in
  chunks of `chunk_frames` frames of which the first `context_frames` repeat
  the previous chunk's last frames: the seams are between frame b-1 and b."""
  new = chunk_frames - context_frames
  if new < 1:
    raise ValueError(
        f"a chunk of {chunk_frames} frames with {context_frames} context frames " "adds no frame."
    )
  return list(range(chunk_frames, num_frames, new))


def seam_consistency(emb, starts) -> dict:
  """Adjacent-frame similarity across seams against within chunks.

  Args:
    emb: [T, D] per-frame embeddings (face crops or whole frames).
    starts: frame indices b (0 < b < T) where a new chunk's frames begin.

  Returns:
    dict(seam: mean cosine of pairs (b-1, b), within: mean over every other
    adjacent pair, seam_gap: within - seam, num_seams). Either mean is None
    where there is no such pair (then seam_gap is None).
  """
  sims = adjacent_similarity(emb)
  t = len(sims) + 1
  starts = sorted({int(b) for b in starts})
  if any(not 0 < b < t for b in starts):
    raise ValueError(f"seam frames must lie in 1..{t - 1}, got {starts}.")
  at_seam = np.zeros(len(sims), bool)
  at_seam[[b - 1 for b in starts]] = True
  seam = float(sims[at_seam].mean()) if at_seam.any() else None
  within = float(sims[~at_seam].mean()) if (~at_seam).any() else None
  gap = None if seam is None or within is None else within - seam
  return dict(seam=seam, within=within, seam_gap=gap, num_seams=len(starts))


def frame_jumps(frames, starts) -> dict:
  """Pixel change between adjacent frames across seams against within chunks.

  A seam can keep the face (its embedding barely moves) and still jump: the
  background, the lighting or the head's outline changing at once. This is
  the mean absolute difference of adjacent frames, in 0..255 levels.

  Args:
    frames: [T, H, W, C] (uint8 or float, same scale).
    starts: frame indices b (0 < b < T) where a new chunk's frames begin.

  Returns:
    dict(seam: mean |frame b - frame b-1| over the seams, within: the same
    over every other adjacent pair, ratio: seam / within). None where there
    is no such pair.
  """
  frames = np.asarray(frames, np.float64)
  change = np.abs(frames[1:] - frames[:-1]).reshape(len(frames) - 1, -1).mean(axis=1)
  starts = sorted({int(b) for b in starts})
  if any(not 0 < b < len(frames) for b in starts):
    raise ValueError(f"seam frames must lie in 1..{len(frames) - 1}, got {starts}.")
  at_seam = np.zeros(len(change), bool)
  at_seam[[b - 1 for b in starts]] = True
  seam = float(change[at_seam].mean()) if at_seam.any() else None
  within = float(change[~at_seam].mean()) if (~at_seam).any() else None
  ratio = seam / within if seam is not None and within else None
  return dict(seam=seam, within=within, ratio=ratio)


def drift_report(face_sim, emb=None, starts=(), fraction: float = 0.1) -> dict:
  """All drift numbers of one clip (or of a per-frame mean over clips).

  Args:
    face_sim: [T] FaceSim per frame.
    emb: optional [T, D] per-frame embeddings, for the seam numbers.
    starts: first frames of the chunks after the first (`chunk_starts`).
  """
  y = _series(face_sim)
  n = edge_frames(len(y), fraction)
  out = dict(
      num_frames=len(y),
      face_sim=float(y.mean()),
      slope_per_100=slope_per_100(y),
      first=float(y[:n].mean()),
      last=float(y[-n:].mean()),
      end_minus_start=end_minus_start(y, fraction),
  )
  if emb is not None:
    out.update(
        seam_consistency(emb, starts)
        if len(starts)
        else dict(
            seam=None,
            within=float(adjacent_similarity(emb).mean()) if len(emb) > 1 else None,
            seam_gap=None,
            num_seams=0,
        )
    )
  return out


def drift_figure(series: dict, starts=(), title: str = "FaceSim per frame") -> Figure:
  """FaceSim per frame, one line per variant (name -> [T] values), with each
  line's least-squares fit dashed and the chunk seams (`starts`) dotted."""
  if not series:
    raise ValueError("no series to plot.")
  width, height = SIZE
  fig = Figure(figsize=(width / plots.DPI, height / plots.DPI), dpi=plots.DPI, layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  everything = []
  for i, (name, values) in enumerate(series.items()):
    y = _series(values)
    t = np.arange(len(y))
    colour = _COLOURS[i % len(_COLOURS)]
    slope = slope_per_100(y)
    label = f"{name} ({slope:+.3f} / 100 frames, end - start {end_minus_start(y):+.3f})"
    ax.plot(t, y, "-", color=colour, linewidth=1.0, label=label)
    if len(y) > 1:
      fit = y.mean() + slope / 100.0 * (t - t.mean())
      ax.plot(t, fit, "--", color=colour, linewidth=1.0)
    everything.extend(y.tolist())
  for b in starts:
    ax.axvline(b - 0.5, color="tab:gray", linestyle=":", linewidth=0.8)
  lo, hi = min(everything), max(everything)
  pad = 0.08 * (hi - lo) if hi > lo else 0.05
  ax.set_ylim(lo - pad, hi + pad)
  ax.set_xlabel("frame")
  ax.set_ylabel("FaceSim")
  ax.set_title(title + ("; dotted: chunk seams" if len(starts) else ""))
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)
  fig.legend(fontsize="small", loc="outside lower center", ncols=1)
  return fig


def write_drift_plot(path: str, series: dict, starts=(), title: str = "FaceSim per frame"):
  """drift_figure(...) as a PNG at `path` (atomically)."""
  plots.save(drift_figure(series, starts, title), path)
