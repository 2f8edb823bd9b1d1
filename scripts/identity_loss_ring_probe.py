"""Does the identity loss reward a halo around the head? (issue 10)

The identity-preservation loss pulls each face box's embedding, under the
frozen training encoder, toward the mean embedding of the references. A face
box holds backdrop around the head, and a reference's backdrop is another
scene's. On real training clips (seed 0, clips 0..N-1), this prints the
loss's reference term with the ring (the box's inscribed ellipse minus the
head) as rendered and repainted: with the reference canvas (the reference's
own backdrop there), mid grey, or the reference backdrop's mean colour. Then
the cosine between the loss's descent direction on the ring's pixels and
(canvas - clip) there, per clip.

  python scripts/identity_loss_ring_probe.py runs/demo/face [N]
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from idjax import layout, losses
from idjax.conditioning import reference_canvas
from idjax.data import world
from idjax.face.frozen import FrozenFaceEncoder


def main(face_workdir, n=64):
  encoder = FrozenFaceEncoder.from_workdir(face_workdir)
  encode = lambda crops: encoder.apply(encoder.params, crops)[0]
  size = encoder.input_size
  cfg = world.WorldConfig(
      resolution=64,
      num_frames=4,
      reference_resolution=64,
      max_characters=1,
      min_characters=1,
      num_references=3,
  )
  records = [world.render_clip(cfg, 0, i) for i in range(n)]
  frames = np.stack([r["frames"] for r in records]).astype(np.float32) / 127.5 - 1
  boxes = np.stack([r["boxes"] for r in records])  # [N, 1, T, 4]
  heads = np.stack([r["masks"] for r in records])[:, 0]  # [N, T, H, W]
  refs = np.stack([r["references"] for r in records])  # [N, 1, K, R, R, 3]
  # The references as a clip of K frames, each box the whole portrait (as
  # conditioning.encode_references crops them).
  whole = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 1.0]), (n, 1, refs.shape[2], 4))
  ref_emb = losses.face_embeddings(
      jnp.asarray(refs[:, 0] / 127.5 - 1, jnp.float32), whole, encode, size
  )
  anchor = np.asarray(ref_emb)[:, 0].mean(axis=1)  # [N, D]
  canvas = np.asarray(
      reference_canvas(
          jnp.asarray(refs),
          jnp.ones(refs.shape[:3], bool),
          jnp.ones((n, 1), bool),
          jnp.asarray(boxes),
          64,
          64,
      )
  )
  ring = (np.asarray(layout.face_masks(boxes[:, 0], 64, 64)) * (1 - heads))[..., None]
  corners = 1 - layout.face_masks(np.array([0.0, 0.0, 1.0, 1.0]), 64, 64)[..., None]
  portrait = refs[:, 0, 0].astype(np.float32) / 127.5 - 1
  backdrop = (portrait * corners).sum((1, 2)) / corners.sum()  # [N, 3]

  def distance(clip):
    emb = np.asarray(losses.face_embeddings(jnp.asarray(clip), jnp.asarray(boxes), encode, size))[
        :, 0
    ]
    return np.mean(np.sum((emb - anchor[:, None]) ** 2, -1), 1)

  variants = {
      "as rendered": frames,
      "ring <- reference canvas": frames * (1 - ring) + canvas * ring,
      "ring <- mid grey": frames * (1 - ring),
      "ring <- reference backdrop colour": frames * (1 - ring)
      + backdrop[:, None, None, None] * ring,
  }
  print(f"identity loss, reference term, mean (median) over {n} training clips:")
  for name, clip in variants.items():
    d = distance(clip)
    print(f"  {name:34s} {d.mean():.4f} ({np.median(d):.4f})")

  def loss(clip):
    emb = losses.face_embeddings(clip, jnp.asarray(boxes), encode, size)[:, 0]
    return jnp.sum(jnp.square(emb - jnp.asarray(anchor)[:, None]))

  descent = -np.asarray(jax.grad(loss)(jnp.asarray(frames))) * ring
  toward = (canvas - frames) * ring
  flat = lambda a: a.reshape(n, -1)
  cos = np.sum(flat(descent) * flat(toward), 1) / (
      np.linalg.norm(flat(descent), axis=1) * np.linalg.norm(flat(toward), axis=1) + 1e-12
  )
  print(
      f"cosine(descent on the ring, canvas - clip): mean {cos.mean():.3f}, "
      f"positive in {np.mean(cos > 0):.0%} of clips"
  )


if __name__ == "__main__":
  main(sys.argv[1], *[int(a) for a in sys.argv[2:3]])
