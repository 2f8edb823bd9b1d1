"""Train-step performance: step time, samples/s, model FLOP/s against the
machine's measured matmul FLOP/s (MFU), memory and compile time; then memory
and step time as the number of frames grows, with and without remat.

  python bench/train_step.py [--quick] [--config configs/tiny.py] [--out bench/results/train_step.json]
  python bench/train_step.py --config configs/base.py --config.train.batch_size=16 \
      --measure config --out bench/results/train_step_base_h200_b16.json   # one GPU
  python bench/train_step.py --measure peer-shape --out bench/results/train_step_peer_shape.json

`--measure peer-shape` is the shape of issue 17, at which bench/peer_latte.py
times diffusers' Latte (bench/peer_compare.sh runs the two alternately):
width 256, depth 4, 4 heads, 16 frames of 32x32 pixels, patch (1, 2, 2),
batch 2, float32, pixel space, on top of --config's other settings.

Runs on whatever JAX finds (CPU, one GPU, a TPU host); the model's dtype and
attention kernel come from the config (configs/base.py: bf16 + cuDNN). The
face encoder is the real module with random weights (speed does not depend on
training); batches are synthetic arrays of the pipeline's shapes.
"""

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idjax import configlib, sharding
from idjax.face.encoder import encoder_from_config
from idjax.face.frozen import FrozenFaceEncoder
from idjax.models import build_model
from idjax.train import trainer


def matmul_flops_per_s(n: int, dtype, repeats: int = 3) -> float:
  """Measured matmul throughput in the model's compute dtype: the machine's
  practical peak (bf16 tensor cores on a GPU, f32 on a CPU)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2.0 * n ** 3 / min(times)


def random_encoder(root):
  fcfg = configlib.load_config_file(os.path.join(root, "configs", "face_encoder.py"))
  module = encoder_from_config(fcfg)
  size = fcfg.input_size
  params = nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))["params"]
  return FrozenFaceEncoder(fcfg, params)


def random_autoencoder(root, config):
  """The project's autoencoder module with random weights, or None in pixel space."""
  if config.model.get("space", "pixel") != "latent":
    return None
  from idjax.autoencoder.frozen import FrozenAutoencoder
  from idjax.autoencoder.train import init_params
  from idjax.autoencoder.model import autoencoder_from_config
  acfg = configlib.load_config_file(os.path.join(root, "configs", "autoencoder.py"))
  acfg.data.resolution = config.data.resolution
  params = init_params(autoencoder_from_config(acfg.model), acfg)
  c = acfg.model.latent_channels
  return FrozenAutoencoder(acfg, params, np.zeros(c), np.ones(c))


def synthetic_batch(config, batch_size):
  d, rng = config.data, np.random.default_rng(0)
  b, c, t, h, k, r = (batch_size, d.max_characters, d.num_frames, d.resolution,
                      d.num_references, d.reference_resolution)
  return dict(
      frames=rng.integers(0, 256, (b, t, h, h, 3), dtype=np.uint8),
      boxes=np.tile(np.array([0.25, 0.25, 0.75, 0.75], np.float32), (b, c, t, 1)),
      identity_ids=np.zeros((b, c), np.int32),
      character_valid=np.ones((b, c), bool),
      references=rng.integers(0, 256, (b, c, k, r, r, 3), dtype=np.uint8),
      reference_valid=np.ones((b, c, k), bool),
      text_tokens=rng.integers(1, 50, (b, d.text_len)).astype(np.int32),
      index=np.arange(b, dtype=np.int32))


def xla_flops(compiled):
  """FLOPs of the compiled step by XLA's cost analysis (None if unavailable)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return None if not cost or "flops" not in cost else float(cost["flops"])


def peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_peak_mib():
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2 ** 20


def prepare(config, encoder):
  """(setup, fresh state, a synthetic batch, frozen params, the random
  autoencoder or None) on all local devices."""
  mesh = trainer.build_mesh(config)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  autoencoder = random_autoencoder(root, config)
  setup = trainer.make_setup(config, build_model(config.model), encoder, mesh, autoencoder)
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim, config.sharding.rules))
           for k, v in synthetic_batch(config, config.train.batch_size).items()}
  return setup, setup.init(), batch, setup.frozen, autoencoder


def peer_shape(config):
  """`config` at the shape of bench/peer_latte.py (issue 17)."""
  config = config.copy_and_resolve_references()
  config.model.space, config.model.channels, config.model.reference_canvas = "pixel", 3, False
  config.model.width, config.model.depth, config.model.num_heads = 256, 4, 4
  config.model.patch_size = (1, 2, 2)
  config.model.dtype = config.model.param_dtype = "float32"
  config.data.num_frames, config.data.resolution = 16, 32
  config.train.batch_size = 2
  return config


def measure(config, encoder, steps: int) -> dict:
  """Compiles and times the train step of `config` on all local devices."""
  setup, state, batch, enc, autoencoder = prepare(config, encoder)
  with sharding.activation_sharding(setup.mesh, config.sharding.rules):
    t0 = time.perf_counter()
    compiled = setup.jitted(batch).lower(state, batch, enc).compile()
    compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  state, metrics = compiled(state, batch, enc)   # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, enc)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  flops = trainer.train_flops_per_step(config, encoder, autoencoder)
  return dict(
      batch=config.train.batch_size, frames=config.data.num_frames,
      resolution=config.data.resolution, width=config.model.width, depth=config.model.depth,
      remat=config.model.remat_policy, step_s=step_s,
      samples_per_s=config.train.batch_size / step_s, compile_s=compile_s,
      model_flops_per_step=flops, model_flops_per_s=flops / step_s,
      xla_flops_per_step=xla_flops(compiled),
      compiled_temp_mib=None if mem is None else mem.temp_size_in_bytes / 2 ** 20,
      compiled_total_mib=None if mem is None else (
          mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2 ** 20,
      peak_rss_mib_so_far=peak_rss_mib(), device_peak_mib=device_peak_mib(),
      loss=float(metrics["loss"]))


def serve(config, encoder, peak_n):
  """For bench/peer_compare.py: compiles `config`'s step, then on each stdin
  line "step" (or "matmul") times one train step (or one peak_n^2 matmul)
  and prints a line "@@ {json}"; so two programs can be timed alternately,
  in the same minutes of a shared machine."""
  setup, state, batch, enc, autoencoder = prepare(config, encoder)
  with sharding.activation_sharding(setup.mesh, config.sharding.rules):
    compiled = setup.jitted(batch).lower(state, batch, enc).compile()
  flops = trainer.train_flops_per_step(config, encoder, autoencoder)
  a = jax.random.normal(jax.random.key(0), (peak_n, peak_n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  state, metrics = compiled(state, batch, enc)
  jax.block_until_ready(metrics)
  print("@@ " + json.dumps(dict(ready=True, flops_per_step=flops)), flush=True)
  for line in sys.stdin:
    t0 = time.perf_counter()
    if line.strip() == "step":
      state, metrics = compiled(state, batch, enc)
      jax.block_until_ready(metrics)
    elif line.strip() == "matmul":
      matmul(a).block_until_ready()
    else:
      break
    print("@@ " + json.dumps(dict(seconds=time.perf_counter() - t0)), flush=True)


def main(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--out", default="bench/results/train_step.json")
  p.add_argument("--quick", action="store_true", help="small batches, fewer steps")
  p.add_argument("--frames", default="8,16,32,64")
  p.add_argument("--measure", default="config,medium,frames",
                 help="what to run: the config itself, a medium-width copy, the frames sweep, "
                 "peer-shape (issue 17's comparison with bench/peer_latte.py)")
  p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
  p.add_argument("--serve", action="store_true",
                 help="compile the --measure shape, then time steps on request (bench/peer_compare.py)")
  args, rest = p.parse_known_args(argv)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  base = configlib.load_config_file(args.config)
  configlib.parse_overrides(base, rest)
  base.mesh = type(base.mesh)(dict(data=-1, fsdp=1, tensor=1, sequence=1)) \
      if jax.device_count() == 1 else base.mesh
  encoder = random_encoder(root)
  steps = args.steps or (2 if args.quick else 5)
  measure_what = set(args.measure.split(","))
  if not measure_what <= {"config", "medium", "frames", "peer-shape"}:
    raise SystemExit(f"--measure takes config, medium, frames and peer-shape, got {args.measure!r}")
  on_cpu = jax.default_backend() == "cpu"
  n = 1024 if args.quick and on_cpu else (4096 if on_cpu else 8192)
  if args.serve:
    cfg = peer_shape(base) if "peer-shape" in measure_what else base
    return serve(cfg.copy_and_resolve_references(), encoder, n)
  dtype = jnp.dtype(base.model.dtype)
  peak = matmul_flops_per_s(n, dtype)
  result = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                num_devices=jax.device_count(), matmul_flops_per_s=peak, matmul_n=n,
                matmul_dtype=dtype.name, config=args.config, configs={}, frames_sweep=[])

  def save():  # after every measurement, so a cut-short run leaves its numbers
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)

  def report(name, r):
    r["mfu"] = r["model_flops_per_s"] / peak
    save()
    print(f"{name:>22}: step {r['step_s']*1e3:8.1f} ms  {r['samples_per_s']:7.2f} samples/s  "
          f"{r['model_flops_per_s']/1e9:8.2f} GFLOP/s  MFU {r['mfu']:.3f}  compile "
          f"{r['compile_s']:.1f} s  temp {r['compiled_temp_mib'] or 0:.0f} MiB  "
          f"rss {r['peak_rss_mib_so_far']:.0f} MiB", flush=True)

  print(f"matmul {n}x{n} {dtype.name}: {peak/1e9:.1f} GFLOP/s on {result['device']}", flush=True)
  medium = base.copy_and_resolve_references()
  medium.model.width, medium.model.depth, medium.model.num_heads = 256, 6, 8
  config_name = os.path.splitext(os.path.basename(args.config))[0]
  for what, name, cfg in (("config", config_name, base), ("medium", "medium", medium),
                          ("peer-shape", "peer_shape", peer_shape(base))):
    if what not in measure_what:
      continue
    cfg = cfg.copy_and_resolve_references()
    if args.quick and what != "peer-shape":
      cfg.train.batch_size = 4
    result["configs"][name] = r = measure(cfg, encoder, steps)
    report(name, r)
  for frames in [int(f) for f in args.frames.split(",")] if "frames" in measure_what else []:
    for remat in ("none", "full"):
      cfg = base.copy_and_resolve_references()
      cfg.data.num_frames, cfg.model.remat_policy = frames, remat
      cfg.train.batch_size = 2 if args.quick else 4
      cfg.train.id_loss_frames = min(cfg.train.id_loss_frames, frames)
      r = measure(cfg, encoder, 1 if args.quick else 3)
      result["frames_sweep"].append(r)
      report(f"frames={frames} remat={remat}", r)
  save()
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main(sys.argv[1:])
