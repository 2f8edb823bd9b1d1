"""Memory plan of identity adapters on a frozen Wan 2.1 DiT, per accelerator.

  python bench/wan_memory.py --size 1.3b --devices 8 [--frames 17 --resolution 256]
      [--batch-per-device 1] [--out bench/results/wan_memory_1.3b_8.json]

Nothing is materialised, so it runs on a CPU (simulated devices); per device:
  * parameters, where configs/wan_1_3b_identity.py's rules put them (fsdp
    over every device): the bf16 frozen backbone and the f32 adapters, from
    `jax.eval_shape` of the model's init;
  * the adapters' optimizer state (Adam's two moments) and EMA, f32, sharded
    as the adapters (the frozen backbone has neither: train.state);
  * one training step's forward and backward: XLA's compiled memory analysis
    of the velocity loss's gradient with respect to the adapters alone (the
    backbone an input, as train.step differentiates it), on `batch-per-device`
    clips of `frames` frames at `resolution` (Wan VAE latents: 4x temporal and
    8x spatial, 16 channels), 512 UMT5 tokens, `max_characters` characters.
    Not included: the identity loss's decode through the VAE, the frozen face
    encoder, the data.

--size 14b uses Wan2.1-T2V-14B's transformer sizes (dim 5120, 40 layers, 40
heads, FFN 13824). The CPU compiler stands in for the accelerator's: XLA
attention (no cuDNN flash kernel), so the temporaries are an upper bound for
a GPU. Prints one JSON object and writes it to --out.
"""

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/inference_memory.py

from inference_memory import per_device_bytes  # imports no JAX at module level

SIZES = {  # Wan 2.1 T2V transformers (diffusers' config.json)
    "1.3b": dict(width=1536, depth=30, num_heads=12, ffn_dim=8960),
    "14b": dict(width=5120, depth=40, num_heads=40, ffn_dim=13824),
}
TEXT_TOKENS = 512  # UMT5 context length


def _gib(n):
  return round(n / 2**30, 3)


def _max_per_device(abstract):
  """Bytes of the largest set of shards one device holds."""
  return max(per_device_bytes(abstract).values())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", choices=sorted(SIZES), default="1.3b")
  p.add_argument("--devices", type=int, default=8, help="simulated CPU devices (fsdp over all)")
  p.add_argument("--frames", type=int, default=17, help="1 + 4k video frames")
  p.add_argument("--resolution", type=int, default=256)
  p.add_argument("--batch-per-device", type=int, default=1)
  p.add_argument("--remat-policy", default=None, help="default: the config's")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  if (args.frames - 1) % 4 or args.resolution % 16:
    p.error("--frames must be 1 + 4k and --resolution a multiple of 16 (Wan's VAE and patches)")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  flag = f"--xla_force_host_platform_device_count={args.devices}"
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  import idjax  # noqa: F401  (partitionable threefry, as every entry point)
  from idjax import configlib, diffusion, models, sharding
  from idjax.train.state import merge, partition, trainable_filter

  config = configlib.load_config_file(os.path.join(ROOT, "configs", "wan_1_3b_identity.py"))
  m = config.model
  m.update(SIZES[args.size])
  if args.remat_policy:
    m.remat_policy = args.remat_policy
  mesh = sharding.make_mesh(dict(fsdp=-1), jax.devices())
  rules = sharding.rules_from_config(config.sharding.rules)
  model = models.build_model(m)

  batch = args.batch_per_device * args.devices
  latent_frames, side = 1 + (args.frames - 1) // 4, args.resolution // 8
  chars, refs = int(config.data.max_characters), int(config.data.num_references)
  # ArcFace-sized faces (an imported IResNet): 512-d embeddings, 7x7 cells of 512 features.
  inputs = models.dummy_inputs(
      m,
      batch=batch,
      frames=latent_frames,
      height=side,
      width=side,
      text_len=TEXT_TOKENS,
      num_chars=chars,
      num_refs=refs,
      face_embed_dim=512,
      face_feature_dim=512,
      face_cells=49,
  )
  text = jax.ShapeDtypeStruct((batch, TEXT_TOKENS, int(m.text_dim)), jnp.bfloat16)
  boxed = jax.eval_shape(
      lambda text, *a: model.init(jax.random.key(0), *a, text_embeddings=text), text, *inputs
  )["params"]
  shardings = sharding.tree_shardings(nn.get_partition_spec(boxed), mesh, rules)
  params = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
  )
  adapters, backbone = partition(params, trainable_filter("adapters", model))

  def on_batch(a):
    return jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=sharding.batch_sharding(mesh, a.ndim, rules)
    )

  x0 = jax.ShapeDtypeStruct((batch, latent_frames, side, side, int(m.channels)), jnp.float32)
  x0, text, t = on_batch(x0), on_batch(text), on_batch(jax.ShapeDtypeStruct((batch,), jnp.float32))
  _, tokens, identity, strength = (jax.tree.map(on_batch, a) for a in inputs[1:])

  def loss(adapters, backbone, x0, t, tokens, identity, strength, text):
    noise = jnp.ones_like(x0)  # shapes only: never run
    v = model.apply(
        {"params": merge(backbone, adapters)},
        diffusion.noisy_sample(x0, noise, t),
        t,
        tokens,
        identity,
        strength,
        text_embeddings=text,
    )
    return jnp.mean(jnp.square(v - diffusion.velocity_target(x0, noise)))

  start = time.perf_counter()
  with sharding.activation_sharding(mesh, rules):
    step = jax.jit(jax.grad(loss), out_shardings=jax.tree.map(lambda a: a.sharding, adapters))
    stats = step.lower(adapters, backbone, x0, t, tokens, identity, strength, text).compile()
    stats = stats.memory_analysis()
  compile_s = time.perf_counter() - start

  count = lambda tree: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))
  adapter_bytes = _max_per_device(adapters)
  per_device = dict(
      backbone_bf16=_gib(_max_per_device(backbone)),
      adapters_f32=_gib(adapter_bytes),
      adam_moments_f32=_gib(2 * adapter_bytes),
      ema_f32=_gib(adapter_bytes),
      step_temporaries=_gib(stats.temp_size_in_bytes),
      step_gradients=_gib(stats.output_size_in_bytes),
  )
  per_device["total"] = round(sum(per_device.values()), 3)
  result = dict(
      size=args.size,
      devices=args.devices,
      mesh=dict(mesh.shape),
      clip=dict(
          frames=args.frames,
          resolution=args.resolution,
          latent_frames=latent_frames,
          tokens_per_clip=latent_frames * (side // 2) ** 2,
          text_tokens=TEXT_TOKENS,
          characters=chars,
          references=refs,
      ),
      batch_per_device=args.batch_per_device,
      global_batch=batch,
      backbone_params=count(backbone),
      adapter_params=count(adapters),
      remat_policy=m.remat_policy,
      compute_dtype=m.dtype,
      per_device_gib=per_device,
      compile_s=round(compile_s, 1),
      note="XLA CPU compiler, XLA attention; identity-loss VAE decode and face encoder not included",
  )
  print(json.dumps(result))
  out = args.out or os.path.join(
      ROOT, "bench", "results", f"wan_memory_{args.size}_{args.devices}.json"
  )
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(out + ".tmp", out)


if __name__ == "__main__":
  main()
