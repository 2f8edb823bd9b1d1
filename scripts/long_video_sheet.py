"""What a 240-frame clip looks like, one shot, chunk by chunk and naive.

  python scripts/long_video_sheet.py --workdir runs/demo/video --frames 240 \
      --chunk-frames 16 --context-frames 4 --out docs/long_video_sheet.png

For the first N held-out identities of the eval protocol (the clips
`python -m idjax.eval` renders: seed 0, clip i): one row block with the first
reference and the real clip, then one row per variant, at the same frames:
the first, the frames on both sides of the first two seams, and frames
spread to the last. Columns are labelled with their frame index. Also writes
each variant's frames losslessly as OUT_STEM_<variant>_<i>.npy when --save-frames.
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from idjax.eval import benchmark, drift
from idjax.sampling.extend import extend
from idjax.sampling.generator import Generator

LABEL = 12  # pixels of the label strip above each column


def columns(num_frames, starts) -> list[int]:
  """The first frame, both sides of the first two seams, then spread to the last."""
  picked = [0]
  for b in starts[:2]:
    picked += [b - 1, b]
  picked += [int(v) for v in np.linspace(num_frames // 4, num_frames - 1, 4)]
  return sorted(set(picked))


def labelled_row(frames, picks, side, caption):
  """One row: `caption` (an image, or a name written in the first cell), then
  the picked frames, each under its frame index."""
  strip = np.full((LABEL + side, len(picks) * (side + 2) + side, 3), 255, np.uint8)
  image = Image.fromarray(strip)
  draw = ImageDraw.Draw(image)
  if isinstance(caption, str):
    draw.text((2, LABEL + side // 2 - 6), caption, fill=(0, 0, 0))
  else:
    image.paste(Image.fromarray(caption), (0, LABEL))
  for j, f in enumerate(picks):
    x = side + 2 + j * (side + 2)
    image.paste(Image.fromarray(frames[f]), (x, LABEL))
    draw.text((x + 2, 0), str(f), fill=(0, 0, 0))
  return np.asarray(image)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--identities", type=int, default=2)
  p.add_argument("--frames", type=int, default=240)
  p.add_argument("--chunk-frames", type=int, default=16)
  p.add_argument("--context-frames", type=int, default=4)
  p.add_argument("--out", required=True)
  p.add_argument("--save-frames", action="store_true")
  args = p.parse_args(argv)

  g = Generator.from_workdir(args.workdir)
  cfg = benchmark.world_config(g.config, args.frames)
  starts = drift.chunk_starts(args.frames, args.chunk_frames, args.context_frames)
  picks = columns(args.frames, starts)
  side = g.resolution
  rows = []
  clips = benchmark.heldout_clips(cfg, benchmark.heldout_identities(args.identities))
  for i, clip in enumerate(clips):
    refs, boxes = list(clip["references"][0]), clip["boxes"][0]
    chunked = {
        name: extend(
            g,
            clip["prompt"],
            [refs],
            args.frames,
            seed=i,
            layout=[boxes],
            chunk_frames=args.chunk_frames,
            context_frames=m,
        )
        for name, m in (("chunked", args.context_frames), ("naive", 0))
    }
    # Each clip's pixel change at its own seams; the one-shot clip's at the chunked one's.
    variants = {
        "one shot": (
            g.generate(
                [clip["prompt"]], [[refs]], num_frames=args.frames, seed=i, layout=[[boxes]]
            )["frames"][0],
            starts,
        ),
        **{name: (out["frames"], out["chunk_starts"]) for name, out in chunked.items()},
    }
    rows.append(labelled_row(clip["frames"], picks, side, caption=refs[0]))
    for name, (frames, seams) in variants.items():
      rows.append(labelled_row(frames, picks, side, name))
      jumps = drift.frame_jumps(frames, seams)
      print(
          f"identity {i}, {name}: pixel change {jumps['seam']:.2f} levels across seams, "
          f"{jumps['within']:.2f} within chunks"
      )
      if args.save_frames:
        stem = args.out[: -len(".png")] if args.out.endswith(".png") else args.out
        np.save(f"{stem}_{name.replace(' ', '_')}_{i}.npy", frames)
    rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  Image.fromarray(np.concatenate(rows[:-1])).save(args.out)
  print(
      f"wrote {args.out}: per identity, the reference and the real clip, then one shot, "
      f"chunked ({args.chunk_frames} frames, {args.context_frames} context) and naive, "
      f"at frames {picks}"
  )


if __name__ == "__main__":
  main()
