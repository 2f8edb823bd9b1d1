"""A side-by-side contact sheet of several trained video models on held-out identities.

  python scripts/compare_sheet.py --workdir runs/a/video --workdir runs/b/video \
      --identities 4 --out docs/compare.png

For each of the first N held-out identities of the eval protocol (the same
clips `python -m idjax.eval` renders: seed 0, clip i), one row block: the
first reference portrait and the real clip's frames on top, then each
workdir's sample with that clip's prompt, references and face-box layout
(seed 0). The references go with their head mattes as alpha, as the eval
gives them; `--mattes 1,0` adds rows without them (RGB references, as a
user's photos without alpha) for the models that read mattes
(model.canvas_alpha). Models of different resolutions are shown at the largest one
(nearest-neighbour upscaling, so a 32 px model's pixels stay visible).
"""

import argparse

import numpy as np
from PIL import Image

from idjax.data import world
from idjax.eval import benchmark
from idjax.sampling.generator import Generator


def _upscale(frames, side):
  """uint8 [T, h, w, 3] -> [T, side, side, 3], nearest neighbour."""
  factor = side // frames.shape[1]
  return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument(
      "--workdir", action="append", required=True, help="a trained video workdir (repeat)"
  )
  p.add_argument("--identities", type=int, default=4)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument(
      "--identity-guidance",
      default=None,
      help="comma-separated scales: one row per scale per workdir (default: each config's)",
  )
  p.add_argument(
      "--renoise",
      default=None,
      help="comma-separated sample.renoise values: one row per value (default: each config's)",
  )
  p.add_argument(
      "--mattes",
      default="1",
      help="comma-separated 1 (RGBA references: head mattes as alpha) / 0 (RGB): one row each",
  )
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  floats = lambda text: [None] if text is None else [float(s) for s in text.split(",")]
  scales, renoises = floats(args.identity_guidance), floats(args.renoise)
  mattes = args.mattes.split(",")

  gens = [Generator.from_workdir(w) for w in args.workdir]
  side = max(g.resolution for g in gens)
  # The real clips at the largest resolution, addressed as the eval addresses them.
  cfg = benchmark.world_config(
      gens[int(np.argmax([g.resolution for g in gens]))].config, args.frames
  )
  clips = benchmark.heldout_clips(cfg, benchmark.heldout_identities(args.identities))
  rows = []
  for clip in clips:
    refs = clip["references"][0]
    rows.append(np.concatenate([_upscale(refs[:1], side)[0]] + list(clip["frames"]), axis=1))
    for g in gens:
      for scale, renoise, matte in [(s, r, m) for s in scales for r in renoises for m in mattes]:
        if matte == "0" and not getattr(g.model, "canvas_alpha", False):
          continue  # the same row as with mattes: the model does not read them
        out = g.generate(
            [clip["prompt"]],
            [[list(world.references_rgba(clip) if matte == "1" else refs)]],
            num_frames=args.frames,
            seed=0,
            layout=[[clip["boxes"][0]]],
            identity_guidance=scale,
            renoise=renoise,
            progress=False,
        )
        frames = _upscale(out["frames"][0], side)
        blank = np.full((side, side, 3), 255, np.uint8)
        rows.append(np.concatenate([blank] + list(frames), axis=1))
    rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
  sheet = np.concatenate(rows[:-1], axis=0)
  Image.fromarray(sheet).save(args.out)
  print(
      f"wrote {args.out}: per identity, the reference and real clip, then "
      + ", ".join(args.workdir)
      + (
          ""
          if args.identity_guidance is None
          else f" at identity guidance {args.identity_guidance}"
      )
      + ("" if args.renoise is None else f" at renoise {args.renoise}")
  )


if __name__ == "__main__":
  main()
