"""A probe of stochastic sampling for the demo's mottled background (issue 10).

After each Euler step, a share `eta` of the noise that the new state implies
is replaced by fresh noise, and the state is rebuilt at the next level from
the clean estimate: x_next = (1 - t_next) x0_hat + t_next (sqrt(1 - eta^2)
eps_implied + eta eps_fresh). eta = 0 is the shipped ODE sampler. Rows of
the picture: eta = 0, 0.5, 1, for the held-out identity of `make demo`.

  python scripts/stochastic_sampler_probe.py runs/demo/video runs/demo/heldout out.png [TEXT_GUIDANCE]

A probe, not a sampler of the project: the fresh noise comes from one NumPy
generator on the host, not from per-example keys, so it is not yet
reproducible across meshes or batches.
"""

import sys

import jax
import numpy as np
from PIL import Image

from idjax import layout as layout_lib
from idjax import sharding
from idjax.sampling import samplers
from idjax.sampling.generator import Generator

STEPS = 25
FRAMES = 8
LAYOUT = [[[[0.2, 0.25, 0.7, 0.75], [0.3, 0.3, 0.8, 0.8]]]]  # scripts/demo.sh's --box


def main(workdir, heldout, out, text_guidance=1.0):
  gen = Generator.from_workdir(workdir)
  prompt = open(f"{heldout}/prompt.txt").read().strip()
  refs = [[[np.asarray(Image.open(f"{heldout}/ref_{k}.png").convert("RGB")) for k in range(3)]]]
  boxes = layout_lib.layout_boxes(LAYOUT, [1], gen.max_characters, FRAMES)
  host = gen._host_batch([prompt], refs, FRAMES, np.ones(1, np.float32), np.array([0]), boxes)
  ident = gen._identity_inputs(host, slice(0, 1))
  text, strength = gen._put_batch(host.text[:1]), gen._put_batch(host.strength[:1])
  scalar = lambda v: jax.device_put(np.float32(v), gen._replicated)
  on_mesh = lambda x: jax.device_put(x, gen._frames_sharding(5))
  s_id = gen.config.sample.identity_guidance
  passes = 3 if text_guidance != 1 else (1 if s_id == 1 else 2)
  step = gen._step_fn("euler", passes)
  grid = samplers.timesteps(STEPS, 1.0)
  rows = []
  for eta in (0.0, 0.5, 1.0):
    x = np.asarray(host.noise[:1])
    fresh = np.random.default_rng(7)
    with sharding.activation_sharding(gen.mesh, gen.rules):
      for i in range(STEPS):
        t, t_next = float(grid[i]), float(grid[i + 1])
        x_next = np.asarray(
            step(
                gen.params,
                on_mesh(x),
                scalar(t),
                scalar(t_next),
                text,
                ident,
                strength,
                scalar(text_guidance),
                scalar(s_id),
                None,
            )
        )
        if eta > 0 and t_next > 0:
          clean = x - t * (x_next - x) / (t_next - t)
          implied = (x - (1 - t) * clean) / t
          eps = np.sqrt(1 - eta**2) * implied + eta * fresh.standard_normal(x.shape)
          x_next = ((1 - t_next) * clean + t_next * eps).astype(np.float32)
        x = x_next
    frames = np.asarray(gen._to_frames(on_mesh(x)))[0, ..., :3]
    rows.append(np.concatenate(list(frames), axis=1))
  sheet = Image.fromarray(np.concatenate(rows, 0))
  sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(out)
  print(f"wrote {out}: rows eta = 0, 0.5, 1 ({prompt!r})")


if __name__ == "__main__":
  main(*sys.argv[1:4], *[float(a) for a in sys.argv[4:5]])
