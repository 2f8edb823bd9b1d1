"""The per-frame FaceSim plot of each character, from sample.py's JSON metrics.

One panel per character: FaceSim (cosine similarity, under the evaluation
encoder, of the face crop of frame t and the mean reference embedding) over
the frames, its clip mean as a dashed line. Drawn on matplotlib's Agg canvas
(no pyplot, no display), as idjax.eval.plots draws.
"""

from matplotlib.figure import Figure

from idjax.eval import plots

PANEL = (360, 300)  # pixels per character panel


def figure(metrics: dict) -> Figure:
  """metrics: the `metrics` entry of sample.py's JSON (characters: name -> dict
  with face_sim_per_frame and face_sim; box_source)."""
  chars = metrics["characters"]
  n = len(chars)
  fig = Figure(
      figsize=(PANEL[0] * n / plots.DPI, PANEL[1] / plots.DPI), dpi=plots.DPI, layout="constrained"
  )
  axes = fig.subplots(1, n, squeeze=False)[0]
  for ax, (name, row) in zip(axes, chars.items()):
    values = row["face_sim_per_frame"]
    ax.plot(range(len(values)), values, marker="o", color="tab:blue", label="frame")
    ax.axhline(
        row["face_sim"],
        color="tab:blue",
        linestyle="--",
        alpha=0.6,
        label=f"mean {row['face_sim']:.3f}",
    )
    ax.set_title(f"{name}", fontsize="medium")
    ax.set_xlabel("frame")
    ax.set_ylim(min(-0.1, min(values) - 0.05), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
  axes[0].set_ylabel("FaceSim")
  fig.suptitle(f"FaceSim per frame (boxes: {metrics['box_source']})", fontsize="medium")
  return fig


def write(metrics: dict, path: str) -> str:
  plots.save(figure(metrics), path)
  return path
