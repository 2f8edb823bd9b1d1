"""Helpers shared by the test modules (test modules import from here, never
from each other): tiny configs, random-weight models and encoders, batches,
workdirs, and runners for the entry points.

Named helpers.py, not test_*.py, so that pytest collects no tests from it.
"""

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from idjax import configlib, models, sharding, weight_files
from idjax.autoencoder.frozen import FrozenAutoencoder
from idjax.autoencoder.model import autoencoder_from_config
from idjax.data import world
from idjax.eval import benchmark
from idjax.eval import probe as probe_lib
from idjax.face.encoder import encoder_from_config
from idjax.face.frozen import FrozenFaceEncoder, build_encoder, save_face_encoder
from idjax.models import blocks
from idjax.train import checkpoint, trainer
from idjax.train.state import create_state, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the model alone (idjax.models on a model config) -----------------------


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(
      dict(
          channels=3,
          patch_size=(1, 4, 4),
          width=32,
          depth=2,
          num_heads=2,
          mlp_ratio=2.0,
          text_width=32,
          text_layers=1,
          text_vocab_size=64,
          text_len=6,
          num_identity_tokens=4,
          identity_layers=1,
          reference_mode="mean",
          max_characters=2,
          use_separator=True,
          identity_routing="hard",
          temporal_causal=False,
          attention_impl="xla",
          scan_blocks=True,
          remat_policy="none",
          prediction="velocity",
          reference_canvas=False,
          canvas_alpha=False,
          absolute_position=False,
          param_dtype="float32",
          dtype="float32",
      )
  )
  cfg.update(overrides)
  return cfg


def randomize(params, seed=1, scale=0.3):
  """Replaces every parameter by N(0, scale^2) noise (keeping logical boxes).

  Zero-initialised gates and output projections make a fresh model the
  identity map; tests of what mixes with what need every path switched on.
  """
  # NumPy, not jax.random: one threefry kernel per leaf costs far more
  # compile time than the model itself on 2 CPU cores.
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  new = [jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype) for leaf in leaves]
  return jax.tree.unflatten(treedef, new)


def random_inputs(
    cfg,
    *,
    batch=2,
    frames=4,
    size=16,
    chars=2,
    refs=3,
    seed=0,
    face_dim=8,
    feat_dim=8,
    cells=4,
    masks="boxes",
):
  """Random (x, t, text_tokens, identity, strength) with face masks as boxes.

  Character c's face is a square in a different quadrant, so faces do not
  overlap and some tokens are outside every face.
  """
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, frames, size, size, cfg.channels)).astype(np.float32)
  t = rng.uniform(size=(batch,)).astype(np.float32)
  tokens = rng.integers(1, 40, size=(batch, cfg.text_len)).astype(np.int32)
  tokens[:, cfg.text_len // 2 :] = 0
  face_masks = None
  if masks == "boxes":
    face_masks = np.zeros((batch, chars, frames, size, size), np.float32)
    half = size // 2
    for c in range(chars):
      y0, x0 = (c // 2) * half, (c % 2) * half
      face_masks[:, c, :, y0 : y0 + half, x0 : x0 + half] = 1.0
  identity = models.IdentityInputs(
      ref_embeddings=jnp.asarray(rng.normal(size=(batch, chars, refs, face_dim)), jnp.float32),
      ref_features=jnp.asarray(rng.normal(size=(batch, chars, refs, cells, feat_dim)), jnp.float32),
      ref_valid=jnp.ones((batch, chars, refs), bool),
      char_valid=jnp.ones((batch, chars), bool),
      face_masks=None if face_masks is None else jnp.asarray(face_masks),
  )
  return (
      jnp.asarray(x),
      jnp.asarray(t),
      jnp.asarray(tokens),
      identity,
      jnp.full((batch,), 0.8, jnp.float32),
  )


def init_random(model, args, seed=1, scale=0.3):
  """Random params of the right shapes, without compiling `init`."""
  params = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  return randomize(nn.meta.unbox(params), seed, scale)


def model_setup(frames=4, size=16, **overrides):
  """(model, jitted apply, random params, random inputs) for a tiny config.

  Cached on the full config, so tests on the same config share one
  compilation (the tests run on 2 shared CPU cores).
  """
  return _model_setup(frames, size, tuple(sorted(tiny_model_config(**overrides).items())))


@functools.cache
def _model_setup(frames, size, items):
  cfg = tiny_model_config(**dict(items))
  model = models.build_model(cfg)
  args = random_inputs(cfg, frames=frames, size=size)
  params = init_random(model, args)
  return model, jax.jit(model.apply), params, args


# --- configs/tiny.py shrunk, random-weight encoders, sampling workdirs -------


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_sample_config():
  """configs/tiny.py shrunk to compile and run in seconds."""
  cfg = _load("tiny")
  cfg.data.resolution = 16
  cfg.data.num_frames = 2
  cfg.sample.num_frames = 2
  cfg.data.reference_resolution = 16
  cfg.data.num_references = 2
  cfg.model.width = 32
  cfg.model.depth = 1
  cfg.model.num_heads = 2
  cfg.model.text_width = 32
  cfg.model.text_layers = 1
  cfg.model.num_identity_tokens = 4
  cfg.model.identity_layers = 1
  cfg.sample.steps = 2
  return cfg


def random_params(abstract, seed):
  """NumPy params for a tree of shapes: no compilation (eager or jitted init of
  even a tiny model takes tens of seconds on the shared 2-core CPU).
  Kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1), biases ~ N(0, 0.1)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if leaf.ndim >= 2 and "scale" not in name:
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
    base = 1.0 if "scale" in name else 0.0
    return (base + rng.normal(0, 0.1, leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def tiny_face_encoder(seed=1):
  """The real FaceEncoder, tiny, with random params."""
  fcfg = _load("face_encoder")
  fcfg.input_size = 16
  fcfg.width = 4
  fcfg.num_stages = 2
  fcfg.embed_dim = 16
  fcfg.groups = 2
  module = build_encoder(fcfg)
  abstract = jax.eval_shape(
      lambda: nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"]
  )
  return FrozenFaceEncoder(fcfg, random_params(abstract, seed))


def tiny_params(cfg, fe, seed=0):
  """Random params for the tiny model (zero-initialised layers too, so every path acts)."""
  args = models.dummy_inputs(
      cfg.model,
      batch=1,
      frames=1,
      height=cfg.data.resolution,
      width=cfg.data.resolution,
      text_len=cfg.model.text_len,
      num_chars=cfg.model.max_characters,
      num_refs=cfg.data.num_references,
      face_embed_dim=fe.embed_dim,
      face_feature_dim=fe.feature_dim,
      face_cells=fe.feature_cells,
  )
  model = models.build_model(cfg.model)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *args))["params"])
  return random_params(abstract, seed)


@functools.cache
def tiny_parts():
  """(tiny_sample_config(), random params of its model, tiny_face_encoder()), made once."""
  cfg = tiny_sample_config()
  fe = tiny_face_encoder()
  return cfg, tiny_params(cfg, fe), fe


def one_device_mesh():
  return sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])


def make_workdir(root, with_eval_encoder=True):
  """A video workdir in the trainer's format (config.json + orbax checkpoint)
  whose config points at face-encoder workdirs next to it."""
  cfg, params, fe = tiny_parts()
  cfg = cfg.copy_and_resolve_references()
  os.makedirs(root, exist_ok=True)
  save_face_encoder(os.path.join(root, "face"), fe.config, fe.params)
  cfg.face_encoder_workdir = os.path.join(root, "face")
  cfg.eval_encoder_workdir = os.path.join(root, "face_eval")
  if with_eval_encoder:
    other = tiny_face_encoder(seed=7)
    save_face_encoder(cfg.eval_encoder_workdir, other.config, other.params)
  video = os.path.join(root, "video")
  os.makedirs(video, exist_ok=True)
  configlib.save_config(cfg, os.path.join(video, checkpoint.CONFIG_FILE))
  tx, _ = make_optimizer(cfg.train)
  manager = checkpoint.make_manager(video, cfg.train)
  checkpoint.save(manager, create_state(params, tx, 0), force=True)
  manager.wait_until_finished()
  manager.close()
  return video


def random_refs(rng, n, size=16):
  return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


# --- a tiny autoencoder for the latent space ----------------------------------------


def tiny_autoencoder(seed=3, temporal_kernel=2, decoder_blocks=(1, 1)):
  """The real autoencoder module, tiny (4x spatial, 4 latent channels), random params."""
  acfg = configlib.load_config_file("configs/autoencoder.py")
  m = acfg.model
  m.widths, m.encoder_blocks, m.decoder_blocks = (4, 8), (1, 1), decoder_blocks
  m.latent_channels, m.patch, m.temporal_kernel, m.groups = 4, 2, temporal_kernel, 2
  module = autoencoder_from_config(m)
  abstract = jax.eval_shape(
      lambda: module.init(
          jax.random.key(0), jnp.zeros((1, 1, 16, 16, 3)), jnp.zeros((1, 1, 4, 4, 4))
      )
  )["params"]
  params = random_params(abstract, seed)
  return FrozenAutoencoder(acfg, params, np.full(4, 0.1, np.float32), np.full(4, 2.0, np.float32))


def latent_config(pixel_config, autoencoder):
  config = pixel_config.copy_and_resolve_references()
  config.model.space = "latent"
  config.model.channels = autoencoder.latent_channels
  config.model.patch_size = (1, 1, 1)
  config.train.id_loss_latent_window = 3
  return config


# --- the train step on a stand-in model ---------------------------------------

B, C, T, H, K, L = 8, 1, 4, 16, 2, 8


def _dense(features, names, name):
  return nn.Dense(
      features,
      name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[-1:]),
  )


class TinyVideoModel(nn.Module):
  """VideoDiT's interface on a per-pixel MLP conditioned on t, text and identity."""

  width: int = 16
  reference_canvas: bool = False
  canvas_alpha: bool = False

  @nn.compact
  def __call__(
      self, x, t, text_tokens, identity=None, identity_strength=None, *, deterministic=True
  ):
    channels = x.shape[-1]
    if self.reference_canvas:
      canvas = jnp.zeros(x.shape[:-1] + (channels + int(self.canvas_alpha),), x.dtype)
      if identity is not None and identity.ref_canvas is not None:
        canvas = identity.ref_canvas * identity_strength[:, None, None, None, None]
      x = jnp.concatenate([x, canvas], axis=-1)
    h = _dense(self.width, ("conv_in", "embed"), "embed_in")(x)
    h = nn.with_logical_constraint(h, ("batch", "frames", None, None, "embed"))
    # t [B], or per frame [B, T] (clean context at 0).
    time = _dense(self.width, (None, "embed"), "time")(t[..., None])
    text = jnp.mean((text_tokens > 0).astype(jnp.float32) * text_tokens, axis=1, keepdims=True)
    cond = _dense(self.width, (None, "embed"), "text")(text / 10.0)
    if identity is not None:
      valid = (identity.ref_valid & identity.char_valid[..., None]).astype(jnp.float32)
      ref = jnp.sum(identity.ref_embeddings * valid[..., None], axis=(1, 2))
      ref = ref / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1.0)[:, None]
      cond = cond + identity_strength[:, None] * _dense(self.width, (None, "embed"), "id")(ref)
      mask = jnp.max(identity.face_masks, axis=1)[..., None]  # [B, T, H, W, 1]
      h = h * (1.0 + mask)
    h = nn.gelu(h + blocks.per_token(time, h) + cond[:, None, None, None, :])
    h = nn.gelu(_dense(2 * self.width, ("embed", "mlp"), "hidden")(h))
    return _dense(channels, ("mlp", None), "out")(h)


def tiny_train_config():
  config = configlib.load_config_file("configs/tiny.py")
  d = config.data
  d.resolution, d.num_frames, d.reference_resolution = H, T, H
  d.text_len, d.num_references, d.max_characters = L, K, C
  m = config.model
  m.width, m.depth, m.num_heads, m.text_width, m.text_layers = 32, 1, 2, 32, 1
  m.num_identity_tokens, m.identity_layers = 4, 1
  tc = config.train
  tc.batch_size, tc.steps, tc.warmup_steps, tc.lr = B, 6, 2, 1e-2
  tc.id_loss_max_t, tc.id_loss_frames = 0.9, 3
  tc.log_every, tc.checkpoint_every = 1, 3
  return config


def tiny_encoder():
  fcfg = ml_collections.ConfigDict(
      dict(
          kind="face_encoder",
          architecture="resnet",
          input_size=8,
          width=4,
          num_stages=2,
          blocks_per_stage=1,
          groups=2,
          embed_dim=8,
      )
  )
  module = encoder_from_config(fcfg)
  params = nn.unbox(module.init(jax.random.key(7), jnp.zeros((1, 8, 8, 3))))["params"]
  return FrozenFaceEncoder(fcfg, params)


def numpy_batch(step, frames_dtype=np.uint8):
  """A deterministic batch of `B` examples for `step` (indices step*B ...)."""
  rng = np.random.default_rng(step)
  frames = rng.integers(0, 256, (B, T, H, H, 3), dtype=np.uint8)
  return dict(
      frames=frames if frames_dtype == np.uint8 else (frames / 127.5 - 1).astype(frames_dtype),
      boxes=np.tile(np.array([0.2, 0.2, 0.8, 0.8], np.float32), (B, C, T, 1)),
      identity_ids=np.zeros((B, C), np.int32),
      character_valid=np.ones((B, C), bool),
      references=rng.integers(0, 256, (B, C, K, H, H, 3), dtype=np.uint8),
      reference_valid=np.ones((B, C, K), bool),
      reference_mattes=np.ones((B, C, K, H, H), np.uint8),
      text_tokens=rng.integers(0, 20, (B, L)).astype(np.int32),
      index=np.arange(step * B, (step + 1) * B, dtype=np.int32),
  )


def put_batch(batch, mesh, rules=sharding.DEFAULT_RULES):
  return {
      k: jax.device_put(v, sharding.batch_sharding(mesh, np.ndim(v), rules))
      for k, v in batch.items()
  }


class FakeBatches:
  """`batch_at(step)` like idjax.data.pipeline.GlobalBatches, from numpy_batch."""

  def __init__(self, mesh, nan_steps=()):
    self.mesh, self.nan_steps = mesh, set(nan_steps)

  def batch_at(self, step):
    batch = numpy_batch(step, np.float32)
    if step in self.nan_steps:
      batch["frames"][0, 0, 0, 0, 0] = np.nan
    return put_batch(batch, self.mesh)


def mesh_for(config, sizes):
  full = {**dict(data=1, fsdp=1, tensor=1, sequence=1), **sizes}
  config.mesh = ml_collections.ConfigDict(full)
  return trainer.build_mesh(config, jax.devices()[: int(np.prod(list(full.values())))])


def one_step(config, model, encoder, sizes, batch=None):
  mesh = mesh_for(config, sizes)
  setup = trainer.make_setup(config, model, encoder, mesh)
  state = setup.init()
  batch = put_batch(numpy_batch(0) if batch is None else batch, mesh)
  new_state, metrics = setup.run_step(state, batch)
  return jax.device_get(new_state), jax.device_get(metrics)


def run_trainer(config, workdir, encoder, **kw):
  """trainer.train with the stand-in model and batches on a (data=2, fsdp=4) mesh."""
  mesh = mesh_for(config, dict(data=2, fsdp=4))
  return trainer.train(
      config,
      str(workdir),
      model=TinyVideoModel(),
      encoder=encoder,
      batches=kw.pop("batches", FakeBatches(mesh)),
      progress=False,
      **kw,
  )


def saved_state(workdir, step=None):
  """The saved TrainState tree of `step` (default: the latest) as host arrays."""
  manager = checkpoint.open_manager(workdir)
  step = manager.latest_step() if step is None else step
  tree = jax.device_get(checkpoint.restore_tree(manager, step))
  manager.close()
  return tree


# --- train.py as a user runs it ------------------------------------------------


def run_train(*args, env=None, **kw):
  """train.py ARGS in a subprocess from the repository root (CompletedProcess, text)."""
  return subprocess.run(
      [sys.executable, "train.py", *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      env=env,
      **kw,
  )


def run_module(module, *args, timeout=300):
  """`python -m MODULE ARGS` in a subprocess from the repository root, on CPU."""
  return subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=timeout,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def error_lines(proc):
  """The `error: ...` lines of a finished process's stderr."""
  return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def write_tiny_face_encoder(path):
  """A random-weight face encoder in a workdir (the real module, untrained)."""
  code = (
      "import jax, jax.numpy as jnp, flax.linen as nn, ml_collections;"
      "from idjax.face.encoder import encoder_from_config;"
      "from idjax.face.frozen import save_face_encoder;"
      "c = ml_collections.ConfigDict(dict(kind='face_encoder', architecture='resnet',"
      " input_size=8, width=4, num_stages=2, blocks_per_stage=1, groups=2, embed_dim=8));"
      "m = encoder_from_config(c);"
      "p = nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))['params'];"
      f"save_face_encoder({str(path)!r}, c, p)"
  )
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


# train.py arguments that shrink configs/tiny.py to compile and run in seconds.
TINY_TRAIN_ARGS = [
    "--config.data.resolution=16",
    "--config.data.reference_resolution=16",
    "--config.data.num_frames=4",
    "--config.data.text_len=8",
    "--config.data.num_references=2",
    "--config.model.width=32",
    "--config.model.depth=1",
    "--config.model.num_heads=2",
    "--config.model.mlp_ratio=2.0",
    "--config.model.text_width=32",
    "--config.model.text_layers=1",
    "--config.model.num_identity_tokens=4",
    "--config.model.identity_layers=1",
    "--config.train.batch_size=2",
    "--config.train.id_loss_frames=2",
    "--config.mesh.data=1",
    "--no-progress",
]


# --- the eval protocol ------------------------------------------------------------


class RealClipGenerator:
  """Stands in for Generator: returns each identity's own real clip (refs given)
  or the next identity's clip (text only), so FaceSim must hit ceiling / floor."""

  def __init__(self, config):
    self.config = config

  def generate(self, prompts, references, num_frames, seed, layout, progress, **_):
    cfg = benchmark.world_config(self.config, num_frames)
    ids = world.split_identities("heldout", len(prompts) + 1)
    ids = ids[np.random.default_rng([seed, 0xE7A1]).permutation(len(ids))]
    frames = []
    for i, refs in enumerate(references):
      j = i if refs else i + 1
      frames.append(
          world.render_clip(cfg, seed, j, split="heldout", identity_ids=[ids[j]])["frames"]
      )
    return dict(frames=np.stack(frames))


def write_random_probe(path):
  """A random-weight attribute probe of the default config, saved to `path`
  (where `python -m idjax.eval` looks first, so nothing is trained)."""
  config = probe_lib.ProbeConfig()
  module = probe_lib.AttributeProbe(
      num_classes=tuple(len(probe_lib.CLASSES[a]) for a in probe_lib.ATTRIBUTES),
      widths=config.widths,
      stem_stride=config.stem_stride,
      hidden=config.hidden,
  )
  crops = jnp.zeros((1, config.crop_size, config.crop_size, 3))
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), crops))
  probe_lib.Probe(config, random_params(abstract["params"], 5)).save(path)


# --- Wan 2.1 fixtures -------------------------------------------------------------


def wan_diffusers_dir(root, channels=4):
  """DIR/transformer and DIR/vae from the committed tiny fixtures, in the
  published diffusers layout: what `python -m idjax.models.wan.convert` reads.

  The fixture DiT has 16 latent channels and the fixture VAE 4 (z_dim), so
  the pair as committed (`channels=None`) is a mismatch; by default the DiT
  keeps the first `channels` of its patch-embedding inputs and of its
  outputs, which makes it the VAE's.
  """
  fixtures = os.path.join(ROOT, "tests", "fixtures")
  source = os.path.join(fixtures, "wan_dit", "transformer")
  target = root / "transformer"
  shutil.copytree(source, target)
  if channels is not None:
    config = weight_files.read_diffusers_folder(source)[0]
    c, (pt, ph, pw) = config["in_channels"], config["patch_size"]
    cut = {
        "patch_embedding.weight": lambda w: w[:, :channels],
        "proj_out.weight": lambda w: w.reshape(pt * ph * pw, c, -1)[:, :channels].reshape(
            pt * ph * pw * channels, -1
        ),
        "proj_out.bias": lambda b: b.reshape(pt * ph * pw, c)[:, :channels].reshape(-1),
    }
    for name in os.listdir(target):
      if name.endswith(".safetensors"):
        tensors = {k: np.array(v) for k, v in weight_files.read_safetensors(target / name).items()}
        if set(cut) & set(tensors):
          tensors.update({k: fn(tensors[k]) for k, fn in cut.items() if k in tensors})
          weight_files.write_safetensors(target / name, tensors)
    config.update(in_channels=channels, out_channels=channels)
    with open(target / "config.json", "w") as f:
      json.dump(config, f)
  shutil.copytree(os.path.join(fixtures, "wan_vae", "vae"), root / "vae")
  return root


def small_wan_model(model_config, **overrides):
  """configs/wan_tiny.py's model section shrunk to compile in seconds."""
  m = model_config.copy_and_resolve_references()
  m.update(
      dict(
          channels=3,
          patch_size=(1, 4, 4),
          width=32,
          depth=2,
          num_heads=2,
          ffn_dim=48,
          text_dim=16,
          freq_dim=16,
          text_len=6,
          num_identity_tokens=4,
          identity_layers=1,
          max_characters=2,
      )
  )
  m.update(overrides)
  return m


def converted_wan_workdir(root, args):
  """A tiny face encoder in ROOT/face, the committed fixtures as a diffusers
  folder in ROOT/diffusers, converted to the video workdir ROOT/video with
  the converter's `args` (plus that face encoder): dict(root, source, out,
  args), args as given to the converter."""
  from idjax.models.wan import convert

  encoder = tiny_face_encoder()
  save_face_encoder(str(root / "face"), encoder.config, encoder.params)
  source = wan_diffusers_dir(root / "diffusers")
  out = root / "video"
  args = list(args) + [f"--config.face_encoder_workdir={root / 'face'}"]
  assert convert.main(["--diffusers-dir", str(source), "--workdir", str(out), *args]) == 0
  return dict(root=root, source=source, out=out, args=args)
