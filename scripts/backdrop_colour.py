"""The backdrop's colour across clips: generated against real (docs/demo_quality.md).

  python scripts/backdrop_colour.py runs/demo/video [more workdirs]

On the eval's first 32 held-out clips (seed 0; each workdir samples with the
clip's prompt, references and face-box layout, seed 0), per clip the mean
colour of the backdrop (outside the face box grown by realism.backdrop_margin,
over all frames); prints the std of that colour over clips (mean over
channels, [0, 1] units) and its mean saturation (max minus min channel). A
model that paints every backdrop one grey scores low on both, whatever its
within-frame texture.
"""

import sys

import numpy as np

from idjax.data import world
from idjax.eval import benchmark, realism
from idjax.sampling.generator import Generator

CLIPS = 32


def colour_stats(frames, boxes):
  """frames uint8 [N, T, H, W, 3], boxes [N, T, 4] -> (std over clips, saturation)."""
  backdrop = realism.backdrop_mask(boxes[..., None, :], *frames.shape[2:4])  # [N, T, H, W]
  x = frames.astype(np.float64) / 255.0
  means = np.stack([clip[mask].mean(axis=0) for clip, mask in zip(x, backdrop)])  # [N, 3]
  return float(means.std(axis=0).mean()), float((means.max(axis=1) - means.min(axis=1)).mean())


def main(workdirs):
  gens = [Generator.from_workdir(w) for w in workdirs]
  cfg = benchmark.world_config(gens[0].config, 8)
  clips = benchmark.heldout_clips(cfg, benchmark.heldout_identities(CLIPS))
  boxes = np.stack([c["boxes"][0] for c in clips])
  rows = [("real renders", np.stack([c["frames"] for c in clips]))]
  for workdir, gen in zip(workdirs, gens):
    frames = [
        gen.generate(
            [c["prompt"]],
            [[list(world.references_rgba(c))]],
            num_frames=8,
            seed=0,
            layout=[[c["boxes"][0]]],
            progress=False,
        )["frames"][0]
        for c in clips
    ]
    rows.append((workdir, np.stack(frames)))
  for name, frames in rows:
    spread, saturation = colour_stats(frames, boxes)
    print(f"{name}: backdrop colour std over clips {spread:.3f}, saturation {saturation:.3f}")


if __name__ == "__main__":
  main(sys.argv[1:])
