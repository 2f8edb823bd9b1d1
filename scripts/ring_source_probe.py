"""Where the halo around generated heads comes from, on real clips (issue 10).

Real held-out clips (bench/denoise_by_t.py's first N) are noised to t and
the model's clean estimate is decoded, with the identity inputs as trained
and altered. Columns: the real first frame; the estimate as trained; the
canvas zeroed; the canvas of a mid-grey portrait instead of the reference;
identity_strength 0 (no identity update and no canvas). Rows: identities.

  python scripts/ring_source_probe.py runs/demo/video docs/ring_source_probe.png [T] [N]
"""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
)

import denoise_by_t  # bench/: its held-out clips and model-space encoding

from idjax import diffusion
from idjax.sampling.generator import Generator


def main(workdir, out, t=0.3, n=4):
  gen = Generator.from_workdir(workdir)
  clips = denoise_by_t.heldout_clips(gen, n, 4)
  x0 = denoise_by_t.model_space(gen, np.stack([c["frames"] for c in clips]))
  boxes = np.stack([c["boxes"] for c in clips])
  prompts = [c["prompt"] for c in clips]

  def identity(references):
    host = gen._host_batch(prompts, references, 4, np.ones(n, np.float32), np.arange(n), boxes)
    return host, gen._identity_inputs(host, slice(0, n))

  host, trained = identity([[c["references"][0]] for c in clips])
  _, grey = identity([[np.full_like(c["references"][0], 128)] for c in clips])
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(1), x0.shape))
  x_t = (1 - t) * x0 + t * noise

  def estimate(inputs, strength=1.0):
    v = gen.model.apply(
        {"params": gen.params},
        x_t,
        jnp.full((n,), t),
        host.text[:n],
        inputs,
        jnp.full((n,), strength),
    )
    clean = jnp.asarray(x_t - t * np.asarray(v))
    return np.asarray(diffusion.to_uint8(gen.autoencoder.decode(gen.autoencoder_params, clean)))

  columns = [
      np.stack([c["frames"][0] for c in clips]),
      estimate(trained)[:, 0],
      estimate(dataclasses.replace(trained, ref_canvas=jnp.zeros_like(trained.ref_canvas)))[:, 0],
      estimate(dataclasses.replace(trained, ref_canvas=grey.ref_canvas))[:, 0],
      estimate(trained, 0.0)[:, 0],
  ]
  sheet = np.concatenate([np.concatenate(list(col), 0) for col in columns], 1)
  Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(out)
  print(f"wrote {out}: t = {t}; columns real, as trained, no canvas, grey canvas, strength 0")


if __name__ == "__main__":
  main(
      sys.argv[1], sys.argv[2], *[float(a) for a in sys.argv[3:4]], *[int(a) for a in sys.argv[4:5]]
  )
