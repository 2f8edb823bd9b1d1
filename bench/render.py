"""Rendering speed of the synthetic world on one CPU core.

    python bench/render.py [--clips 200] [--resolution 64] [--frames 16]
                           [--characters 1] [--out bench/results/render.json]

Renders whole examples (clip, masks, boxes, K references, prompt) as the
on-the-fly source does, prints clips/s and writes it as JSON.
"""

import os

# One core: pin the process and keep BLAS/OpenMP from spawning threads. This
# must happen before NumPy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ[_var] = "1"

import argparse
import json
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idjax.data import world


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=200)
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--characters", type=int, default=1)
  parser.add_argument("--references", type=int, default=3)
  parser.add_argument("--reference_resolution", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "results", "render.json"))
  args = parser.parse_args(argv)
  if args.clips < 1:
    print("--clips must be at least 1.", file=sys.stderr)
    return 2
  try:
    cfg = world.WorldConfig(resolution=args.resolution, num_frames=args.frames,
                            max_characters=args.characters, min_characters=args.characters,
                            num_references=args.references,
                            reference_resolution=args.reference_resolution)
  except ValueError as e:
    print(e, file=sys.stderr)
    return 2
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

  for index in range(5):  # warm caches and lazy imports
    world.render_clip(cfg, args.seed, index)
  start, cpu_start = time.perf_counter(), time.process_time()
  for index in range(args.clips):
    world.render_clip(cfg, args.seed, index)
  seconds = time.perf_counter() - start
  # CPU time of this process: what one core delivers even when other jobs
  # share the machine (wall time then also counts time spent waiting).
  cpu_seconds = time.process_time() - cpu_start
  result = dict(
      clips_per_second=args.clips / seconds, ms_per_clip=1000 * seconds / args.clips,
      clips_per_cpu_second=args.clips / cpu_seconds,
      clips=args.clips, resolution=args.resolution, frames=args.frames,
      characters=args.characters, references=args.references,
      reference_resolution=args.reference_resolution, threads=1,
      cpu=platform.processor() or platform.machine(), python=platform.python_version(),
      # Other work on the machine slows this down; the load says how much there was.
      load_average_1min=os.getloadavg()[0])
  print(f"{result['clips_per_second']:.1f} clips/s wall, {result['clips_per_cpu_second']:.1f} clips per "
        f"CPU-second ({result['ms_per_clip']:.2f} ms/clip wall) for "
        f"{args.frames}x{args.resolution}x{args.resolution} clips with {args.characters} "
        f"character(s) and {args.references} references of {args.reference_resolution}px, one core, "
        f"load average {result['load_average_1min']:.1f}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
