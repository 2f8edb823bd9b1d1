"""Renoising against the ODE sampler on the demo's held-out identity (issue 10).

Rows of the picture: `sample.renoise` = 0 (the ODE sampler), 0.5 and 1, the
same seed and layout as `make demo`'s sample (samplers.renoise_step: after
each Euler step that share of the noise is swapped for fresh noise).

  python scripts/stochastic_sampler_probe.py runs/demo/video runs/demo/heldout out.png [TEXT_GUIDANCE]
"""

import sys

import numpy as np
from PIL import Image

from idjax.sampling.generator import Generator

LAYOUT = [[[0.2, 0.25, 0.7, 0.75], [0.3, 0.3, 0.8, 0.8]]]  # scripts/demo.sh's --box


def main(workdir, heldout, out, text_guidance=1.0):
  gen = Generator.from_workdir(workdir)
  prompt = open(f"{heldout}/prompt.txt").read().strip()
  refs = [np.asarray(Image.open(f"{heldout}/ref_{k}.png").convert("RGB")) for k in range(3)]
  rows = []
  for eta in (0.0, 0.5, 1.0):
    frames = gen.generate(
        [prompt],
        [[refs]],
        seed=0,
        layout=[LAYOUT],
        renoise=eta,
        text_guidance=text_guidance,
        progress=False,
    )["frames"][0]
    rows.append(np.concatenate(list(frames), axis=1))
  sheet = Image.fromarray(np.concatenate(rows, 0))
  sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(out)
  print(f"wrote {out}: rows renoise = 0, 0.5, 1 ({prompt!r})")


if __name__ == "__main__":
  main(*sys.argv[1:4], *[float(a) for a in sys.argv[4:5]])
