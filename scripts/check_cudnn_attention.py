"""GPU check: cuDNN attention gives the numbers XLA attention gives.

  python scripts/check_cudnn_attention.py [--config configs/base.py] [--depth 4]

1. idjax's `dot_product_attention` on the shapes the base model uses (odd
   lengths, masks with fully-masked rows), bf16: forward and gradients,
   cudnn against xla.
2. One train step of the config (depth cut down for a quick compile) with
   attention_impl=cudnn against =xla: the loss and its terms.
Prints the largest differences; exits 1 when they exceed bf16 tolerance.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import jax
import jax.numpy as jnp
import numpy as np

from idjax import configlib
from idjax.models import attention
import train_step as bench

SHAPES = [  # (batch, Lq, Lk, heads, head_dim): spatial, temporal, text, identity bank,
    # resampler, text encoder; base.py's 9 heads of 128 (text 64), then DiT-XL's 16 of 72
    (8, 256, 256, 9, 128), (64, 8, 8, 9, 128), (2, 2048, 64, 9, 128),
    (2, 2048, 128, 9, 128), (8, 32, 51, 9, 128), (2, 64, 64, 9, 64),
    (8, 256, 256, 16, 72), (64, 8, 8, 16, 72), (2, 2048, 64, 16, 72)]


def attention_errors():
  worst = 0.0
  for i, (b, lq, lk, n, h) in enumerate(SHAPES):
    keys = jax.random.split(jax.random.key(i), 5)
    q = jax.random.normal(keys[0], (b, lq, n, h), jnp.bfloat16)
    k = jax.random.normal(keys[1], (b, lk, n, h), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, lk, n, h), jnp.bfloat16)
    mask = jax.random.bernoulli(keys[3], 0.7, (b, 1, lq, lk))
    mask = mask.at[:, :, : lq // 4].set(False)          # fully-masked rows
    cot = jax.random.normal(keys[4], (b, lq, n, h), jnp.float32)
    for m in (None, mask):
      def f(q, k, v, impl):
        out, vjp = jax.vjp(lambda q, k, v: attention.dot_product_attention(
            q, k, v, m, implementation=impl).astype(jnp.float32), q, k, v)
        return [out, *vjp(cot)]
      run = jax.jit(f, static_argnums=3)   # arrays as arguments: no constant folding
      ref, got = run(q, k, v, "xla"), run(q, k, v, "cudnn")
      errs = []
      for a, c in zip(ref, got):
        a, c = np.asarray(a, np.float32), np.asarray(c, np.float32)
        err = np.max(np.abs(a - c)) / (np.max(np.abs(a)) + 1e-6)
        errs.append(float(err) if np.isfinite(c).all() else float("inf"))
      worst = max(worst, *errs)
      print(f"{(b, lq, lk, n, h)} mask={m is not None}: relative max error "
            f"out {errs[0]:.4f}  dq {errs[1]:.4f}  dk {errs[2]:.4f}  dv {errs[3]:.4f}", flush=True)
  return worst


def step_metrics(config, encoder, impl):
  config = config.copy_and_resolve_references()
  config.model.attention_impl = impl
  setup, state, batch, frozen = bench.prepare(config, encoder)
  _, metrics = setup.run_step(state, batch, frozen)
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def main(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/base.py")
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--batch", type=int, default=4)
  args = p.parse_args(argv)
  if jax.default_backend() != "gpu":
    raise SystemExit("this check needs a GPU (cuDNN); JAX found " + jax.default_backend())
  worst = attention_errors()
  config = configlib.load_config_file(args.config)
  config.model.depth, config.train.batch_size = args.depth, args.batch
  config.mesh = type(config.mesh)(dict(data=-1, fsdp=1, tensor=1, sequence=1))
  encoder = bench.random_encoder(ROOT)
  xla, cudnn = step_metrics(config, encoder, "xla"), step_metrics(config, encoder, "cudnn")
  for key in sorted(xla):
    print(f"{key:>24}: xla {xla[key]:.6g}  cudnn {cudnn[key]:.6g}")
  loss_gap = abs(xla["loss"] - cudnn["loss"]) / abs(xla["loss"])
  print(f"worst attention error {worst:.4f}; loss relative gap {loss_gap:.4f}")
  return 0 if worst < 0.05 and loss_gap < 0.02 else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
