"""Autoguidance (Karras et al. 2024) on the demo model, as an experiment.

The model is guided by a weaker, shorter-trained copy of itself,
v = v_weak + w (v_strong - v_weak), with the shipped identity guidance inside
the faces on top. For each w it prints the held-out evaluation's main row and
draws one contact-sheet row of the demo's held-out sample (stage 5's inputs).
Not a sampler option: see "Tried for the background" in the README.

  python train.py --config configs/tiny_latent.py --workdir runs/weak400 \
      --config.train.steps=400 ... (the demo's encoders and autoencoder)
  python scripts/autoguide_sheet.py --run runs/demo --weak runs/weak400/video \
      --scales 1,1.5,2,3 --out docs/autoguidance_sheet.png
"""

import argparse
import glob
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idjax.eval import benchmark
from idjax.eval import probe as probe_lib
from idjax.face.frozen import FrozenFaceEncoder
from idjax.sampling import samplers
from idjax.sampling.generator import Generator

MAIN = "generated (refs+text)"
LAYOUT = [[[[0.2, 0.25, 0.7, 0.75], [0.3, 0.3, 0.8, 0.8]]]]  # demo.sh's --box


def autoguided_step_fn(gen, weak_params, w):
  """A replacement for Generator._step_fn: autoguidance at scale w, then the
  identity guidance inside the faces (samplers.guide with s_text = 1)."""

  def make(method, passes):
    del passes
    model = gen.model

    def step(params, x, t, t_next, text, identity, strength, s_text, s_id, embeddings=None):
      del s_text, embeddings

      def velocity(x, t):
        tb = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],) + jnp.shape(t))

        def apply(p, ident):
          return model.apply({"params": p}, x, tb, text, ident, strength)

        no_id = identity.replace(char_valid=jnp.zeros_like(identity.char_valid))
        v_full, v_weak, v_text = (
            apply(params, identity),
            apply(weak_params, identity),
            apply(params, no_id),
        )
        faces = jnp.max(identity.face_masks * identity.char_valid[:, :, None, None, None], axis=1)[
            ..., None
        ]
        return v_weak + w * (v_full - v_weak) + (s_id - 1.0) * faces * (v_full - v_text)

      return samplers.step(velocity, x, t, t_next, method)

    return jax.jit(step)

  return make


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--run", required=True, help="a make demo RUNS folder")
  p.add_argument("--weak", required=True, help="the weak video model's workdir")
  p.add_argument("--scales", default="1,1.5,2,3")
  p.add_argument("--identities", type=int, default=8)
  p.add_argument("--out", required=True, help="contact sheet PNG")
  args = p.parse_args()
  gen = Generator.from_workdir(f"{args.run}/video")
  weak_params = Generator.from_workdir(args.weak).params
  encoder = FrozenFaceEncoder.from_workdir(f"{args.run}/face_eval")
  probe = probe_lib.load_or_train(f"{args.run}/probe")
  refs = [
      np.asarray(Image.open(f).convert("RGB"))
      for f in sorted(glob.glob(f"{args.run}/heldout/ref_*.png"))
  ]
  with open(f"{args.run}/heldout/prompt.txt") as f:
    prompt = f.read().strip()
  shipped = gen._step_fn
  rows = []
  for w in (float(s) for s in args.scales.split(",")):
    gen._steps = {}
    gen._step_fn = shipped if w == 1.0 else autoguided_step_fn(gen, weak_params, w)
    t0 = time.time()
    res = benchmark.evaluate(gen, encoder, args.identities, 0, probe=probe)
    row = res["realism"]["rows"][MAIN]
    print(
        f"w={w}: FaceSim position {res['position'][MAIN]:.3f}  HF background "
        f"{row['hf_background']:.3f}  HF face {row['hf_face']:.3f}  FD face "
        f"{row['fd_face_ratio']:.3f}x  attributes {row['attributes']['mean']:.3f}  "
        f"({time.time() - t0:.0f} s)",
        flush=True,
    )
    frames = gen.generate([prompt], [[refs]], seed=0, layout=LAYOUT, progress=False)["frames"][0]
    rows.append(np.concatenate(list(frames), axis=1))
  Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
