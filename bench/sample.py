"""Sampling speed: seconds per denoising step and frames per second.

  python bench/sample.py --workdir runs/demo/video [--batch 8] [--steps 25] [--out bench/results/sample.json]
  python bench/sample.py --config configs/tiny.py ...   # randomly initialised model

Times `Generator.generate` (first step separately: it includes compilation)
and prints one JSON line, also written to --out. Memory: the process's peak
resident set (on CPU the device memory is host memory: weights, XLA's
buffers, the clip and its decode, `Generator.decode_frames` latent frames at
a time; `total_s` includes the decode) and XLA's compiled memory analysis of
one sampling step at this size (arguments, outputs, temporaries). Against
frames: bench/sample_frames.py.
"""

import argparse
import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/train_step.py

from idjax import configlib


def random_generator(config_path, face_config_path, overrides):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from idjax import models
  from idjax.face.frozen import FrozenFaceEncoder, build_encoder
  from idjax.sampling.generator import Generator
  config = configlib.load_config_file(config_path)
  configlib.parse_overrides(config, overrides)
  fcfg = configlib.load_config_file(face_config_path)
  encoder = build_encoder(fcfg)
  size = int(fcfg.input_size)
  fparams = jax.jit(lambda k: nn.unbox(encoder.init(k, jnp.zeros((1, size, size, 3))))["params"])(
      jax.random.key(1))
  fe = FrozenFaceEncoder(fcfg, fparams)
  from train_step import random_autoencoder  # bench/ is on sys.path (above)
  autoencoder = random_autoencoder(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   config)
  res = int(config.data.resolution)
  if autoencoder is not None:
    res = autoencoder.latent_shape(1, res, res)[1]
  args = models.dummy_inputs(
      config.model, batch=1, frames=config.model.patch_size[0], height=res, width=res,
      text_len=config.model.text_len, num_chars=config.model.max_characters,
      num_refs=config.data.num_references, face_embed_dim=fe.embed_dim,
      face_feature_dim=fe.feature_dim, face_cells=fe.feature_cells)
  model = models.build_model(config.model)
  params = jax.jit(lambda k: nn.unbox(model.init(k, *args))["params"])(jax.random.key(0))
  return Generator(config, params, fe, autoencoder=autoencoder)


def record_first_step_call(gen) -> list:
  """Makes `gen` hand its jitted sampling step, and the arguments of its first
  call, to the returned list [step, args] (for XLA's memory analysis)."""
  import jax
  seen = []
  build = gen._step_fn

  def recording_step_fn(method, passes, renoise=False):
    step = build(method, passes, renoise)

    def call(*step_args):
      if not seen:  # shapes and placements only: the state argument is donated
        seen.extend([step, jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), step_args)])
      return step(*step_args)
    return call

  gen._step_fn = recording_step_fn
  return seen


@configlib.exit_on_usage_error
def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=None)
  p.add_argument("--config", default=None)
  p.add_argument("--face-config", default="configs/face_encoder.py")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=25)
  p.add_argument("--frames", type=int, default=None)
  p.add_argument("--sampler", choices=("euler", "heun"), default="euler")
  p.add_argument("--identity-guidance", type=float, default=1.0)
  p.add_argument("--renoise", type=float, default=None, help="default: the config's")
  p.add_argument("--out", default="bench/results/sample.json")
  args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
  if (args.workdir is None) == (args.config is None):
    raise configlib.UsageError("Give exactly one of --workdir and --config.")
  if args.batch < 1 or args.steps < 1:
    raise configlib.UsageError("--batch and --steps must be >= 1.")
  import jax
  import numpy as np
  from idjax.sampling.generator import Generator
  if args.workdir:
    try:
      gen = Generator.from_workdir(args.workdir)
    except (ValueError, FileNotFoundError) as e:
      raise configlib.UsageError(str(e)) from None
  else:
    gen = random_generator(args.config, args.face_config, rest)
  r = gen.reference_resolution
  rng = np.random.default_rng(0)
  refs = [[[rng.integers(0, 256, (r, r, 3), dtype=np.uint8)] * gen.num_references]
          for _ in range(args.batch)]
  kw = dict(num_frames=args.frames, steps=args.steps, sampler=args.sampler,
            identity_guidance=args.identity_guidance, renoise=args.renoise, progress=False)
  first_call = record_first_step_call(gen)
  out = gen.generate(["a person"] * args.batch, refs, **kw)
  step, step_args = first_call
  analysis = step.lower(*step_args).compile().memory_analysis()
  t = out["timings"]
  frames = out["frames"].shape[1]
  steady = t["seconds_per_step_after_first"]
  result = dict(
      device=str(jax.devices()[0].device_kind), num_devices=jax.device_count(),
      batch=args.batch, frames=frames, resolution=int(out["frames"].shape[2]),
      steps=args.steps, sampler=args.sampler, passes=t["model_passes_per_evaluation"],
      renoise=float(gen.config.sample.renoise if args.renoise is None else args.renoise),
      per_device_batch=gen.per_device_batch, first_step_s=t["first_step_s"],
      seconds_per_step=steady, total_s=t["sampling_s"],
      clips_per_s=args.batch / (steady * args.steps) if steady > 0 else None,
      frames_per_s=args.batch * frames / (steady * args.steps) if steady > 0 else None,
      # ru_maxrss is in KiB on Linux.
      peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      step_argument_bytes=int(analysis.argument_size_in_bytes),
      step_output_bytes=int(analysis.output_size_in_bytes),
      step_temp_bytes=int(analysis.temp_size_in_bytes))
  print(json.dumps(result))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
  main()
