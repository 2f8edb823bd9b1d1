"""The PyTorch peer of bench/train_step.py --measure peer-shape: one
forward + backward + AdamW step of diffusers' LatteTransformer3DModel (a
factorised spatial/temporal video DiT) at the same shape, timed, with its
FLOPs counted by torch's FlopCounterMode.

  /work/torch-venv/bin/python bench/peer_latte.py [--steps 5] [--out bench/results/peer_latte.json]

Not a project dependency: run it with a separate virtual environment that has
torch (CPU) and diffusers (measured with torch 2.13.0+cpu, diffusers 0.42.1).
bench/peer_compare.sh runs it and idjax alternately.

The shape (issue 17): width 256 (4 heads of 64), depth 4 (Latte: 4 spatial
and 4 temporal blocks, each with a text cross-attention), 16 frames of 32x32
pixels, patch 2x2, batch 2, float32; a 24-token text of width 256.
"""

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from diffusers import LatteTransformer3DModel

SHAPE = dict(
    width=256, heads=4, depth=4, frames=16, resolution=32, patch=2, batch=2, channels=3, text_len=24
)


def matmul_flops_per_s(n=4096, repeats=3):
  a = torch.randn(n, n)
  a @ a
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ a
    times.append(time.perf_counter() - t0)
  return 2.0 * n**3 / min(times)


def build():
  s = SHAPE
  torch.manual_seed(0)
  model = LatteTransformer3DModel(
      num_attention_heads=s["heads"],
      attention_head_dim=s["width"] // s["heads"],
      in_channels=s["channels"],
      out_channels=s["channels"],
      num_layers=s["depth"],
      cross_attention_dim=s["width"],
      sample_size=s["resolution"],
      patch_size=s["patch"],
      activation_fn="gelu-approximate",
      num_embeds_ada_norm=1000,
      norm_type="ada_norm_single",
      norm_elementwise_affine=False,
      norm_eps=1e-6,
      caption_channels=s["width"],
      video_length=s["frames"],
  )
  model.train()
  x = torch.randn(s["batch"], s["channels"], s["frames"], s["resolution"], s["resolution"])
  t = torch.randint(0, 1000, (s["batch"],))
  text = torch.randn(s["batch"], s["text_len"], s["width"])
  target = torch.randn_like(x)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

  def step():
    out = model(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(out, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  return model, step


def serve():
  """As bench/train_step.py --serve: "@@ {json}" lines, one per stdin request."""
  model, step = build()
  step()
  with FlopCounterMode(display=False) as counter:
    step()
  a = torch.randn(4096, 4096)
  a @ a
  print(
      "@@ " + json.dumps(dict(ready=True, flops_per_step=float(counter.get_total_flops()))),
      flush=True,
  )
  for line in sys.stdin:
    t0 = time.perf_counter()
    if line.strip() == "step":
      step()
    elif line.strip() == "matmul":
      a @ a
    else:
      break
    print("@@ " + json.dumps(dict(seconds=time.perf_counter() - t0)), flush=True)


def main(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--out", default="bench/results/peer_latte.json")
  p.add_argument(
      "--serve",
      action="store_true",
      help="time a step or a matmul per stdin line (bench/peer_compare.py)",
  )
  args = p.parse_args(argv)
  if args.serve:
    return serve()
  peak = matmul_flops_per_s()
  model, step = build()
  step()  # warm-up (allocations, AdamW state)
  with FlopCounterMode(display=False) as counter:
    step()
  flops = float(counter.get_total_flops())
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  times.sort()
  step_s = times[len(times) // 2]
  result = dict(
      peer="diffusers.LatteTransformer3DModel",
      torch=torch.__version__,
      diffusers=__import__("diffusers").__version__,
      threads=torch.get_num_threads(),
      shape=SHAPE,
      params=sum(p.numel() for p in model.parameters()),
      matmul_flops_per_s=peak,
      matmul_n=4096,
      step_s=step_s,
      step_times=times,
      flops_per_step=flops,
      flops_per_s=flops / step_s,
      share_of_matmul_peak=flops / step_s / peak,
  )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(
      f"latte (torch {torch.__version__}): step {step_s*1e3:.1f} ms  "
      f"{flops/1e9:.1f} GFLOP/step  {flops/step_s/1e9:.1f} GFLOP/s  "
      f"matmul 4096 f32 {peak/1e9:.1f} GFLOP/s  share {flops/step_s/peak:.3f}",
      flush=True,
  )


if __name__ == "__main__":
  main(sys.argv[1:])
