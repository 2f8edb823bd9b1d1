"""Where a trained video model's denoising fails: its clean estimate against t.

  python bench/denoise_by_t.py --workdir runs/demo/video [--clips 8] [--out bench/results/denoise_by_t.json]

On real held-out clips (in the model's space: pixels, or the autoencoder's
latents) noised to each t, it prints per t:
  mse        mean squared error of the clean estimate x0_hat;
  mean_mse   that of predicting every clip as the clips' mean (at t = 1,
             where the input is pure noise, nothing can do much better);
  leak       how much of the input noise is copied into x0_hat: the
             regression coefficient of (x0_hat - x0) on the noise. For
             white Gaussian data of variance s^2 the best estimate leaks
             (1-t) s^2 t / ((1-t)^2 s^2 + t^2); at t = 1 it must be 0.
Then it samples from the same clips noised to t0 (instead of from pure
noise) and prints the FaceSim position of each start: a model whose samples
fail from t0 = 1 but not from t0 = 0.6 denoises well and cannot lay out a
frame from noise. One JSON object is written to --out; --sheet also draws
the clean estimates along the sampling trajectory (docs/latent_trajectory.png),
--start-sheet the samples started from six clips noised to t0 = 1 ... 0.5
(docs/start_from_real_sheet.png).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from idjax import diffusion
from idjax.data import world
from idjax.eval import benchmark
from idjax.face.frozen import FrozenFaceEncoder
from idjax.sampling import samplers
from idjax.sampling.generator import Generator, resolve_path

TS = (1.0, 0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05)
STARTS = (1.0, 0.8, 0.6, 0.4)


def heldout_clips(generator, n, num_frames):
  """The first n held-out identities' clips of `num_frames` frames."""
  cfg = benchmark.world_config(generator.config, num_frames)
  return benchmark.heldout_clips(cfg, benchmark.heldout_identities(n))


def model_space(generator, frames):
  x0 = diffusion.to_model_space(frames)
  if generator.autoencoder is not None:
    x0 = generator.autoencoder.encode(generator.autoencoder_params, x0)
  return np.asarray(x0)


def error_by_t(generator, clips):
  n, frames = len(clips), clips[0]["frames"].shape[0]
  x0 = model_space(generator, np.stack([c["frames"] for c in clips]))
  host = generator._host_batch(
      [c["prompt"] for c in clips],
      [[c["references"][0]] for c in clips],
      frames,
      np.ones(n, np.float32),
      np.arange(n),
      np.stack([c["boxes"] for c in clips]),
  )
  identity = generator._identity_inputs(host, slice(0, n))
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(1), x0.shape))
  mean_mse = float(np.mean((x0.mean(0, keepdims=True) - x0) ** 2))
  rows = []
  for t in TS:
    x_t = (1 - t) * x0 + t * noise
    v = generator.model.apply(
        {"params": generator.params}, x_t, jnp.full((n,), t), host.text[:n], identity, jnp.ones(n)
    )
    err = np.asarray(x_t - t * v) - x0
    rows.append(
        dict(
            t=t,
            mse=float(np.mean(err**2)),
            mean_mse=mean_mse,
            leak=float(np.mean(err * noise) / np.mean(noise**2)),
        )
    )
  return rows


@contextlib.contextmanager
def started_from(generator, x0, t0):
  """Within: `generator.generate` starts its first len(x0) examples from the
  clips x0 (model space) noised to t0 instead of pure noise, on the grid
  scaled to [t0, 0]; call it with steps=start_steps(generator, t0)."""
  make_batch, make_grid = generator._host_batch, samplers.timesteps
  n = len(x0)

  def host(*args):
    batch = make_batch(*args)
    start = batch.noise.copy()
    start[:n] = (1 - t0) * x0 + t0 * start[:n]
    return dataclasses.replace(batch, noise=start)

  generator._host_batch = host
  samplers.timesteps = lambda s, shift=1.0: (make_grid(s, shift) * t0).astype(np.float32)
  try:
    yield
  finally:
    generator._host_batch, samplers.timesteps = make_batch, make_grid


def start_steps(generator, t0):
  return max(int(round(int(generator.config.sample.steps) * t0)), 1)


def protocol_clips(generator, n):
  """evaluate()'s first n held-out clips (its identity order and frame count)."""
  cfg = benchmark.world_config(generator.config, None)
  return benchmark.heldout_clips(cfg, benchmark.heldout_identities(n + 1, seed=0)[:n])


def position_by_start(generator, eval_encoder, n):
  """FaceSim position of samples started from real clips noised to t0."""
  x0 = model_space(generator, np.stack([c["frames"] for c in protocol_clips(generator, n)]))
  out = []
  for t0 in STARTS:
    steps = start_steps(generator, t0)
    with started_from(generator, x0, t0):
      r = benchmark.evaluate(generator, eval_encoder, n, 0, {"refs+text": dict(steps=steps)})
    out.append(dict(t0=t0, steps=steps, position=r["position"]["refs+text"]))
  return out


def start_sheet(generator, n, path, starts=(1.0, 0.9, 0.8, 0.7, 0.5), renoise=None):
  """PNG: per held-out clip (rows), its first frame, then the first frame of
  the sample started from it noised to each t0 (columns), with RGBA
  references: what of the clip's backdrop the sampler keeps."""
  clips = protocol_clips(generator, n)
  x0 = model_space(generator, np.stack([c["frames"] for c in clips]))
  panels = [np.concatenate([c["frames"][0] for c in clips], 0)]
  for t0 in starts:
    with started_from(generator, x0, t0):
      out = generator.generate(
          [c["prompt"] for c in clips],
          [[world.references_rgba(c)] for c in clips],
          layout=[[c["boxes"][0]] for c in clips],
          steps=start_steps(generator, t0),
          seed=0,
          renoise=renoise,
          progress=False,
      )
    panels.append(np.concatenate(list(out["frames"][:, 0]), 0))
  sheet = np.concatenate(panels, 1)
  Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)
  return list(starts)


def trajectory_sheet(generator, n, path, columns=(0, 3, 6, 10, 15, 20)):
  """PNG: per held-out identity (rows), the real first frame, then the
  sampler's clean estimate x0_hat (decoded) at the grid steps `columns`,
  then the sample. x0_hat at step k is one Euler step from grid[k] to 0."""
  clips = protocol_clips(generator, n)
  steps = int(generator.config.sample.steps)
  grid = samplers.timesteps(steps)
  make_grid = samplers.timesteps
  panels = [np.concatenate([c["frames"][0] for c in clips], 0)]
  try:
    for k in list(columns) + [steps]:
      cut = grid if k >= steps else np.append(grid[: k + 1], np.float32(0.0))
      samplers.timesteps = lambda s, shift=1.0, cut=cut: cut
      out = generator.generate(
          [c["prompt"] for c in clips],
          [[c["references"][0]] for c in clips],
          layout=[[c["boxes"][0]] for c in clips],
          steps=len(cut) - 1,
          seed=0,
          progress=False,
      )
      panels.append(np.concatenate(list(out["frames"][:, 0]), 0))
  finally:
    samplers.timesteps = make_grid
  sheet = np.concatenate(panels, 1)
  Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)
  return [float(grid[k]) for k in columns] + [0.0]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--clips", type=int, default=8)
  p.add_argument("--out", default="bench/results/denoise_by_t.json")
  p.add_argument("--sheet", default="", help="also write the trajectory contact sheet (PNG) here")
  p.add_argument(
      "--start-sheet",
      default="",
      help="also write samples started from real clips noised to t0 = 1 ... 0.5 (PNG)",
  )
  p.add_argument(
      "--renoise",
      type=float,
      default=None,
      help="--start-sheet's sample.renoise (default: the workdir's)",
  )
  args = p.parse_args()
  generator = Generator.from_workdir(args.workdir)
  eval_encoder = FrozenFaceEncoder.from_workdir(
      resolve_path(generator.config.eval_encoder_workdir, args.workdir)
  )
  rows = error_by_t(
      generator, heldout_clips(generator, args.clips, int(generator.config.data.num_frames))
  )
  print(f"{'t':>5} {'mse':>8} {'mean_mse':>9} {'leak':>7}")
  for r in rows:
    print(f"{r['t']:5.2f} {r['mse']:8.4f} {r['mean_mse']:9.4f} {r['leak']:+7.3f}")
  starts = position_by_start(generator, eval_encoder, args.clips)
  for r in starts:
    print(
        f"sampling from real clips noised to t0 = {r['t0']:.1f} ({r['steps']} steps): "
        f"FaceSim position {r['position']:.3f}"
    )
  result = dict(workdir=os.path.abspath(args.workdir), clips=args.clips, by_t=rows, by_start=starts)
  if args.sheet:
    result["sheet"] = dict(path=args.sheet, t=trajectory_sheet(generator, 4, args.sheet))
    print(f"wrote {args.sheet}: columns real, then x0_hat at t = {result['sheet']['t']}")
  if args.start_sheet:
    t0s = start_sheet(generator, 6, args.start_sheet, renoise=args.renoise)
    result["start_sheet"] = dict(path=args.start_sheet, t0=t0s, renoise=args.renoise)
    print(f"wrote {args.start_sheet}: columns real, then samples started at t0 = {t0s}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(dict(by_t=len(rows), by_start=len(starts), out=args.out)))


if __name__ == "__main__":
  main()
