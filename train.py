"""Trains a face encoder or the video model from a config file.

  python train.py --config configs/face_encoder.py --workdir runs/demo/face
  python train.py --config configs/tiny.py --workdir runs/demo/video [--config.key=value ...]

Restarting with the same --workdir resumes from its latest checkpoint (video
model and face encoder); without --config the workdir's config.json is used
(as for a workdir made by `python -m idjax.models.wan.convert`, which holds
a step-0 checkpoint). SIGTERM / Ctrl-C save a checkpoint and exit 0.
--profile-steps 5,8 writes a jax.profiler trace of steps 6..8 to
WORKDIR/profile (video model and face encoder).
Several processes (one per host): --coordinator HOST:PORT --num-processes N
--process-id I, or the environment variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
Process 0's coordination service has no authentication: a localhost coordinator
listens on loopback only; for several hosts, --coordinator-bind HOST:PORT picks
a trusted interface (JAX's default is every interface).
"""

import functools
import os
import sys

# Importing these initialises no JAX backend, so distributed.initialize (in
# main) still comes before any JAX computation.
from idjax import config_rules, configlib, paths, restore
from idjax.autoencoder.train import train_autoencoder
from idjax.face.train import train_face_encoder
from idjax.sampling.hooks import write_samples
from idjax.train import distributed, loop, trainer


def parse_args(argv):
  """-> (config, args); `--config.a.b=v` overrides are applied to the config."""
  p = configlib.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
  p.add_argument("--config", default=None,
                 help="config file (configs/*.py); default: the --workdir's config.json")
  p.add_argument("--workdir", required=True, help="where checkpoints and logs go")
  p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  p.add_argument("--coordinator-bind", default=None,
                 help="HOST:PORT where process 0 listens (default: loopback for a localhost "
                 "coordinator, else every interface)")
  p.add_argument("--num-processes", type=int, default=None)
  p.add_argument("--process-id", type=int, default=None)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--profile-steps", "--profile_steps", default=None, metavar="START,STOP",
                 help="video model or face encoder: write a jax.profiler trace of the steps "
                 "after START up to STOP to WORKDIR/profile")
  known, rest = p.parse_known_args(argv)
  config = (configlib.load_config_file(known.config) if known.config
            else workdir_config(known.workdir))
  leftover = configlib.parse_overrides(config, rest)
  if leftover:
    raise configlib.UsageError(f"Unrecognised argument {leftover[0]!r}.")
  config_rules.check(config)
  paths.check_folder(known.workdir, "--workdir")
  known.profile_steps = parse_profile_steps(known.profile_steps)
  return config, known


def workdir_config(workdir):
  """The config.json of a workdir to resume; UsageError when it has none."""
  path = os.path.join(workdir, restore.CONFIG_FILE)
  if not os.path.isfile(path):
    raise configlib.UsageError(
        f"--config is needed: {os.path.abspath(workdir)} holds no {restore.CONFIG_FILE} to "
        "resume from.")
  return restore.read_saved_config(path, "restore it, or give --config")


def parse_profile_steps(text):
  """'START,STOP' -> (start, stop) with 0 <= start < stop; None -> None."""
  if text is None:
    return None
  try:
    start, stop = (int(part) for part in text.split(","))
  except ValueError:
    start = stop = None
  if start is None or not 0 <= start < stop:
    raise configlib.UsageError(
        f"--profile-steps must be START,STOP with 0 <= START < STOP, got {text!r}.")
  return start, stop


@configlib.exit_on_usage_error
def main(argv):
  config, args = parse_args(argv)
  kind = config.get("kind", "video")
  if kind not in ("video", "face_encoder", "autoencoder"):
    raise configlib.UsageError(
        f"config.kind must be 'video', 'face_encoder' or 'autoencoder', got {kind!r}.")
  if args.profile_steps and kind == "autoencoder":
    raise configlib.UsageError("--profile-steps profiles the video model or a face encoder, "
                               "not an autoencoder run.")

  settings = distributed.settings_from(args.coordinator, args.num_processes, args.process_id,
                                       args.coordinator_bind)
  # Video configs set both timeouts (configs/tiny.py); the other kinds get
  # distributed.initialize's.
  timeouts = {key: value for key, value in config.get("train", {}).items()
              if key in ("init_timeout_s", "heartbeat_timeout_s")}
  distributed.initialize(settings, **timeouts)

  if kind == "autoencoder":
    train_autoencoder(config, args.workdir, progress=not args.no_progress)
    return 0
  try:
    if kind == "face_encoder":
      train_face_encoder(config, args.workdir, progress=not args.no_progress,
                         profile_steps=args.profile_steps)
      return 0
    # Samples of held-out identities every train.sample_every steps and at the end.
    samples = loop.Hook(functools.partial(write_samples, config, args.workdir),
                        every=config.train.sample_every)
    metrics = trainer.train(config, args.workdir, progress=not args.no_progress,
                            hooks=[samples], profile_steps=args.profile_steps)
  except loop.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Trained to step {metrics['step']} in {args.workdir}"
        + (f" (loss {metrics['loss']:.4f})." if "loss" in metrics else "."))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
