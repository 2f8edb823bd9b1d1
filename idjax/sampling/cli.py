"""Prompt + reference image(s) -> an identity-preserving clip.

sample.py's command line as a library, so that the web app (`python -m
idjax.app`) samples through the same code: it builds sample.py's argument
list, parses it here and runs `prepare` and `write_clip` with a Generator it
loaded once, so the same inputs and seed give the same files as sample.py.
`main` is sample.py's: `parse_args`, `prepare` (every cheap check: the output
folder, the references, the boxes), `load_generator`, `write_clip` (the
memory check, sampling, FaceSim, the MP4/GIF/PNG/JSON).
"""

import dataclasses
import json
import os
import sys
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from idjax import config_rules, configlib, paths
from idjax.layout import validate_box

MAIN = "main"
# References are shrunk to the model's reference size (tens of pixels); a
# larger limit only lets a huge or hostile file exhaust memory while decoding.
MAX_REFERENCE_PIXELS = 64_000_000


def parse_args(argv):
  p = configlib.ArgumentParser(prog="sample.py", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="trained video workdir")
  p.add_argument("--prompt", required=True)
  p.add_argument("--out", required=True, help="output .mp4 (the .gif/.png/.json go beside it)")
  p.add_argument(
      "--reference", nargs="+", default=[], help="reference images of the main character"
  )
  p.add_argument("--character", action="append", default=[], metavar="NAME=A.png,B.png")
  p.add_argument("--box", action="append", default=[], metavar="NAME=y0,x0,y1,x1[:y0,x0,y1,x1]")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--frames", type=int, default=None)
  p.add_argument("--identity-strength", type=float, default=None)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--sampler", choices=("euler", "heun"), default=None)
  p.add_argument("--text-guidance", type=float, default=None)
  p.add_argument("--identity-guidance", type=float, default=None)
  p.add_argument(
      "--renoise",
      type=float,
      default=None,
      help="share of the noise swapped for fresh noise after each Euler step, "
      "0..1 (default: the workdir's sample.renoise)",
  )
  p.add_argument("--fps", type=float, default=8.0)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument(
      "--text-embeddings",
      default=None,
      metavar="FILE.safetensors",
      help="a model reading precomputed text embeddings: the table holding --prompt "
      "(default: the run's data.text_embeddings)",
  )
  p.add_argument(
      "--extend",
      default=None,
      metavar="IN.mp4|IN.npy",
      help="continue this clip to --frames frames (its frames are kept bit-exact, "
      "at the model's resolution; OUT.npy holds them losslessly)",
  )
  p.add_argument(
      "--chunk-frames",
      type=int,
      default=None,
      help="with --extend: frames per model call (default config.sample.num_frames)",
  )
  p.add_argument(
      "--context-frames",
      type=int,
      default=None,
      help="with --extend: clean frames each chunk starts with (default half a chunk)",
  )
  args = p.parse_args(argv)
  checks = [
      (args.frames is None or args.frames >= 1, f"--frames must be >= 1, got {args.frames}."),
      (args.steps is None or args.steps >= 1, f"--steps must be >= 1, got {args.steps}."),
      (
          args.identity_strength is None or 0.0 <= args.identity_strength <= 1.0,
          f"--identity-strength must lie in [0, 1], got {args.identity_strength}.",
      ),
      (args.fps > 0, f"--fps must be > 0, got {args.fps}."),
      (
          args.text_guidance is None or np.isfinite(args.text_guidance),
          "--text-guidance must be finite.",
      ),
      (
          args.identity_guidance is None or np.isfinite(args.identity_guidance),
          "--identity-guidance must be finite.",
      ),
      (
          args.renoise is None or 0.0 <= args.renoise <= 1.0,
          f"--renoise must lie in 0..1, got {args.renoise}.",
      ),
      (args.out.lower().endswith(".mp4"), f"--out must end in .mp4, got {args.out!r}."),
      (args.prompt.strip() != "", "--prompt is empty."),
      (args.extend is None or args.frames is not None, "--extend needs --frames (the total)."),
      (
          args.extend is not None or (args.chunk_frames is None and args.context_frames is None),
          "--chunk-frames and --context-frames go with --extend.",
      ),
      (
          args.chunk_frames is None or args.chunk_frames >= 1,
          f"--chunk-frames must be >= 1, got {args.chunk_frames}.",
      ),
      (
          args.context_frames is None or args.context_frames >= 0,
          f"--context-frames must be >= 0, got {args.context_frames}.",
      ),
  ]
  for ok, message in checks:
    if not ok:
      raise configlib.UsageError(message)
  config_rules.check_seed(args.seed)
  return args


def output_paths(out: str, extend: bool = False) -> dict:
  stem = os.path.splitext(out)[0]
  exts = ("mp4", "gif", "png", "json") + (("npy",) if extend else ())
  return {ext: stem + "." + ext for ext in exts}


def load_clip(path: str) -> np.ndarray:
  """--extend's clip: an MP4 (decoded) or a .npy of uint8 [T, H, W, 3] -> uint8 [T, H, W, 3]."""
  if not os.path.isfile(path):
    raise configlib.UsageError(f"--extend: {path!r} does not exist.")
  try:
    if path.lower().endswith(".npy"):
      frames = np.load(path, allow_pickle=False)
    else:
      import imageio.v2 as imageio  # ffmpeg: only when a clip is read

      with warnings.catch_warnings():  # ffmpeg starts by fork+exec (see video_io)
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        with imageio.get_reader(path, format="FFMPEG") as reader:
          frames = np.stack([np.asarray(f)[..., :3] for f in reader])
  except (OSError, ValueError, RuntimeError, IndexError) as e:
    raise configlib.UsageError(f"--extend: cannot read {path!r} ({type(e).__name__}).") from None
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
    raise configlib.UsageError(
        f"--extend: {path!r} holds {frames.dtype} {list(frames.shape)}, not uint8 frames [T, H, W, 3]."
    )
  return frames


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
  if not args.box:
    return None
  boxes = {}
  for spec in args.box:
    name, sep, body = spec.partition("=")
    if not sep or name not in names:
      raise configlib.UsageError(
          f"--box {spec!r} must be NAME=y0,x0,y1,x1[:y0,x0,y1,x1] with NAME "
          f"one of the characters {list(names)}."
      )
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
  """Any readable image -> uint8 RGB [h, w, 3], or with transparency RGBA
  [h, w, 4]: the colours as stored (also under transparent pixels: the face
  encoder sees the portrait whole, backdrop included, as in training) and
  the alpha, which a model with model.canvas_alpha reads as the head's matte
  (opaque = head)."""
  if not os.path.isfile(path):
    raise configlib.UsageError(f"Reference image {path!r} does not exist.")
  too_large = configlib.UsageError(
      f"Reference image {path!r} is too large (more than {MAX_REFERENCE_PIXELS // 1_000_000} "
      "megapixels); give a smaller one: references are shrunk to a few dozen pixels anyway."
  )
  try:
    with warnings.catch_warnings():  # PIL's own, larger limit: ours comes first
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(path)  # reads the header only
    with image:
      if image.size[0] * image.size[1] > MAX_REFERENCE_PIXELS:
        raise too_large
      image.load()
      transparent = image.mode in ("RGBA", "LA", "PA") or (
          image.mode == "P" and "transparency" in image.info
      )
      array = np.asarray(image.convert("RGBA" if transparent else "RGB"), np.uint8)
  except Image.DecompressionBombError:
    raise too_large from None
  except configlib.UsageError:  # `too_large` itself (a ValueError): not "cannot read"
    raise
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise configlib.UsageError(
        f"Cannot read reference image {path!r} ({type(e).__name__})."
    ) from None
  if array.size == 0:
    raise configlib.UsageError(f"Reference image {path!r} is empty.")
  return array


@dataclasses.dataclass
class Request:
  """A checked request: the parsed arguments and what `prepare` read from them."""

  args: object  # sample.py's argparse Namespace
  outputs: dict  # extension -> path (output_paths(args.out))
  characters: dict  # name -> reference paths, "main" first
  layout: list | None  # per character a [4] or [2, 4] box spec; None: no --box
  images: dict  # name -> uint8 reference images, as read
  given: np.ndarray | None = None  # --extend's frames, as read


def prepare(args) -> Request:
  """Every check that needs no model: output files, characters, boxes, images."""
  extend = getattr(args, "extend", None)
  outputs = output_paths(args.out, extend is not None)
  paths.check_files(outputs.values(), "--out", args.overwrite)
  chars = parse_characters(args)
  layout = parse_boxes(args, list(chars))
  images = {name: [load_image(p) for p in files] for name, files in chars.items()}
  given = None
  if extend is not None:
    given = load_clip(extend)
    if len(given) >= args.frames:
      raise configlib.UsageError(
          f"--frames {args.frames} must exceed the {len(given)} frames of {extend!r}."
      )
  return Request(args, outputs, chars, layout, images, given)


def load_generator(workdir: str, text_embeddings: str | None = None):
  """The workdir's Generator; UsageError (one sentence) when it cannot be sampled."""
  # Heavy imports after every cheap check: usage errors come back at once.
  from idjax.sampling.generator import Generator

  try:
    return Generator.from_workdir(workdir, text_embeddings=text_embeddings)
  except (ValueError, FileNotFoundError) as e:
    raise configlib.UsageError(str(e)) from None


def write_clip(generator, request: Request) -> dict:
  """Samples the request's clip and writes its MP4, GIF, PNG and JSON.

  Returns the summary written as JSON (arguments, characters, seed, frames,
  resolution, metadata, timings, FaceSim metrics or None, files).
  """
  args, outputs, chars, layout, images = (
      request.args,
      request.outputs,
      request.characters,
      request.layout,
      request.images,
  )
  # Heavy imports after every cheap check: usage errors come back at once.
  from idjax import video_io
  from idjax.eval import metrics
  from idjax.face.frozen import FrozenFaceEncoder
  from idjax.sampling import memory
  from idjax.sampling.generator import prepare_reference, resolve_path
  # The memory the frames need, before sampling (the grid is known once a
  # latent model's autoencoder is loaded).
  defaults = generator.config.sample
  text = defaults.text_guidance if args.text_guidance is None else args.text_guidance
  ident = defaults.identity_guidance if args.identity_guidance is None else args.identity_guidance
  extending = request.given is not None
  memory.check_fits(
      generator.config,
      (args.chunk_frames or int(defaults.num_frames))
      if extending
      else (args.frames or int(defaults.num_frames)),
      memory.guidance_passes(text, ident),
      side=generator.model_side,
      temporal_factor=generator.temporal_factor,
  )
  references = [images[n] for n in chars]
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  # The MP4 takes the frames as they are decoded; it is left only if sampling succeeds.
  with video_io.mp4_writer(outputs["mp4"], fps=args.fps) as append_mp4:
    try:
      if extending:
        out = _extend(generator, request, references)
        append_mp4(out["frames"][0])
      else:
        out = generator.generate(
            [args.prompt],
            [references],
            num_frames=args.frames,
            identity_strength=args.identity_strength,
            text_guidance=args.text_guidance,
            identity_guidance=args.identity_guidance,
            steps=args.steps,
            sampler=args.sampler,
            seed=args.seed,
            layout=None if layout is None else [layout],
            renoise=args.renoise,
            progress=not args.no_progress,
            on_frames=lambda _, frames: append_mp4(frames[0]),
        )
    except ValueError as e:  # references or frames the model cannot take
      raise configlib.UsageError(str(e)) from None
  frames = out["frames"][0]

  prepared = [
      [prepare_reference(im, generator.reference_resolution) for im in refs] for refs in references
  ]
  report = None
  eval_dir = resolve_path(generator.config.get("eval_encoder_workdir", ""), args.workdir)
  if prepared and eval_dir and os.path.isdir(eval_dir):
    scorer = metrics.FaceScorer(FrozenFaceEncoder.from_workdir(eval_dir))
    boxes = None if out["boxes"] is None else out["boxes"][0, : len(prepared)]
    report = metrics.clip_metrics(scorer, frames, prepared, boxes)
    report["encoder"] = os.path.abspath(eval_dir)
    report["characters"] = dict(zip(chars, report["characters"]))

  if "npy" in outputs:  # lossless: the MP4 re-encodes the given frames too
    paths.atomic_write(outputs["npy"], lambda tmp: np.save(tmp, frames))
  video_io.write_gif(outputs["gif"], frames, fps=args.fps)
  sheet_refs = [r for refs in prepared for r in refs]
  video_io.write_png(outputs["png"], video_io.contact_sheet(frames, sheet_refs))
  summary = dict(
      arguments=vars(args),
      characters={n: chars[n] for n in chars},
      seed=args.seed,
      num_frames=int(frames.shape[0]),
      resolution=list(frames.shape[1:3]),
      metadata=out["metadata"][0],
      timings_s=out["timings"],
      metrics=report,
      metrics_note=None
      if report
      else "no evaluation encoder (config.eval_encoder_workdir) or no references",
      files=outputs,
  )
  video_io.write_json(outputs["json"], json.dumps(summary, indent=2))
  return summary


def _extend(generator, request, references) -> dict:
  """--extend: the given clip at the model's resolution, continued chunk by
  chunk (sampling.extend), as generate's output dict."""
  # Heavy imports (JAX) only once a model is loaded, as in write_clip.
  from idjax.sampling import extend as extend_lib
  from idjax.sampling.generator import prepare_reference

  args, res = request.args, generator.resolution
  given = request.given
  if given.shape[1:3] != (res, res):  # centre-cropped and resized as references are
    given = np.stack([prepare_reference(f, res) for f in given])
  out = extend_lib.extend(
      generator,
      args.prompt,
      references,
      args.frames,
      given=given,
      chunk_frames=args.chunk_frames,
      context_frames=args.context_frames,
      seed=args.seed,
      layout=request.layout,
      identity_strength=args.identity_strength,
      text_guidance=args.text_guidance,
      identity_guidance=args.identity_guidance,
      steps=args.steps,
      sampler=args.sampler,
      renoise=args.renoise,
      progress=not args.no_progress,
  )
  metadata = dict(
      seed=args.seed,
      prompt=args.prompt,
      num_references=[len(r) for r in references],
      extended=args.extend,
      num_given=out["num_given"],
      chunk_starts=out["chunk_starts"],
  )
  return dict(
      frames=out["frames"][None],
      boxes=None if out["boxes"] is None else out["boxes"][None],
      metadata=[metadata],
      timings=out["timings"],
  )


@configlib.exit_on_usage_error
def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  request = prepare(args)
  summary = write_clip(load_generator(args.workdir, args.text_embeddings), request)
  report = summary["metrics"]
  line = f"wrote {request.outputs['mp4']} ({summary['num_frames']} frames)"
  if report:
    line += f"; FaceSim {report['face_sim']:.3f} (boxes: {report['box_source']})"
  print(line)
