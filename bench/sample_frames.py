"""Sampling time and memory against clip length (issue 13).

  python bench/sample_frames.py --workdir runs/demo/video [--frames 8,32,120,240,480]
      [--steps 5] [--out bench/results/sample_frames.json]

Runs bench/sample.py once per length, each in its own process (so the peak
resident set is that length's alone), batch 1, and fits time and memory
against frames by least squares: memory is linear in frames when the fit's
residuals are small against its slope times the range. Prints one line per
length and the fits, and writes everything to --out.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fit_line(x, y) -> dict:
  """Least-squares y = intercept + slope * x, with the largest residual."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  slope, intercept = np.polyfit(x, y, 1)
  residual = y - (intercept + slope * x)
  return dict(
      slope=float(slope),
      intercept=float(intercept),
      max_abs_residual=float(np.max(np.abs(residual))),
      max_residual_share=float(np.max(np.abs(residual)) / max(abs(slope) * np.ptp(x), 1e-30)),
  )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--frames", default="8,32,120,240,480")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--out", default="bench/results/sample_frames.json")
  args = p.parse_args(argv)
  try:
    lengths = [int(v) for v in args.frames.split(",") if v.strip()]
  except ValueError:
    p.error(f"--frames must be comma-separated integers, got {args.frames!r}")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for frames in lengths:
      out = os.path.join(tmp, f"{frames}.json")
      cmd = [
          sys.executable,
          os.path.join(ROOT, "bench", "sample.py"),
          "--workdir",
          args.workdir,
          "--batch",
          "1",
          "--steps",
          str(args.steps),
          "--frames",
          str(frames),
          "--out",
          out,
      ]
      proc = subprocess.run(cmd, capture_output=True, text=True)
      if proc.returncode:
        sys.exit(f"bench/sample.py failed at {frames} frames: {proc.stderr.strip()[-2000:]}")
      with open(out) as f:
        row = json.load(f)
      rows.append(row)
      print(
          f"{frames:4d} frames: {row['seconds_per_step']:.3f} s/step, peak RSS "
          f"{row['peak_rss_bytes'] / 2**20:.0f} MiB, step temporaries "
          f"{row['step_temp_bytes'] / 2**20:.1f} MiB",
          flush=True,
      )
  x = [r["frames"] for r in rows]
  result = dict(
      workdir=os.path.abspath(args.workdir),
      steps=args.steps,
      rows=rows,
      fits={
          key: fit_line(x, [r[key] for r in rows])
          for key in (
              "seconds_per_step",
              "peak_rss_bytes",
              "step_temp_bytes",
              "step_argument_bytes",
          )
      },
  )
  for key, fit in result["fits"].items():
    print(
        f"{key}: {fit['intercept']:.4g} + {fit['slope']:.4g} x frames "
        f"(largest residual {fit['max_residual_share']:.1%} of slope x range)"
    )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(args.out + ".tmp", args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
