"""Writes the diffusers reference fixture for tests/test_wan_dit.py.

Run with the separate torch venv (torch is never an idjax dependency):

  /work/torch-venv/bin/python scripts/parity/wan_dit.py

Builds diffusers' WanTransformer3DModel (text-to-video) at a tiny random
config: head_dim 20, so the 3D RoPE splits a head unevenly (8 channels for
frames, 6 each for height and width). diffusers initialises the norms to
ones and zeros; every norm weight and bias is randomised here (and the
scale-shift tables scaled up), so the test exercises them instead of an
identity. The folder is saved sharded (with a safetensors index), as the
published checkpoints are. The forward pass runs in float64 from the saved
float32 weights and inputs, so the reference carries no float32 error.

Writes, under tests/fixtures/wan_dit/:
  transformer/   config.json, diffusion_pytorch_model-0000k-of-0000n.safetensors,
                 diffusion_pytorch_model.safetensors.index.json (float32).
  io.npz         latents [B, C, T, H, W] (diffusers' NCTHW; T = 3 frames of
                 6 x 10 latent cells = 12 x 20 latent pixels), timestep [B]
                 (0..1000), text [B, L, text_dim], output [B, C, T, H, W]
                 (float32, from the float64 pass), output_f32 (diffusers'
                 own float32 pass, to compare errors with).
"""

import json
import os
import shutil

import numpy as np
import torch
from diffusers import WanTransformer3DModel

CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=20,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=16,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)
BATCH, FRAMES, HEIGHT, WIDTH, TEXT_LEN = 2, 3, 12, 20, 7
TIMESTEPS = (999.0, 237.5)
SEED = 0
MAX_SHARD = "100KB"
OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "wan_dit")


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
  """Moves every parameter that diffusers initialises to a constant away from it."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.3 * noise)
      elif "norm" in name and name.endswith("bias"):
        p.copy_(0.3 * noise)
      elif name.endswith("scale_shift_table"):
        p.copy_(0.5 * noise)
      elif name.endswith("bias"):
        p.add_(0.05 * noise)


def main():
  torch.manual_seed(SEED)
  gen = torch.Generator().manual_seed(SEED)
  model = WanTransformer3DModel(**CONFIG).eval()
  randomise(model, gen)

  folder = os.path.join(OUT_DIR, "transformer")
  shutil.rmtree(folder, ignore_errors=True)
  model.save_pretrained(folder, safe_serialization=True, max_shard_size=MAX_SHARD)

  latents = torch.randn((BATCH, CONFIG["in_channels"], FRAMES, HEIGHT, WIDTH), generator=gen)
  timestep = torch.tensor(TIMESTEPS, dtype=torch.float32)
  text = torch.randn((BATCH, TEXT_LEN, CONFIG["text_dim"]), generator=gen)
  with torch.no_grad():
    output_f32 = model(latents, timestep, text).sample
    model64 = model.to(torch.float64)
    output = model64(latents.double(), timestep.double(), text.double()).sample
  np.savez_compressed(
      os.path.join(OUT_DIR, "io.npz"),
      latents=latents.numpy(),
      timestep=timestep.numpy(),
      text=text.numpy(),
      output=output.float().numpy(),
      output_f32=output_f32.numpy(),
  )

  rel = (output_f32.double() - output).abs().max() / output.abs().max()
  files = sorted(os.listdir(folder))
  with open(os.path.join(folder, "config.json")) as f:
    saved = json.load(f)
  print(f"saved {folder}: {files}")
  print(f"config: {saved}")
  print(f"output max |y| = {output.abs().max():.4f}, diffusers float32 max rel error = {rel:.3g}")


if __name__ == "__main__":
  main()
