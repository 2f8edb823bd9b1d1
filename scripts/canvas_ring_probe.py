"""Does the ring of the reference's backdrop colour around generated faces
come from the reference canvas at sampling time? (issue 10)

Samples the first N held-out identities of the eval protocol (seed 0, clip
i) with the canvas as trained, cut to a smaller ellipse, and left out, at
identity guidance 2.5 and 1. Rows per identity: the real clip; canvas x1 at
guidance 2.5 (the default); canvas cut to 0.6 of its ellipse, guidance 2.5;
canvas x1, guidance 1; no canvas, guidance 1.

  python scripts/canvas_ring_probe.py runs/demo/video docs/canvas_ring_probe.png [N]
"""

import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image

from idjax import layout
from idjax.eval import benchmark
from idjax.sampling import generator as generator_lib

ROWS = ((1.0, 2.5), (0.6, 2.5), (1.0, 1.0), (0.0, 1.0))  # (canvas ellipse scale, identity guidance)
_CANVAS = generator_lib.reference_canvas


def cut_canvas(scale):
  """reference_canvas kept only inside each box's ellipse shrunk by `scale`
  about its centre (0: no canvas)."""

  def canvas(references, ref_valid, char_valid, boxes, height, width):
    full = _CANVAS(references, ref_valid, char_valid, boxes, height, width)
    b = jnp.asarray(boxes, jnp.float32)
    centre = (b[..., :2] + b[..., 2:]) / 2
    half = (b[..., 2:] - b[..., :2]) / 2 * scale
    masks = layout.face_masks(
        jnp.concatenate([centre - half, centre + half], -1), height, width, xp=jnp
    )
    masks = masks * char_valid[:, :, None, None, None].astype(jnp.float32)
    return full * jnp.max(masks, axis=1)[..., None]

  return canvas


def main(workdir, out, n=2):
  gen = generator_lib.Generator.from_workdir(workdir)
  cfg = benchmark.world_config(gen.config, 8)
  rows = []
  for clip in benchmark.heldout_clips(cfg, benchmark.heldout_identities(n)):
    rows.append(np.concatenate(list(clip["frames"]), 1))
    for scale, guidance in ROWS:
      generator_lib.reference_canvas = _CANVAS if scale == 1.0 else cut_canvas(scale)
      frames = gen.generate(
          [clip["prompt"]],
          [[list(clip["references"][0])]],
          num_frames=8,
          seed=0,
          layout=[[clip["boxes"][0]]],
          identity_guidance=guidance,
          progress=False,
      )["frames"][0]
      rows.append(np.concatenate(list(frames), 1))
  generator_lib.reference_canvas = _CANVAS
  Image.fromarray(np.concatenate(rows, 0)).save(out)
  print(f"wrote {out}: per identity, the real clip, then (canvas scale, identity guidance) {ROWS}")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], *[int(a) for a in sys.argv[3:4]])
