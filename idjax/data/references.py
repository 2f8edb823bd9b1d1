"""Writes reference portraits and the prompt of a held-out identity, for sample.py.

  python -m idjax.data.references --out DIR [--index 0] [--count 3] [--resolution 64]

DIR receives ref_0.png .. ref_{count-1}.png, prompt.txt, and target.png (a
contact strip of the real held-out clip, for comparison). The identity is
drawn from the held-out split, so the model never saw it in training.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

from idjax.data import world


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder to write into (created)")
  parser.add_argument("--index", type=int, default=0, help="which held-out example")
  parser.add_argument("--seed", type=int, default=12345)
  parser.add_argument("--count", type=int, default=3, help="number of reference images")
  parser.add_argument("--resolution", type=int, default=64, help="reference size in pixels")
  parser.add_argument("--frames", type=int, default=8)
  args = parser.parse_args(argv)
  if args.count < 1 or args.index < 0 or not 32 <= args.resolution <= 128:
    print("error: --count must be >= 1, --index >= 0 and --resolution in 32..128.", file=sys.stderr)
    return 2
  cfg = world.WorldConfig(resolution=args.resolution, num_frames=args.frames,
                          num_references=args.count, reference_resolution=args.resolution)
  clip = world.render_clip(cfg, args.seed, args.index, split="heldout")
  os.makedirs(args.out, exist_ok=True)
  for k, image in enumerate(clip["references"][0]):
    Image.fromarray(image).save(os.path.join(args.out, f"ref_{k}.png"))
  Image.fromarray(np.concatenate(list(clip["frames"]), axis=1)).save(os.path.join(args.out, "target.png"))
  with open(os.path.join(args.out, "prompt.txt"), "w") as f:
    f.write(clip["prompt"] + "\n")
  print(f"held-out identity {int(clip['identity_ids'][0])}: {clip['prompt']!r} -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
