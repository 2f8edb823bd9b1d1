"""Time a train step of the identity adapters on a frozen Wan 2.1 DiT (random weights).

  python bench/wan_step.py --size 1.3b --batch 2 [--frames 17 --resolution 256] \
      [--steps 5] [--out bench/results/wan_step_1.3b_h100_b2.json]      # one GPU
  python bench/wan_step.py --size tiny --steps 2                        # CPU smoke test

configs/wan_1_3b_identity.py at Wan2.1-T2V-1.3B's (or 14B's) transformer
sizes, fsdp over every local device: the backbone in bf16 and frozen, the
adapters in f32 under Adam. The step is the one bench/wan_memory.py plans,
run: the velocity loss's gradient with respect to the adapters alone (the
backbone an input, as train.step differentiates it) and the Adam update, on
random Wan-VAE-shaped latents, UMT5-shaped text embeddings [B, 512, 4096]
and ArcFace-shaped identity inputs with the face masks all ones. Not
included: the identity loss's VAE decode, the face encoder, the data.

Prints and writes step time, samples/s, model FLOPs (3x the analytic
forward, the convention of bench/train_step.py, although the frozen backbone
needs no weight gradients), XLA's own FLOP count of the compiled step, and
MFU against the measured matmul in the compute dtype.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

from wan_memory import SIZES as WAN_SIZES, TEXT_TOKENS  # imports no JAX at module level

# Wan 2.1's transformer sizes, and a tiny one for a CPU smoke test.
SIZES = {
    **WAN_SIZES,
    "tiny": dict(width=64, depth=2, num_heads=2, ffn_dim=128, text_dim=64, freq_dim=32),
}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", choices=sorted(SIZES), default="1.3b")
  p.add_argument("--batch", type=int, default=1, help="clips per step (all devices)")
  p.add_argument("--frames", type=int, default=17, help="1 + 4k video frames")
  p.add_argument("--resolution", type=int, default=256)
  p.add_argument("--steps", type=int, default=5, help="timed steps")
  p.add_argument("--remat-policy", default=None, help="default: the config's")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if (args.frames - 1) % 4 or args.resolution % 16:
    p.error("--frames must be 1 + 4k and --resolution a multiple of 16 (Wan's VAE and patches)")

  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  import idjax  # noqa: F401  (partitionable threefry, as every entry point)
  from idjax import configlib, diffusion, models, sharding
  from idjax.models import flops as flops_lib
  from idjax.train.state import merge, partition, trainable_filter
  from train_step import matmul_flops_per_s, xla_flops

  config = configlib.load_config_file(os.path.join(ROOT, "configs", "wan_1_3b_identity.py"))
  m = config.model
  m.update(SIZES[args.size])
  if args.remat_policy:
    m.remat_policy = args.remat_policy
  on_gpu = jax.default_backend() == "gpu"
  if not on_gpu:
    m.attention_impl = "xla"  # cuDNN's kernels need a GPU
  devices = jax.devices()
  mesh = sharding.make_mesh(dict(fsdp=-1), devices)
  rules = sharding.rules_from_config(config.sharding.rules)
  model = models.build_model(m)

  b = args.batch
  latent_frames, side = 1 + (args.frames - 1) // 4, args.resolution // 8
  chars, refs = int(config.data.max_characters), int(config.data.num_references)
  face = dict(face_embed_dim=512, face_feature_dim=512, face_cells=49)  # an ArcFace IResNet's
  _, _, tokens, identity, strength = models.dummy_inputs(
      m,
      batch=b,
      frames=latent_frames,
      height=side,
      width=side,
      text_len=TEXT_TOKENS,
      num_chars=chars,
      num_refs=refs,
      **face,
  )
  identity = identity.replace(face_masks=jnp.ones_like(identity.face_masks))
  keys = jax.random.split(jax.random.key(0), 4)
  x0 = jax.random.normal(keys[0], (b, latent_frames, side, side, int(m.channels)), jnp.float32)
  noise = jax.random.normal(keys[1], x0.shape, jnp.float32)
  t = jax.random.uniform(keys[2], (b,), jnp.float32)
  text = jax.random.normal(keys[3], (b, TEXT_TOKENS, int(m.text_dim)), jnp.bfloat16)
  batch = dict(
      x0=x0, noise=noise, t=t, tokens=tokens, identity=identity, strength=strength, text=text
  )
  batch = jax.tree.map(
      lambda a: jax.device_put(a, sharding.batch_sharding(mesh, a.ndim, rules)), batch
  )

  with sharding.activation_sharding(mesh, rules):
    init = lambda key: model.init(
        key,
        batch["x0"],
        batch["t"],
        batch["tokens"],
        batch["identity"],
        batch["strength"],
        text_embeddings=batch["text"],
    )["params"]
    boxed = jax.eval_shape(init, jax.random.key(1))
    shardings = sharding.tree_shardings(nn.get_partition_spec(boxed), mesh, rules)
    params = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(jax.random.key(1))
  adapters, backbone = partition(params, trainable_filter("adapters", model))
  tx = optax.adam(1e-4)
  opt_state = jax.jit(tx.init)(adapters)

  def loss(adapters, backbone, mb):
    x_t = diffusion.noisy_sample(mb["x0"], mb["noise"], mb["t"])
    v = model.apply(
        {"params": merge(backbone, adapters)},
        x_t,
        mb["t"],
        mb["tokens"],
        mb["identity"],
        mb["strength"],
        text_embeddings=mb["text"],
    )
    return jnp.mean(jnp.square(v - diffusion.velocity_target(mb["x0"], mb["noise"])))

  def step(adapters, opt_state, backbone, mb):
    value, grads = jax.value_and_grad(loss)(adapters, backbone, mb)
    updates, opt_state = tx.update(grads, opt_state, adapters)
    return optax.apply_updates(adapters, updates), opt_state, value

  with sharding.activation_sharding(mesh, rules):
    t0 = time.perf_counter()
    compiled = (
        jax.jit(step, donate_argnums=(0, 1)).lower(adapters, opt_state, backbone, batch).compile()
    )
    compile_s = time.perf_counter() - t0
  adapters, opt_state, value = compiled(adapters, opt_state, backbone, batch)  # warm-up
  jax.block_until_ready(value)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    adapters, opt_state, value = compiled(adapters, opt_state, backbone, batch)
    jax.block_until_ready(value)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))

  count = lambda tree: int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))
  model_flops = 3.0 * flops_lib.forward_flops(
      m, b, latent_frames, side, side, TEXT_TOKENS, chars, refs, **face
  )
  dtype = jnp.dtype(m.dtype)
  peak = matmul_flops_per_s(8192 if on_gpu else 1024, dtype)
  mem = compiled.memory_analysis()
  stats = devices[0].memory_stats() or {}
  result = dict(
      device=str(devices[0].device_kind),
      backend=jax.default_backend(),
      num_devices=len(devices),
      size=args.size,
      batch=b,
      frames=args.frames,
      resolution=args.resolution,
      latent_frames=latent_frames,
      tokens_per_clip=latent_frames * (side // 2) ** 2,
      backbone_params=count(backbone),
      adapter_params=count(adapters),
      remat_policy=m.remat_policy,
      attention=m.attention_impl,
      compute_dtype=dtype.name,
      step_s=step_s,
      samples_per_s=b / step_s,
      compile_s=compile_s,
      loss=float(value),
      model_flops_per_step=model_flops,
      model_flops_per_s=model_flops / step_s,
      xla_flops_per_step=xla_flops(compiled),
      matmul_flops_per_s=peak,
      mfu=model_flops / step_s / peak,
      compiled_temp_gib=None if mem is None else mem.temp_size_in_bytes / 2**30,
      device_peak_gib=(
          stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None
      ),
  )
  print(
      f"Wan {args.size} adapters, batch {b}, {args.frames}x{args.resolution}^2: step "
      f"{step_s * 1e3:.1f} ms, {b / step_s:.2f} samples/s, "
      f"{model_flops / step_s / 1e12:.2f} model TFLOP/s, MFU {result['mfu']:.3f} of the "
      f"measured {dtype.name} matmul ({peak / 1e12:.1f} TFLOP/s), compile {compile_s:.1f} s, "
      f"loss {float(value):.4f}",
      flush=True,
  )
  out = args.out or os.path.join(ROOT, "bench", "results", f"wan_step_{args.size}_b{b}.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print("wrote", out)


if __name__ == "__main__":
  main()
