"""PNG plots of an evaluation result (the dict `benchmark.evaluate` returns).

  strength    FaceSim and diversity against identity_strength (the trade-off
              curve of a `--strengths` sweep), text only, floor and ceiling
              marked; a second axis reads FaceSim as its position from floor
              (0) to ceiling (1).
  over_time   FaceSim of frame t (mean over the identities) for every
              variant, with the real clips of the ceiling and the floor.
  variants    FaceSim per variant as bars, floor and ceiling as lines, each
              bar labelled with its position.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, so no
display, no global figure state) at a fixed size in pixels.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from idjax import paths

DPI = 100
SIZES = {"strength": (1100, 450), "over_time": (900, 500), "variants": (900, 500)}
CEILING, FLOOR, TEXT_ONLY = "ceiling", "floor", "generated (text only)"
# Reference lines: (row, label, colour, line style).
_MARKS = (
    (CEILING, "ceiling (real clip, own identity)", "tab:green", "--"),
    (FLOOR, "floor (real clip, another identity)", "tab:red", "--"),
)
# Variant colours: matplotlib's cycle without the marks' green and red.
_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_STYLES = ("-", "-.", ":")


def _figure(kind):
  width, height = SIZES[kind]
  fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _position_axis(ax, result, axis="y"):
  """A second axis on `ax` that reads FaceSim as (FaceSim - floor) / (ceiling - floor)."""
  floor = result["rows"][FLOOR]["face_sim"]
  span = result["rows"][CEILING]["face_sim"] - floor
  if abs(span) <= 1e-9:
    return
  functions = (lambda v: (v - floor) / span, lambda p: floor + p * span)
  if axis == "y":
    ax.secondary_yaxis("right", functions=functions).set_ylabel("position (floor 0, ceiling 1)")
  else:
    ax.secondary_xaxis("top", functions=functions).set_xlabel("position (floor 0, ceiling 1)")


def _cover(ax, values):
  """y limits that show every value with a margin (reference lines included)."""
  lo, hi = min(values), max(values)
  pad = 0.08 * (hi - lo) if hi > lo else 0.05
  ax.set_ylim(lo - pad, hi + pad)


def strength_points(result):
  """The sweep's (identity_strength, variant name) pairs, sorted by strength:
  every variant with an explicit identity_strength and all references."""
  points = [
      (float(kw["identity_strength"]), name)
      for name, kw in result["variants"].items()
      if "identity_strength" in kw and kw.get("num_references") is None
  ]
  return sorted(points)


def strength_figure(result) -> Figure:
  """FaceSim (left) and diversity (right) against identity_strength."""
  points = strength_points(result)
  if not points:
    raise ValueError("the result has no identity_strength sweep (run with --strengths).")
  rows = result["rows"]
  x = [s for s, _ in points]
  fig = _figure("strength")
  axes = fig.subplots(1, 2)
  for ax, key, label in zip(axes, ("face_sim", "diversity"), ("FaceSim", "diversity")):
    y = [rows[n][key] for _, n in points]
    ax.plot(x, y, "o-", color="tab:blue", label="refs + text")
    marks = [(rows[row][key], name, colour, style) for row, name, colour, style in _MARKS]
    if TEXT_ONLY in rows:
      marks.append((rows[TEXT_ONLY][key], "text only", "tab:gray", ":"))
    for value, name, colour, style in marks:
      ax.axhline(value, color=colour, linestyle=style, label=name)
    _cover(ax, y + [m[0] for m in marks])
    ax.set_xlabel("identity_strength")
    ax.set_ylabel(label)
    ax.set_xlim(min(0.0, *x) - 0.05, max(1.0, *x) + 0.05)
    ax.grid(alpha=0.3)
  axes[0].set_title("identity against identity_strength")
  axes[1].set_title("variation over a clip (1 - mean pairwise cosine)")
  _position_axis(axes[0], result)
  axes[1].legend(fontsize="small", loc="best")
  return fig


def over_time_figure(result) -> Figure:
  """FaceSim of each frame (mean over the identities) for every row."""
  per_frame = result.get("face_sim_per_frame")
  if not per_frame:
    raise ValueError("the result has no face_sim_per_frame (written by an older idjax.eval).")
  fig = _figure("over_time")
  ax = fig.subplots()
  marks = {row: (name, colour, style) for row, name, colour, style in _MARKS}
  variants = [n for n in per_frame if n not in marks]
  for name, values in per_frame.items():
    if name in marks:
      label, colour, style = marks[name]
    else:
      i = variants.index(name)
      label, colour = name, _COLOURS[i % len(_COLOURS)]
      style = _STYLES[i // len(_COLOURS) % len(_STYLES)]
    ax.plot(np.arange(len(values)), values, style, color=colour, marker=".", label=label)
  _cover(ax, [v for values in per_frame.values() for v in values])
  ax.set_xlabel("frame")
  ax.set_ylabel("FaceSim (mean over identities)")
  ax.set_title(f"FaceSim over time ({len(result.get('identities', []))} identities)")
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
  return fig


def variants_figure(result) -> Figure:
  """FaceSim per variant as horizontal bars; floor and ceiling as lines."""
  rows, positions = result["rows"], result["position"]
  names = list(positions)
  values = [rows[n]["face_sim"] for n in names]
  fig = _figure("variants")
  ax = fig.subplots()
  y = np.arange(len(names))
  ax.barh(y, values, color="tab:blue", height=0.6)
  ax.set_yticks(y, names)
  ax.invert_yaxis()  # the first variant on top, as in the table
  for yi, v, n in zip(y, values, names):
    p = positions[n]
    text = f"{v:.3f}" + ("" if p is None else f" (position {p:.2f})")
    # Right of the bar's outer end, or of zero for a negative bar (left of
    # it would run into the variant names).
    ax.annotate(
        text,
        (max(v, 0.0), yi),
        xytext=(4, 0),
        textcoords="offset points",
        va="center",
        fontsize="small",
    )
  for row, name, colour, style in _MARKS:
    ax.axvline(rows[row]["face_sim"], color=colour, linestyle=style, label=name)
  everything = values + [rows[CEILING]["face_sim"], rows[FLOOR]["face_sim"], 0.0]
  lo, hi = min(everything), max(everything)
  span = hi - lo if hi > lo else 0.5
  ax.set_xlim(lo - 0.08 * span, hi + 0.4 * span)  # room for the labels on the right
  ax.axvline(0.0, color="black", linewidth=0.8)
  ax.set_xlabel("FaceSim")
  ax.set_title("FaceSim per variant, between floor and ceiling")
  _position_axis(ax, result, axis="x")
  ax.grid(axis="x", alpha=0.3)
  fig.legend(fontsize="small", loc="outside lower center", ncols=2)
  return fig


FIGURES = {"strength": strength_figure, "over_time": over_time_figure, "variants": variants_figure}


def save(fig: Figure, path: str) -> None:
  """Writes `fig` as a PNG at its fixed pixel size, atomically."""
  paths.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def write(result, targets: dict) -> list:
  """Draws each kind -> path of `targets` and writes it; returns the paths."""
  for kind, path in targets.items():
    save(FIGURES[kind](result), path)
  return list(targets.values())
