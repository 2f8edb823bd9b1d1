"""A folder of synthetic-world MP4s with hard cuts, their box sidecar and broken files.

  python -m idjax.data.prepare.synthetic --out DIR [--videos 100] [--identities 20]
      [--shots 2] [--shot-frames 24] [--resolution 64] [--broken 5]

Video v cuts between `shots` renders of the world (each a fresh scene:
background, lighting, motion), so every cut is known: shot s starts at frame
s * shot_frames. Shot s shows identity ids[(v + s * (v % 2)) % identities]:
even videos keep one person across the cut, odd ones change person at it.
DIR/boxes.jsonl holds the world's exact boxes (and each face's identity, for
the purity report only); DIR/truth.json the cuts and identities per video.
With --broken N, N unusable files follow (random bytes, empty, a truncated
MP4 header, text named .webm, and a valid video without faces or sidecar
boxes), each a different reason for the report.
"""

import json
import os
import sys

import numpy as np

from idjax import configlib, paths, video_io
from idjax.data import world

BROKEN = ("garbage.mp4", "empty.mov", "truncated.mkv", "notes.webm", "noface.mp4")


def video_name(v: int) -> str:
  return f"clip_{v:04d}.mp4"


def shot_identity(ids, v: int, s: int) -> int:
  return int(ids[(v + s * (v % 2)) % len(ids)])


def render_video(v: int, ids, *, shots: int, shot_frames: int, resolution: int, seed: int = 0):
  """(frames uint8 [shots * shot_frames, H, H, 3], boxes float32 [same, 4], identity per shot)."""
  cfg = world.WorldConfig(
      resolution=resolution, num_frames=shot_frames, num_references=1, reference_resolution=8
  )
  frames, boxes, who = [], [], []
  for s in range(shots):
    ident = shot_identity(ids, v, s)
    clip = world.render_clip(cfg, seed, v * shots + s, identity_ids=[ident])
    frames.append(clip["frames"])
    boxes.append(clip["boxes"][0])
    who.append(ident)
  return np.concatenate(frames), np.concatenate(boxes), who


def sidecar_lines(name: str, boxes, shot_ids, shot_frames: int) -> list[str]:
  return [
      json.dumps(
          dict(
              video=name,
              frame=f,
              faces=[
                  dict(box=[round(float(x), 6) for x in box], identity=shot_ids[f // shot_frames])
              ],
          )
      )
      for f, box in enumerate(boxes)
  ]


def _write_bytes(path, data):
  with open(path, "wb") as f:
    f.write(data)


def write_broken(out: str, count: int, resolution: int = 64) -> list[str]:
  rng = np.random.default_rng(0)
  made = []
  for name in BROKEN[:count]:
    path = os.path.join(out, name)
    if name == "garbage.mp4":
      data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    elif name == "empty.mov":
      data = b""
    elif name == "truncated.mkv":
      data = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00" * 64
    elif name == "notes.webm":
      data = b"these are notes, not a video\n" * 10
    else:
      noise = rng.integers(0, 256, (12, resolution, resolution, 3), dtype=np.uint8)
      video_io.write_mp4(path, noise, min_side=4 * resolution)
      made.append(name)
      continue
    paths.atomic_write(path, lambda tmp, data=data: _write_bytes(tmp, data))
    made.append(name)
  return made


def make_folder(
    out: str,
    *,
    videos: int,
    identities: int,
    shots: int = 2,
    shot_frames: int = 24,
    resolution: int = 64,
    broken: int = 0,
    seed: int = 0,
    min_side: int = 256,
    progress=None,
) -> dict:
  """Writes the folder; returns the truth (also DIR/truth.json)."""
  os.makedirs(out, exist_ok=True)
  ids = world.split_identities("train", identities)
  lines, truth = [], dict(videos={}, identities=[int(i) for i in ids], shot_frames=shot_frames)
  for v in range(videos):
    frames, boxes, who = render_video(
        v, ids, shots=shots, shot_frames=shot_frames, resolution=resolution, seed=seed
    )
    name = video_name(v)
    video_io.write_mp4(os.path.join(out, name), frames, fps=12.0, min_side=min_side)
    lines += sidecar_lines(name, boxes, who, shot_frames)
    truth["videos"][name] = dict(cuts=[s * shot_frames for s in range(1, shots)], identities=who)
    if progress:
      progress(v)
  truth["broken"] = write_broken(out, broken, resolution)
  paths.write_text(os.path.join(out, "boxes.jsonl"), "\n".join(lines) + "\n")
  paths.write_text(os.path.join(out, "truth.json"), json.dumps(truth, indent=1))
  return truth


@configlib.exit_on_usage_error
def main(argv=None) -> int:
  p = configlib.ArgumentParser(
      prog="python -m idjax.data.prepare.synthetic", description=__doc__.splitlines()[0]
  )
  p.add_argument("--out", required=True)
  p.add_argument("--videos", type=int, default=100)
  p.add_argument("--identities", type=int, default=20)
  p.add_argument("--shots", type=int, default=2)
  p.add_argument("--shot-frames", type=int, default=24)
  p.add_argument("--resolution", type=int, default=64)
  p.add_argument("--broken", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  if not (
      1 <= args.videos <= 10000
      and 1 <= args.identities
      and 1 <= args.shots <= 16
      and 2 <= args.shot_frames <= 1000
      and 16 <= args.resolution <= 256
      and 0 <= args.broken <= len(BROKEN)
  ):
    raise configlib.UsageError(
        "Sizes out of range: --videos 1..10000, --identities >= 1, "
        f"--shots 1..16, --shot-frames 2..1000, --resolution 16..256, "
        f"--broken 0..{len(BROKEN)}."
    )
  out = paths.check_folder(args.out, "--out")
  if os.path.exists(os.path.join(out, "boxes.jsonl")):
    raise configlib.UsageError(f"--out {out} already holds a synthetic folder (boxes.jsonl).")
  make_folder(
      out,
      videos=args.videos,
      identities=args.identities,
      shots=args.shots,
      shot_frames=args.shot_frames,
      resolution=args.resolution,
      broken=args.broken,
      seed=args.seed,
  )
  print(
      f"wrote {args.videos} videos, {args.broken} broken files, boxes.jsonl and truth.json "
      f"to {out}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
