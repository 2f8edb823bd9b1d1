"""Device memory of sampling a base-size checkpoint: sharded restore vs the old one.

  python bench/inference_memory.py [--config configs/base.py] [--devices 8]
      [--out bench/results/inference_memory.json] [--config.KEY=VALUE ...]

Nothing is materialised, so it runs on a laptop's CPU (simulated devices):
  * parameter layouts: `jax.eval_shape` of the model's init through the rules
    table (`sampling.generator.abstract_params`, exactly what
    `Generator.from_workdir` restores into: only the EMA params, each shard
    onto its own device);
  * the sampling step: XLA's compiled memory analysis of the Generator's own
    jitted step on abstract, sharded inputs (one chunk of per_device_batch
    clips per device), per device;
  * the old restore (`train.checkpoint.load_inference`): the whole TrainState
    (params, EMA, both Adam moments, counters) on device 0, from
    `jax.eval_shape` of `create_state`.
Prints one JSON object and writes it to --out.
"""

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "base.py"))
  p.add_argument("--face-config", default=os.path.join(ROOT, "configs", "face_encoder.py"))
  p.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
  p.add_argument(
      "--passes",
      default="config,3",
      help="guidance passes to analyse: 'config' (config.sample's scales) and/or 1-3",
  )
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "inference_memory.json"))
  return p.parse_known_args(argv)


def _gib(n):
  return round(n / 2**30, 3)


def _bytes(tree):
  import jax

  return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def per_device_bytes(abstract):
  """Bytes of the shards each device holds, {device id: bytes}."""
  import jax

  out = {}
  for a in jax.tree.leaves(abstract):
    for device, index in a.sharding.devices_indices_map(a.shape).items():
      shard = [len(range(*s.indices(n))) for s, n in zip(index, a.shape)]
      out[device.id] = out.get(device.id, 0) + math.prod(shard) * a.dtype.itemsize
  return out


def main(argv=None):
  args, rest = _parse(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  flag = f"--xla_force_host_platform_device_count={args.devices}"
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  import idjax  # noqa: F401  (partitionable threefry, as every entry point)
  from idjax import configlib, models, sharding
  from idjax.face.frozen import FrozenFaceEncoder, build_encoder
  from idjax.sampling import generator as generator_lib
  from idjax.sampling import memory
  from idjax.train.state import create_state, make_optimizer

  config = configlib.load_config_file(args.config)
  configlib.parse_overrides(config, rest)
  if config.model.get("space", "pixel") != "pixel":
    raise configlib.UsageError(
        "This bench covers pixel-space configs (a latent one also needs "
        "its autoencoder's shapes)."
    )
  fcfg = configlib.load_config_file(args.face_config)
  size = int(fcfg.input_size)
  face_abstract = nn.unbox(
      jax.eval_shape(
          build_encoder(fcfg).init,
          jax.random.key(0),
          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
      )
  )
  fe = FrozenFaceEncoder(fcfg, face_abstract["params"])  # shapes only: nothing is run
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.rules_from_config(config.sharding.rules)
  side = generator_lib.model_side(config)

  # Parameters: where the sharded restore puts them.
  abstract = generator_lib.abstract_params(config, fe, side, mesh)
  total = _bytes(abstract)
  per_device = per_device_bytes(abstract)
  sharded = sum(
      _bytes(a)
      for a in jax.tree.leaves(abstract)
      if math.prod(a.sharding.shard_shape(a.shape)) < math.prod(a.shape)
  )

  # The old restore: the whole TrainState on device 0.
  tx, _ = make_optimizer(config.train)
  plain = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
  state = jax.eval_shape(lambda p: create_state(p, tx, int(config.seed)), plain)
  parts = {name: _bytes(getattr(state, name)) for name in ("params", "ema_params", "opt_state")}
  state_total = _bytes(state)

  # The sampling step: the Generator's own jitted step, lowered on abstract inputs
  # (a stand-in for `self` carries what `_step_fn` reads, so no weights exist).
  m, d = config.model, config.data
  per_device_batch = int(config.sample.get("per_device_batch", 1))
  chunk = per_device_batch * sharding.batch_axis_size(mesh, rules)
  frames = int(config.sample.num_frames)
  c, k = int(m.max_characters), int(d.num_references)

  def batch(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(
        shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape), rules)
    )

  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
  identity = models.IdentityInputs(
      ref_embeddings=batch((chunk, c, k, fe.embed_dim)),
      ref_features=batch((chunk, c, k, fe.feature_cells, fe.feature_dim)),
      ref_valid=batch((chunk, c, k), jnp.bool_),
      char_valid=batch((chunk, c), jnp.bool_),
      face_masks=batch((chunk, c, frames, side, side)),
  )
  inputs = (
      abstract,
      batch((chunk, frames, side, side, int(m.channels))),
      scalar,
      scalar,
      batch((chunk, int(m.text_len)), jnp.int32),
      identity,
      batch((chunk,)),
      scalar,
      scalar,
  )
  config_passes = memory.guidance_passes(
      float(config.sample.text_guidance), float(config.sample.identity_guidance)
  )
  wanted = sorted({config_passes if p == "config" else int(p) for p in args.passes.split(",")})
  steps = []
  for passes, constrained in itertools.product(wanted, (False, True)):
    stub = types.SimpleNamespace(model=models.build_model(m), mesh=mesh, rules=rules, _steps={})
    step = generator_lib.Generator._step_fn(stub, str(config.sample.sampler), passes)
    start = time.perf_counter()
    # `generate` traces its step inside activation_sharding (constrained);
    # the unconstrained variant shows what the constraints save.
    context = sharding.activation_sharding(mesh, rules) if constrained else contextlib.nullcontext()
    with context:
      stats = step.lower(*inputs).compile().memory_analysis()
    peak = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    steps.append(
        dict(
            passes=passes,
            config_passes=passes == config_passes,
            activation_constraints=constrained,
            compile_s=round(time.perf_counter() - start, 1),
            arguments_gib=_gib(stats.argument_size_in_bytes),
            outputs_gib=_gib(stats.output_size_in_bytes),
            temp_gib=_gib(stats.temp_size_in_bytes),
            aliased_gib=_gib(stats.alias_size_in_bytes),
            peak_gib=_gib(peak),
            analytic_estimate_gib=_gib(
                memory.sampling_bytes(config, frames, per_device_batch, passes, side=side)
            ),
        )
    )

  result = dict(
      config=os.path.relpath(args.config, ROOT),
      devices=len(jax.devices()),
      backend=jax.default_backend(),
      mesh=dict(mesh.shape),
      num_params=sum(math.prod(a.shape) for a in jax.tree.leaves(abstract)),
      params=dict(
          total_gib=_gib(total),
          per_device_gib=_gib(max(per_device.values())),
          total_over_devices_gib=_gib(total / len(per_device)),
          sharded_fraction=round(sharded / total, 4),
      ),
      old_restore=dict(
          what="load_inference: the whole TrainState restored onto device 0",
          device0_gib=_gib(state_total),
          **{f"{name}_gib": _gib(v) for name, v in parts.items()},
      ),
      new_restore=dict(
          what="restore.restore_ema: only ema_params, each shard on its device",
          per_device_gib=_gib(max(per_device.values())),
      ),
      sampling_step=dict(
          per_device_batch=per_device_batch,
          chunk=chunk,
          frames=frames,
          side=side,
          sampler=str(config.sample.sampler),
          per_device=steps,
      ),
  )
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
