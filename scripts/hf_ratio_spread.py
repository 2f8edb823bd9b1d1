"""How often do N real clips land in the HF band against the eval's pool of real clips?

The HF ratio (idjax.eval.realism.hf_ratios) pools each set's squared
Laplacian over all its clips. This compares that with a geometric mean over
clips of each clip's energy, on disjoint sets of real renders of held-out
identities (the demo's world), at N = 8 and 32 clips per set:

  python scripts/hf_ratio_spread.py
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idjax import configlib
from idjax.data import world
from idjax.eval import benchmark, realism

SETS_CLIPS, BAND = 320, (0.7, 1.4)


def renders(cfg, ids, first, count):
  clips = [
      world.render_clip(cfg, 0, first + i, split="heldout", identity_ids=[ids[i % len(ids)]])
      for i in range(count)
  ]
  return (
      np.stack([c["frames"] for c in clips]),
      np.stack([c["boxes"][0] for c in clips])[..., None, :],
  )


def geometric(frames, boxes, region):
  energies = [realism.laplacian_energy(f, b)[region] for f, b in zip(frames, boxes)]
  return float(np.exp(np.mean(np.log(np.maximum(energies, 1e-10)))))


def main():
  cfg = benchmark.world_config(configlib.load_config_file("configs/tiny_latent.py"))
  ids = world.split_identities("heldout", 400)
  pool = renders(cfg, ids, 10_000, benchmark.HF_POOL_FRAMES // cfg.num_frames)
  pool_energy = realism.laplacian_energy(*pool)
  frames, boxes = renders(cfg, ids, 0, SETS_CLIPS)
  for n in (8, 32):
    for region in ("background", "backdrop", "face"):
      pooled, geo = [], []
      for s in range(SETS_CLIPS // n):
        f, b = frames[s * n : (s + 1) * n], boxes[s * n : (s + 1) * n]
        pooled.append(realism.hf_ratios(f, b, pool_energy)[region])
        geo.append(geometric(f, b, region) / geometric(*pool, region))
      line = [f"N={n:2d} {region:10s} {len(geo):2d} sets"]
      for name, r in (("pooled mean", np.array(pooled)), ("geometric mean", np.array(geo))):
        inside = np.mean((r >= BAND[0]) & (r <= BAND[1]))
        line.append(
            f"{name}: median {np.median(r):.2f}, {r.min():.2f}-{r.max():.2f}, "
            f"in band {inside:.2f}"
        )
      print("  ".join(line), flush=True)


if __name__ == "__main__":
  main()
