"""python -m idjax.eval --workdir DIR --num-identities N [--out table.json] [--seed S]

Samples N held-out identities with and without references, scores them
against a ceiling (real clips of the same identity) and a floor (real clips
of other identities) under the evaluation encoder, prints the table and
writes it as JSON. Beside identity it measures realism: Fréchet distance to
real renders, high-frequency energy, and the attribute accuracy of a probe
trained once into --probe-workdir (default `probe/` beside the evaluation
encoder's workdir), and prints issue 10's done-when checks. Optional:
--strengths 0,0.4,0.8,1 adds an identity_strength sweep, --reference-counts
1,3 a 1-vs-K references ablation.

Beside the JSON it writes PNG plots (`plots.py`), named after --out:
<stem>_over_time.png (FaceSim per frame, every variant), <stem>_variants.png
(FaceSim per variant between floor and ceiling) and, with --strengths,
<stem>_strength.png (FaceSim and diversity against identity_strength).
--no-plots skips them.

Long video (issue 13): --frames 240 --chunk-frames 32 --context-frames 8 adds
two rows made chunk by chunk with `sampling.extend`: "chunked" (each chunk
after the first starts from the last 8 frames made, as clean context) and
"naive" (independent chunks, no context), beside the one-shot rows. The
drift lines then give each row's seam consistency at the chunk seams (for
one-shot rows, at the same frames), and <stem>_drift.png marks the seams.
"""

import argparse
import json
import os
import sys

import numpy as np

from idjax import config_rules, configlib, paths


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise configlib.UsageError(message[:1].upper() + message[1:] + ".")


def _floats(text, name):
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise configlib.UsageError(f"--{name} must be comma-separated numbers, got {text!r}.") from None


def parse_args(argv):
  p = _Parser(prog="python -m idjax.eval", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a trained video workdir")
  p.add_argument("--num-identities", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="JSON path (default WORKDIR/eval.json)")
  p.add_argument("--frames", "--num-frames", type=int, default=None,
                 help="frames per clip; given, the drift numbers and <stem>_drift.png follow")
  p.add_argument("--chunk-frames", type=int, default=None,
                 help="with --frames: add chunked and naive rows made in chunks of this many frames")
  p.add_argument("--context-frames", type=int, default=None,
                 help="clean context frames per later chunk (default chunk_frames // 4)")
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--sampler", choices=("euler", "heun"), default=None)
  p.add_argument("--renoise", type=float, default=None,
                 help="share of the noise renewed after each Euler step, 0..1 "
                      "(default: the workdir's sample.renoise)")
  p.add_argument("--identity-strength", type=float, default=None)
  p.add_argument("--strengths", default="", help="comma-separated identity_strength sweep")
  p.add_argument("--reference-counts", default="", help="comma-separated reference counts")
  p.add_argument("--probe-workdir", default=None,
                 help="attribute probe cache (default: probe/ beside the eval encoder workdir; "
                      "trained there, about a minute, if absent)")
  p.add_argument("--eval-encoder", default=None,
                 help="'dlib' (real-face ResNet, idjax.eval.real_faces) or a face-encoder "
                      "workdir (default: the config's eval_encoder_workdir)")
  p.add_argument("--no-plots", action="store_true", help="write no PNG plots beside --out")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out and plots")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  config_rules.check_seed(args.seed)
  if args.num_identities < 1:
    raise configlib.UsageError(f"--num-identities must be >= 1, got {args.num_identities}.")
  if args.frames is not None and args.frames < 1:
    raise configlib.UsageError(f"--frames must be >= 1, got {args.frames}.")
  if args.chunk_frames is not None:
    if args.frames is None:
      raise configlib.UsageError("--chunk-frames needs --frames (the whole clip's length).")
    if not 1 <= args.chunk_frames < args.frames:
      raise configlib.UsageError(
          f"--chunk-frames must lie in 1..{args.frames - 1} (below --frames), got {args.chunk_frames}.")
    if args.context_frames is None:
      args.context_frames = args.chunk_frames // 4
    if not 1 <= args.context_frames < args.chunk_frames:
      raise configlib.UsageError(f"--context-frames must lie in 1..{args.chunk_frames - 1}, "
                                 f"got {args.context_frames}.")
  elif args.context_frames is not None:
    raise configlib.UsageError("--context-frames needs --chunk-frames.")
  if args.steps is not None and args.steps < 1:
    raise configlib.UsageError(f"--steps must be >= 1, got {args.steps}.")
  if args.renoise is not None and not 0.0 <= args.renoise <= 1.0:
    raise configlib.UsageError(f"--renoise must lie in 0..1, got {args.renoise}.")
  args.strengths = _floats(args.strengths, "strengths")
  args.reference_counts = [int(v) for v in _floats(args.reference_counts, "reference-counts")]
  for s in args.strengths + ([args.identity_strength] if args.identity_strength is not None else []):
    if not 0.0 <= s <= 1.0:
      raise configlib.UsageError(f"identity strength {s} is outside [0, 1].")
  return args


def build_variants(args, num_references):
  common = {}
  if args.steps is not None:
    common["steps"] = args.steps
  if args.sampler is not None:
    common["sampler"] = args.sampler
  if args.renoise is not None:
    common["renoise"] = args.renoise
  if args.identity_strength is not None:
    common["identity_strength"] = args.identity_strength
  variants = {"generated (refs+text)": dict(common),
              "generated (text only)": dict(common, num_references=0)}
  for s in args.strengths:
    variants[f"refs+text, strength {s:g}"] = dict(common, identity_strength=s)
  for k in args.reference_counts:
    if not 1 <= k <= num_references:
      raise configlib.UsageError(f"--reference-counts: {k} is outside 1..{num_references}.")
    variants[f"refs+text, {k} reference(s)"] = dict(common, num_references=k)
  if args.chunk_frames is not None:
    c, m = args.chunk_frames, args.context_frames
    variants[f"chunked ({c} frames, {m} context)"] = dict(common, chunk_frames=c, context_frames=m)
    variants[f"naive ({c} frames, no context)"] = dict(common, chunk_frames=c, context_frames=0)
  return variants


def check_chunking(args, temporal_factor: int):
  """Chunked rows need one latent frame per frame (sampling.extend); say so
  before any sampling instead of failing at the first chunked row."""
  if args.chunk_frames is not None and temporal_factor != 1:
    raise configlib.UsageError(
        f"--chunk-frames needs a model with one latent frame per frame; this one's autoencoder "
        f"packs {temporal_factor} frames into each, so evaluate whole clips (drop --chunk-frames).")


class ChunkedOrOneShot:
  """A Generator whose `generate` makes a variant with `chunk_frames` clip by
  clip through `sampling.extend.extend` (the rest as the Generator does),
  returning the seams as `chunk_starts`; what `benchmark.evaluate` calls."""

  def __init__(self, generator, extend_fn):
    self.generator, self.extend_fn = generator, extend_fn
    self.config = generator.config

  def generate(self, prompts, references, *, num_frames, seed, layout, progress=False,
               chunk_frames=None, context_frames=None, **kwargs):
    if chunk_frames is None:
      return self.generator.generate(prompts, references, num_frames=num_frames, seed=seed,
                                     layout=layout, progress=progress, **kwargs)
    # One seed per clip, as Generator.generate derives one per prompt.
    clips = [self.extend_fn(self.generator, p, r, num_frames, chunk_frames=chunk_frames,
                            context_frames=context_frames, seed=seed + i, layout=lay,
                            progress=progress, **kwargs)
             for i, (p, r, lay) in enumerate(zip(prompts, references, layout))]
    return dict(frames=np.stack([c["frames"] for c in clips]),
                chunk_starts=clips[0]["chunk_starts"])


def plot_targets(out, strengths: bool) -> dict:
  """kind -> PNG path beside the JSON `out` (`<stem>_<kind>.png`, the stem
  without ".json"); "strength" only for an identity_strength sweep."""
  stem = out[: -len(".json")] if out.endswith(".json") else out
  kinds = ("strength", "over_time", "variants") if strengths else ("over_time", "variants")
  return {k: f"{stem}_{k}.png" for k in kinds}


@configlib.exit_on_usage_error
def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  out = args.out or os.path.join(args.workdir, "eval.json")
  plot_paths = {} if args.no_plots else plot_targets(out, bool(args.strengths))
  if plot_paths and args.frames is not None:  # drawn by idjax.eval.drift, not plots.write
    stem = out[: -len(".json")] if out.endswith(".json") else out
    plot_paths["drift"] = f"{stem}_drift.png"
  paths.check_files([out, *plot_paths.values()], "--out", args.overwrite)
  # Heavy imports after the argument checks: usage errors come back at once.
  from idjax.eval import benchmark, drift, plots
  from idjax.eval import probe as probe_lib
  from idjax.face.frozen import FrozenFaceEncoder
  from idjax.sampling import memory
  from idjax.sampling.extend import extend
  from idjax.sampling.generator import Generator, resolve_path
  from idjax.video_io import write_json
  try:
    generator = Generator.from_workdir(args.workdir)
    eval_dir = resolve_path(generator.config.eval_encoder_workdir, args.workdir)
    if args.eval_encoder == "dlib":
      from idjax.eval.real_faces import DlibEncoder  # optional: needs the `real` extra
      eval_encoder = DlibEncoder()
    else:
      eval_dir = args.eval_encoder or eval_dir
      eval_encoder = FrozenFaceEncoder.from_workdir(eval_dir)
    d = generator.config.sample
    generator.check_renoise(d.renoise if args.renoise is None else args.renoise,
                            args.sampler or d.sampler)
  except (ValueError, FileNotFoundError) as e:
    raise configlib.UsageError(str(e)) from None
  memory.check_fits(generator.config, args.frames or int(generator.config.sample.num_frames),
                    side=generator.model_side, temporal_factor=generator.temporal_factor)
  check_chunking(args, generator.temporal_factor)
  variants = build_variants(args, generator.num_references)
  probe_dir = (args.probe_workdir
               or os.path.join(os.path.dirname(os.path.abspath(eval_dir)), "probe"))
  probe = probe_lib.load_or_train(probe_dir)
  result = benchmark.evaluate(ChunkedOrOneShot(generator, extend), eval_encoder, args.num_identities, args.seed,
                              variants, num_frames=args.frames, progress=not args.no_progress,
                              probe=probe)
  result["workdir"] = os.path.abspath(args.workdir)
  result["eval_encoder_workdir"] = (
      "dlib" if args.eval_encoder == "dlib" else os.path.abspath(eval_dir))
  result["probe_workdir"] = os.path.abspath(probe_dir)
  # Drift of the per-frame FaceSim (mean over the identities) of every row.
  result["drift"] = {name: drift.drift_report(values)
                     for name, values in result["face_sim_per_frame"].items()}
  print(benchmark.format_table(result))
  for name, row in result["drift"].items():
    seam = result["seams"].get(name)
    seam_text = "" if seam is None else (
        f"; seams {seam['seam']:.4f} vs within {seam['within']:.4f} "
        f"(gap {seam['seam_gap']:+.4f}, {seam['num_seams']} seams); pixel change "
        f"{seam['pixel_jump_seam']:.2f} levels across seams vs {seam['pixel_jump_within']:.2f} within")
    print(f"{name}: drift {row['slope_per_100']:+.4f} FaceSim per 100 frames, "
          f"last - first 10% {row['end_minus_start']:+.4f} ({row['num_frames']} frames)"
          + seam_text)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  write_json(out, json.dumps(result, indent=2, sort_keys=False))
  # The JSON before the plots, so a plot that fails loses no evaluation; its
  # line stays the last one printed.
  drift_path = plot_paths.pop("drift", None)
  for path in plots.write(result, plot_paths):
    print(f"wrote {path}")
  if drift_path:
    drift.write_drift_plot(drift_path, result["face_sim_per_frame"],
                           starts=next(iter(result["seams"].values()), {}).get("seam_frames", []),
                           title=f"FaceSim per frame, mean over {args.num_identities} identities")
    print(f"wrote {drift_path}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
