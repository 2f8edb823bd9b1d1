"""A downloaded Wan 2.1 diffusers folder -> a video workdir that train.py and sample.py take.

  python -m idjax.models.wan.convert --diffusers-dir Wan2.1-T2V-1.3B-Diffusers \
      --workdir runs/wan/video [--config configs/wan_1_3b_identity.py] \
      [--config.key=value ...] [--overwrite]

DIR must hold the two folders of the published layout:
  DIR/transformer/config.json + diffusion_pytorch_model*.safetensors (+ its .index.json)
  DIR/vae/config.json + diffusion_pytorch_model.safetensors

OUT is the workdir train.py would have written at step 0 of an adapters-only
run (train.trainable = "adapters"): config.json, and checkpoints/0/state
holding the imported backbone in `params` beside the identity adapters,
initialised as the trainer initialises them (same seed derivation), with
the EMA and the Adam moments of the adapters only. OUT/vae is a copy of
DIR/vae, the run's frozen autoencoder (config.autoencoder_workdir). Then:

  python train.py --workdir OUT [--config.train.steps=...]   # trains the adapters
  python sample.py --workdir OUT --prompt ... --reference a.png --out clip.mp4

The model sizes are the transformer's config.json's: they replace the
config file's backbone sizes, and an explicit --config.model.* override that
contradicts them is a usage error. Every mistake (a missing folder, an
unsupported config, a missing, misnamed or misshapen tensor) is one sentence
and exit 2. OUT is built in a temporary sibling folder and renamed into
place at the end, so a failure leaves neither a partial OUT nor the
temporary folder, and --overwrite replaces an existing OUT only then.
"""

import contextlib
import json
import os
import shutil
import sys
import tempfile

import jax
import numpy as np

from idjax import config_rules, configlib, models, paths
from idjax.models.wan import transformer_weights
from idjax.models.wan.identity_dit import CROSS_ATTN_NORM, EPS, ROPE_MAX_SEQ_LEN, with_backbone
from idjax.models.wan.vae_weights import FrozenWanVAE
from idjax.train import checkpoint, trainer

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "configs", "wan_1_3b_identity.py"
)
VAE_DIR = "vae"  # OUT/vae: the frozen autoencoder of the converted run


def parse_args(argv):
  """-> (config, args, the config keys the command line set explicitly)."""
  p = configlib.ArgumentParser(
      prog="python -m idjax.models.wan.convert", description=__doc__.splitlines()[0]
  )
  p.add_argument(
      "--diffusers-dir",
      required=True,
      help="folder holding transformer/ and vae/ (diffusers format)",
  )
  p.add_argument("--workdir", required=True, help="the video workdir to create")
  p.add_argument(
      "--config",
      default=os.path.normpath(DEFAULT_CONFIG),
      help="config file of the run (default: configs/wan_1_3b_identity.py)",
  )
  p.add_argument("--overwrite", action="store_true", help="replace an existing --workdir")
  known, rest = p.parse_known_args(argv)
  config = configlib.load_config_file(known.config)
  explicit = {
      arg[len("--config.") :].split("=", 1)[0] for arg in rest if arg.startswith("--config.")
  }
  leftover = configlib.parse_overrides(config, rest)
  if leftover:
    raise configlib.UsageError(f"Unrecognised argument {leftover[0]!r}.")
  return config, known, explicit


def source_folders(diffusers_dir) -> tuple[str, str]:
  """(DIR/transformer, DIR/vae), each holding a config.json (else UsageError)."""
  root = os.path.abspath(os.fspath(diffusers_dir))
  if not os.path.isdir(root):
    raise configlib.UsageError(f"--diffusers-dir {root} is not a folder.")
  folders = []
  for name in ("transformer", "vae"):
    folder = os.path.join(root, name)
    if not os.path.isfile(os.path.join(folder, "config.json")):
      raise configlib.UsageError(
          f"--diffusers-dir {root} has no {name}/config.json; expected the diffusers layout "
          "with transformer/ and vae/ folders (config.json and *.safetensors in each)."
      )
    folders.append(folder)
  return folders[0], folders[1]


def imposed_settings(transformer_config: dict, workdir: str) -> dict:
  """{config key: value} that the weights (and the converter's layout) fix.

  The architecture comes from the transformer's config.json; the Wan values
  that WanIdentityDiT does not make configurable must be Wan 2.1's.
  """
  try:
    f = transformer_weights.transformer_fields(transformer_config)
  except ValueError as e:
    raise configlib.UsageError(f"transformer/{e}") from None
  fixed = dict(
      cross_attn_norm=CROSS_ATTN_NORM,
      eps=EPS,
      rope_max_seq_len=ROPE_MAX_SEQ_LEN,
      out_channels=f["in_channels"],
  )
  for key, value in fixed.items():
    if f[key] != value:
      raise configlib.UsageError(
          f"transformer/config.json sets {key}={f[key]!r}; the Wan identity model supports "
          f"only {value!r}."
      )
  return {
      "model.backbone": "wan",
      "model.space": "latent",
      "model.patch_size": tuple(f["patch_size"]),
      "model.num_heads": f["num_heads"],
      "model.width": f["num_heads"] * f["head_dim"],
      "model.depth": f["num_layers"],
      "model.channels": f["in_channels"],
      "model.ffn_dim": f["ffn_dim"],
      "model.text_dim": f["text_dim"],
      "model.freq_dim": f["freq_dim"],
      "train.trainable": "adapters",  # the backbone stays frozen
      "autoencoder_workdir": os.path.join(workdir, VAE_DIR),
  }


def impose(config, settings: dict, explicit: set) -> list[str]:
  """Writes `settings` into `config`; returns 'key: old -> new' for each value
  the config file had otherwise. UsageError for a contradicting explicit override."""
  changed = []
  for key, value in settings.items():
    old = config_rules.lookup(config, key, None)
    same = (
        list(old) == list(value) if isinstance(value, tuple) and old is not None else old == value
    )
    if same:
      continue
    if key in explicit:
      raise configlib.UsageError(
          f"--config.{key}={old!r} contradicts the converted weights, which need {value!r}; "
          "drop the override."
      )
    node = config
    *parents, last = key.split(".")
    for part in parents:
      node = node[part]
    with node.ignore_type():
      node[last] = value
    changed.append(f"{key}: {old!r} -> {value!r}")
  return changed


@contextlib.contextmanager
def staged_folder(workdir: str, overwrite: bool):
  """Yields an empty temporary sibling of `workdir` to build it in; on success
  it becomes `workdir` (replacing an old one only now), on failure it is removed."""
  parent, name = os.path.split(workdir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{name}.converting-", dir=parent)
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  old = None
  if os.path.isdir(workdir) and not os.listdir(workdir):
    os.rmdir(workdir)  # an empty folder the user made for it
  if os.path.exists(workdir):
    if not overwrite:  # made while we converted
      shutil.rmtree(staging, ignore_errors=True)
      raise configlib.UsageError(
          f"--workdir {workdir} appeared during the conversion; "
          "nothing was written (add --overwrite to replace it)."
      )
    old = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=parent)
    os.rename(workdir, os.path.join(old, name))
  os.rename(staging, workdir)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def copy_vae(source: str, target: str) -> None:
  """The diffusers vae/ folder's config and weight files (nothing else)."""
  os.makedirs(target)
  for name in sorted(os.listdir(source)):
    if name == "config.json" or name.endswith((".safetensors", ".safetensors.index.json")):
      shutil.copy2(os.path.join(source, name), os.path.join(target, name))


def write_step0(config, workdir, backbone_params, encoder, autoencoder) -> dict:
  """The TrainState the trainer would save at step 0, with `backbone_params`
  in place of the random backbone, as checkpoints/0, plus config.json.
  Returns parameter counts {backbone, adapters}."""
  model = models.build_model(config.model)
  mesh = trainer.build_mesh(config)
  setup = trainer.make_setup(config, model, encoder, mesh, autoencoder)
  state = setup.init()
  try:
    params = with_backbone(state.params, backbone_params)
  except ValueError as e:
    raise configlib.UsageError(f"{e}") from None
  # In the model's dtypes (model.backbone_param_dtype), which a restore expects.
  params = jax.tree.map(
      lambda value, like: jax.device_put(np.asarray(value, like.dtype), like.sharding),
      params,
      setup.abstract_state.params,
  )
  state = state.replace(params=params)
  manager = checkpoint.make_manager(workdir, config.train)
  try:
    checkpoint.save(manager, state, force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  configlib.save_config(config, os.path.join(workdir, checkpoint.CONFIG_FILE))
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
  adapters = count(state.ema_params)
  return dict(backbone=count(state.params) - adapters, adapters=adapters)


def convert(config, diffusers_dir, workdir, *, explicit=(), overwrite=False, log=print) -> dict:
  """Builds the workdir (module docstring); returns parameter counts.

  Raises UsageError (one sentence) for anything wrong with the inputs,
  having left no trace of `workdir`.
  """
  workdir = paths.check_folder(workdir, "--workdir")
  if os.path.isdir(workdir) and os.listdir(workdir) and not overwrite:
    raise configlib.UsageError(
        f"--workdir {workdir} is not empty; add --overwrite to replace it "
        "(it is replaced only once the conversion succeeded)."
    )
  transformer_dir, vae_dir = source_folders(diffusers_dir)
  path = os.path.join(transformer_dir, "config.json")
  try:
    with open(path) as f:
      transformer_config = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise configlib.UsageError(f"{path} cannot be read ({type(e).__name__}).") from None
  for line in impose(config, imposed_settings(transformer_config, workdir), set(explicit)):
    log(f"Set for the imported weights: {line}")
  config_rules.check(config)
  encoder = trainer.load_face_encoder(config)
  m = config.model
  with staged_folder(workdir, overwrite) as staging:
    copy_vae(vae_dir, os.path.join(staging, VAE_DIR))
    try:
      autoencoder = FrozenWanVAE.from_folder(os.path.join(staging, VAE_DIR))
      _, backbone = transformer_weights.load_transformer(
          transformer_dir, param_dtype=m.backbone_param_dtype
      )
      trainer.check_latent_space(config, autoencoder)
    except ValueError as e:  # WeightFileError included: one sentence naming the tensor
      raise configlib.UsageError(f"{e}") from None
    counts = write_step0(config, staging, backbone, encoder, autoencoder)
  return counts


@configlib.exit_on_usage_error
def main(argv=None):
  config, args, explicit = parse_args(sys.argv[1:] if argv is None else argv)
  counts = convert(
      config, args.diffusers_dir, args.workdir, explicit=explicit, overwrite=args.overwrite
  )
  workdir = os.path.abspath(args.workdir)
  print(
      f"Wrote {workdir}: the Wan backbone ({counts['backbone']:,} parameters, frozen) and "
      f"fresh identity adapters ({counts['adapters']:,}) at step 0. Train the adapters with: "
      f"python train.py --workdir {workdir}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
