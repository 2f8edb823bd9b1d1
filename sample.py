"""Prompt + reference image(s) -> an identity-preserving clip.

  python sample.py --workdir runs/demo/video --reference a.png b.png \
      --prompt "a person with pale skin and short black hair" --out out/clip.mp4

Several characters: `--character NAME=a.png,b.png` (repeatable; the
`--reference` images form the character named "main") and optionally one
`--box NAME=y0,x0,y1,x1[:y0,x0,y1,x1]` per character (a fixed box, or a start
and an end box interpolated over the clip; fractions of the frame). Without
boxes the model places the faces itself.

Writes OUT.mp4, OUT.gif, OUT.png (references left of every frame) and
OUT.json (arguments, seed, timings and, when the config's evaluation encoder
exists, FaceSim metrics). Existing outputs are kept unless --overwrite.
Everything that can be checked is checked before sampling: the output folder,
the references (at most MAX_REFERENCE_PIXELS each), the seed, the saved
config, and the memory the requested frames need.
"""

import json
import os
import sys
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from idjax import config_rules, configlib, paths

MAIN = "main"
# References are shrunk to the model's reference size (tens of pixels); a
# larger limit only lets a huge or hostile file exhaust memory while decoding.
MAX_REFERENCE_PIXELS = 64_000_000


def parse_args(argv):
  p = configlib.ArgumentParser(prog="sample.py", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="trained video workdir")
  p.add_argument("--prompt", required=True)
  p.add_argument("--out", required=True, help="output .mp4 (the .gif/.png/.json go beside it)")
  p.add_argument("--reference", nargs="+", default=[], help="reference images of the main character")
  p.add_argument("--character", action="append", default=[], metavar="NAME=A.png,B.png")
  p.add_argument("--box", action="append", default=[], metavar="NAME=y0,x0,y1,x1[:y0,x0,y1,x1]")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--frames", type=int, default=None)
  p.add_argument("--identity-strength", type=float, default=None)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--sampler", choices=("euler", "heun"), default=None)
  p.add_argument("--text-guidance", type=float, default=None)
  p.add_argument("--identity-guidance", type=float, default=None)
  p.add_argument("--fps", type=float, default=8.0)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  checks = [
      (args.frames is None or args.frames >= 1, f"--frames must be >= 1, got {args.frames}."),
      (args.steps is None or args.steps >= 1, f"--steps must be >= 1, got {args.steps}."),
      (args.identity_strength is None or 0.0 <= args.identity_strength <= 1.0,
       f"--identity-strength must lie in [0, 1], got {args.identity_strength}."),
      (args.fps > 0, f"--fps must be > 0, got {args.fps}."),
      (args.text_guidance is None or np.isfinite(args.text_guidance), "--text-guidance must be finite."),
      (args.identity_guidance is None or np.isfinite(args.identity_guidance),
       "--identity-guidance must be finite."),
      (args.out.lower().endswith(".mp4"), f"--out must end in .mp4, got {args.out!r}."),
      (args.prompt.strip() != "", "--prompt is empty."),
  ]
  for ok, message in checks:
    if not ok:
      raise configlib.UsageError(message)
  config_rules.check_seed(args.seed)
  return args


def output_paths(out: str) -> dict:
  stem = os.path.splitext(out)[0]
  return {ext: stem + "." + ext for ext in ("mp4", "gif", "png", "json")}


def parse_characters(args) -> dict:
  """name -> list of image paths, in command-line order ("main" first)."""
  chars = {}
  if args.reference:
    chars[MAIN] = list(args.reference)
  for spec in args.character:
    name, sep, files = spec.partition("=")
    refs = [f for f in files.split(",") if f]
    if not sep or not name or not refs:
      raise configlib.UsageError(f"--character {spec!r} must look like NAME=a.png[,b.png...].")
    if name in chars:
      raise configlib.UsageError(f"Character {name!r} is given twice.")
    chars[name] = refs
  return chars


def parse_boxes(args, names) -> list | None:
  """Per character (in `names` order) a [4] or [2, 4] box spec; None if no --box."""
  from idjax.layout import validate_box
  if not args.box:
    return None
  boxes = {}
  for spec in args.box:
    name, sep, body = spec.partition("=")
    if not sep or name not in names:
      raise configlib.UsageError(f"--box {spec!r} must be NAME=y0,x0,y1,x1[:y0,x0,y1,x1] with NAME "
                                 f"one of the characters {list(names)}.")
    if name in boxes:
      raise configlib.UsageError(f"Character {name!r} has more than one --box.")
    try:
      parts = [[float(v) for v in box.split(",")] for box in body.split(":")]
      if len(parts) > 2:
        raise ValueError(f"--box {spec!r} has {len(parts)} boxes; give one, or a start and an end.")
      boxes[name] = np.stack([validate_box(b, f"--box {name}") for b in parts])
    except ValueError as e:
      message = str(e) if str(e).startswith("--box") else f"--box {spec!r}: {e}"
      raise configlib.UsageError(message) from None
  missing = [n for n in names if n not in boxes]
  if missing:
    raise configlib.UsageError(f"Give one --box per character or none; missing for {missing}.")
  return [boxes[n] for n in names]


def load_image(path: str) -> np.ndarray:
  """Any readable image -> uint8 RGB [h, w, 3]; transparency over white."""
  if not os.path.isfile(path):
    raise configlib.UsageError(f"Reference image {path!r} does not exist.")
  too_large = configlib.UsageError(
      f"Reference image {path!r} is too large (more than {MAX_REFERENCE_PIXELS // 1_000_000} "
      "megapixels); give a smaller one: references are shrunk to a few dozen pixels anyway.")
  try:
    with warnings.catch_warnings():  # PIL's own, larger limit: ours comes first
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(path)  # reads the header only
    with image:
      if image.size[0] * image.size[1] > MAX_REFERENCE_PIXELS:
        raise too_large
      image.load()
      if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, image)
      array = np.asarray(image.convert("RGB"), np.uint8)
  except Image.DecompressionBombError:
    raise too_large from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise configlib.UsageError(f"Cannot read reference image {path!r} ({type(e).__name__}).") from None
  if array.size == 0:
    raise configlib.UsageError(f"Reference image {path!r} is empty.")
  return array


@configlib.exit_on_usage_error
def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  outputs = output_paths(args.out)
  paths.check_files(outputs.values(), "--out", args.overwrite)
  chars = parse_characters(args)
  layout = parse_boxes(args, list(chars))
  images = {name: [load_image(p) for p in files] for name, files in chars.items()}

  # Heavy imports after every cheap check: usage errors come back at once.
  from idjax import video_io
  from idjax.eval import metrics
  from idjax.face.frozen import FrozenFaceEncoder
  from idjax.sampling import memory
  from idjax.sampling.generator import Generator, prepare_reference, resolve_path
  try:
    generator = Generator.from_workdir(args.workdir)
  except (ValueError, FileNotFoundError) as e:
    raise configlib.UsageError(str(e)) from None
  # The memory the frames need, before sampling (the grid is known once a
  # latent model's autoencoder is loaded).
  defaults = generator.config.sample
  text = defaults.text_guidance if args.text_guidance is None else args.text_guidance
  ident = defaults.identity_guidance if args.identity_guidance is None else args.identity_guidance
  memory.check_fits(generator.config, args.frames or int(defaults.num_frames),
                    memory.guidance_passes(text, ident), side=generator.model_side)
  references = [images[n] for n in chars]
  try:
    out = generator.generate(
        [args.prompt], [references], num_frames=args.frames,
        identity_strength=args.identity_strength, text_guidance=args.text_guidance,
        identity_guidance=args.identity_guidance, steps=args.steps, sampler=args.sampler,
        seed=args.seed, layout=None if layout is None else [layout],
        progress=not args.no_progress)
  except ValueError as e:  # references or frames the model cannot take
    raise configlib.UsageError(str(e)) from None
  frames = out["frames"][0]

  prepared = [[prepare_reference(im, generator.reference_resolution) for im in refs]
              for refs in references]
  report = None
  eval_dir = resolve_path(generator.config.get("eval_encoder_workdir", ""), args.workdir)
  if prepared and eval_dir and os.path.isdir(eval_dir):
    scorer = metrics.FaceScorer(FrozenFaceEncoder.from_workdir(eval_dir))
    boxes = None if out["boxes"] is None else out["boxes"][0, :len(prepared)]
    report = metrics.clip_metrics(scorer, frames, prepared, boxes)
    report["encoder"] = os.path.abspath(eval_dir)
    report["characters"] = dict(zip(chars, report["characters"]))

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  video_io.write_mp4(outputs["mp4"], frames, fps=args.fps)
  video_io.write_gif(outputs["gif"], frames, fps=args.fps)
  sheet_refs = [r for refs in prepared for r in refs]
  video_io.write_png(outputs["png"], video_io.contact_sheet(frames, sheet_refs))
  summary = dict(
      arguments=vars(args), characters={n: chars[n] for n in chars}, seed=args.seed,
      num_frames=int(frames.shape[0]), resolution=list(frames.shape[1:3]),
      metadata=out["metadata"][0], timings_s=out["timings"], metrics=report,
      metrics_note=None if report else "no evaluation encoder (config.eval_encoder_workdir) or no references",
      files=outputs)
  video_io.write_json(outputs["json"], json.dumps(summary, indent=2))
  line = f"wrote {outputs['mp4']} ({frames.shape[0]} frames)"
  if report:
    line += f"; FaceSim {report['face_sim']:.3f} (boxes: {report['box_source']})"
  print(line)


if __name__ == "__main__":
  main()
