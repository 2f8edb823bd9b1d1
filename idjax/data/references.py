"""Writes reference portraits and the prompt of a held-out identity, for sample.py.

  python -m idjax.data.references --out DIR [--index 0] [--count 3] [--resolution 64]

DIR receives ref_0.png .. ref_{count-1}.png (RGBA: the portrait, and its
head as the alpha, which a model with model.canvas_alpha reads), prompt.txt,
and target.png (a contact strip of the real held-out clip, for comparison). The identity is
drawn from the held-out split, so the model never saw it in training.
Existing files are kept unless --overwrite; every value is checked before
anything is rendered.
"""

import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from idjax import config_rules, configlib, paths
from idjax.data import world

# A character takes a handful of references (configs use 3); the bounds keep
# a typo from rendering for minutes or filling a disk.
MAX_COUNT = 64
MAX_FRAMES = 256


def parse_args(argv):
  p = configlib.ArgumentParser(prog="python -m idjax.data.references",
                               description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="folder to write into (created)")
  p.add_argument("--index", type=int, default=0, help="which held-out example")
  p.add_argument("--seed", type=int, default=12345)
  p.add_argument("--count", type=int, default=3, help=f"reference images, 1..{MAX_COUNT}")
  p.add_argument("--resolution", type=int, default=64, help="reference size in pixels, 32..128")
  p.add_argument("--frames", type=int, default=8, help=f"frames of target.png, 1..{MAX_FRAMES}")
  p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  checks = [
      (1 <= args.count <= MAX_COUNT, f"--count must be in 1..{MAX_COUNT}, got {args.count}."),
      (1 <= args.frames <= MAX_FRAMES, f"--frames must be in 1..{MAX_FRAMES}, got {args.frames}."),
      (32 <= args.resolution <= 128, f"--resolution must be in 32..128, got {args.resolution}."),
  ]
  for ok, message in checks:
    if not ok:
      raise configlib.UsageError(message)
  config_rules.check_seed(args.index, "--index")
  config_rules.check_seed(args.seed)
  return args


def output_files(out: str, count: int) -> list[str]:
  names = [f"ref_{k}.png" for k in range(count)] + ["target.png", "prompt.txt"]
  return [os.path.join(out, n) for n in names]


def _write_png(path, image):
  paths.atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


@configlib.exit_on_usage_error
def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  out = paths.check_folder(args.out, "--out")
  files = output_files(out, args.count)
  paths.check_files(files, "--out", args.overwrite)

  cfg = world.WorldConfig(resolution=args.resolution, num_frames=args.frames,
                          num_references=args.count, reference_resolution=args.resolution)
  with tqdm(total=len(files) + 1, desc="references", disable=args.no_progress,
            file=sys.stderr, leave=False) as bar:
    clip = world.render_clip(cfg, args.seed, args.index, split="heldout")
    bar.update(1)
    os.makedirs(out, exist_ok=True)
    # RGBA: the head's matte as alpha, the backdrop's colours kept under it.
    for k, image in enumerate(world.references_rgba(clip)):
      _write_png(files[k], image)
      bar.update(1)
    _write_png(files[-2], np.concatenate(list(clip["frames"]), axis=1))
    bar.update(1)
    paths.write_text(files[-1], clip["prompt"] + "\n")
    bar.update(1)
  print(f"held-out identity {int(clip['identity_ids'][0])}: {clip['prompt']!r} -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
