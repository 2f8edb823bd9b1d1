"""Writes the Wan 2.1 VAE parity fixture: a tiny random `AutoencoderKLWan`, its outputs.

Run with the separate torch venv (torch and diffusers are never project dependencies):

  /work/torch-venv/bin/python scripts/parity/wan_vae.py

It writes `tests/fixtures/wan_vae/vae/` (config.json and safetensors, the
published diffusers layout, via `save_pretrained`) and
`tests/fixtures/wan_vae/reference.npz` with, per frame count T in (1, 5, 9):

  frames_T       float32 [B, T, H, W, 3] in [-1, 1], channels last
  mean_T         the posterior mean of `encode` (raw latents), [B, T', h, w, z]
  latents_T      raw latents fed to `decode` (random normal), [B, T', h, w, z]
  decoded_T      `decode(latents_T).sample`, clamped to [-1, 1] by diffusers
  unclamped_T    the same decode before that clamp (the decoder's own output)

and, with diffusers' spatial tiling on (24-pixel tiles every 16 pixels) for
one frame: tiled_frames (16x32, encoded in 1 x 2 tiles) and tiled_mean;
tiled_latents (decoded to 32x40 in 2 x 3 tiles) and tiled_decoded (clamped:
the tiled path has no unclamped output to hook).

and `tests/fixtures/wan_vae/published_shapes.json`: the config and the
tensor names and shapes of the published-size VAE (diffusers' defaults are
the released Wan 2.1 VAE config), so the converter's layout is checked at
full size without the 500 MB download.

Everything is channels last (idjax's layout); diffusers runs channels first.
"""

import json
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKLWan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "wan_vae")
FRAME_COUNTS = (1, 5, 9)
HEIGHT, WIDTH = 16, 24  # non-square, so a transposed H/W shows up

# Tiny but complete: every block kind of the published VAE (4 stages, 3
# spatial and 2 temporal down/up-samplers, mid attention). No `attn_scales`:
# the published config has none, and diffusers 0.42 cannot run them (its
# encoder passes `feat_cache` to `WanAttentionBlock`, which takes no cache).
CONFIG = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    latents_mean=[0.3, -0.2, 0.1, -0.4],
    latents_std=[1.5, 0.8, 1.2, 2.0],
)


def to_channels_last(x: torch.Tensor) -> np.ndarray:
  return x.detach().permute(0, 2, 3, 4, 1).contiguous().numpy().astype(np.float32)


def main() -> int:
  torch.manual_seed(0)
  vae = AutoencoderKLWan(**CONFIG).eval()
  # Default init leaves every norm gain at 1; perturb all tensors so that a
  # converter which drops or transposes one is caught.
  with torch.no_grad():
    for name, p in vae.named_parameters():
      if name.endswith("gamma"):
        p.mul_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.add_(0.05 * torch.randn_like(p))
  vae.save_pretrained(os.path.join(OUT, "vae"), safe_serialization=True)

  # The decoder's output before `_decode` clamps it, chunk by chunk.
  chunks = []
  vae.decoder.register_forward_hook(lambda m, i, o: chunks.append(o.detach().clone()))

  arrays = {}
  gen = torch.Generator().manual_seed(1)
  for t in FRAME_COUNTS:
    batch = 2 if t == 5 else 1  # one batched case
    frames = torch.rand(batch, 3, t, HEIGHT, WIDTH, generator=gen) * 2 - 1
    latent_t = 1 + (t - 1) // 4
    latents = torch.randn(batch, CONFIG["z_dim"], latent_t, HEIGHT // 8, WIDTH // 8, generator=gen)
    with torch.no_grad():
      mean = vae.encode(frames).latent_dist.mean
      chunks.clear()
      decoded = vae.decode(latents).sample
    unclamped = torch.cat(chunks, dim=2)
    np.testing.assert_array_equal(unclamped.clamp(-1, 1).numpy(), decoded.numpy())
    arrays[f"frames_{t}"] = to_channels_last(frames)
    arrays[f"mean_{t}"] = to_channels_last(mean)
    arrays[f"latents_{t}"] = to_channels_last(latents)
    arrays[f"decoded_{t}"] = to_channels_last(decoded)
    arrays[f"unclamped_{t}"] = to_channels_last(unclamped)
    clipped = float((unclamped.abs() > 1).float().mean())
    print(
        f"T={t}: frames {tuple(frames.shape)} -> mean {tuple(mean.shape)}; decoded "
        f"{tuple(decoded.shape)}, {clipped:.1%} of values clamped"
    )

  # Blended over 8 pixels (1 latent cell); the decode's 6 tiles have 4 shapes.
  frames = torch.rand(1, 3, 1, 16, 32, generator=gen) * 2 - 1
  latents = torch.randn(1, CONFIG["z_dim"], 1, 4, 5, generator=gen)
  vae.enable_tiling(24, 24, 16, 16)
  with torch.no_grad():
    arrays["tiled_mean"] = to_channels_last(vae.encode(frames).latent_dist.mean)
    arrays["tiled_decoded"] = to_channels_last(vae.decode(latents).sample)
  vae.disable_tiling()
  arrays["tiled_frames"] = to_channels_last(frames)
  arrays["tiled_latents"] = to_channels_last(latents)
  np.savez(os.path.join(OUT, "reference.npz"), **arrays)

  with torch.device("meta"):  # shapes only, no memory
    published = AutoencoderKLWan()
  shapes = {name: list(t.shape) for name, t in published.state_dict().items()}
  with open(os.path.join(OUT, "published_shapes.json"), "w") as f:
    json.dump(dict(config=dict(published.config), shapes=shapes), f)
    f.write("\n")

  with open(os.path.join(OUT, "vae", "config.json")) as f:
    print(json.dumps(json.load(f)))
  for folder, _, files in os.walk(OUT):
    for name in sorted(files):
      path = os.path.join(folder, name)
      print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
