"""An attribute probe: does a generated face show its identity's attributes?

A small CNN, trained on real face crops of TRAINING identities of the
synthetic world, predicts each nameable attribute of `IdentityParams`
(skin, hair colour, hair style, eye colour, glasses, beard, freckles) from a
face crop. It shares nothing with the two face encoders (own architecture,
own identities, own renders, own seed), so it cannot be satisfied by
whatever fools them. Its accuracy on generated crops is compared with its
accuracy on real crops of the same held-out identities and with chance.

The probe is trained once (about a minute on a 2-core CPU) and cached in a
folder: `probe.json` (config, class names, held-out report) and
`params.npz` (flattened params; no pickle). `load_or_train` retrains when the
cached config differs from the requested one, or the world's attribute classes
from those it was trained on.
"""

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from idjax import rng
from idjax.data import world
from idjax.eval import realism
from idjax.face.crop import crop_and_resize
from idjax.face.boxes import context_boxes, jittered_boxes

CONFIG_FILE = "probe.json"
PARAMS_FILE = "params.npz"

# Attribute -> class values, in `IdentityParams.attributes()` terms.
CLASSES = {
    "skin": tuple(name for name, _ in world.SKIN_TONES),
    "hair_colour": tuple(name for name, _ in world.HAIR_COLOURS),
    "hair_style": tuple(world.HAIR_STYLES),
    "eyes": tuple(name for name, _ in world.EYE_COLOURS),
    "glasses": (False, True),
    "beard": tuple(world.BEARDS),
    "freckles": (False, True),
}
ATTRIBUTES = tuple(CLASSES)
# The attributes averaged into "mean": those visible in a 32-px face crop.
# Freckles (a few one-pixel dots) are predicted and reported, but even on
# real crops the probe does not beat always guessing "no freckles".
MEAN_ATTRIBUTES = ("skin", "hair_colour", "hair_style", "eyes", "glasses", "beard")


def attribute_labels(identity_ids) -> np.ndarray:
  """Identity ids [N] -> int32 [N, A]: each attribute's class index (A = len(ATTRIBUTES))."""
  rows = []
  for i in np.asarray(identity_ids).reshape(-1):
    attrs = world.identity_params(int(i)).attributes()
    rows.append([CLASSES[a].index(attrs[a]) for a in ATTRIBUTES])
  return np.asarray(rows, np.int32).reshape(-1, len(ATTRIBUTES))


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """What a probe is trained on and how (the cache key of a probe folder)."""
  crop_size: int = 32                 # S: crops [N, S, S, 3]; evaluation crops use the same S
  widths: tuple[int, ...] = (32, 64, 128)  # conv channels; every conv after the first halves
  stem_stride: int = 2                # the first conv's stride
  hidden: int = 128
  # Attributes belong to identities, so identities (not frames) are the sample
  # size: 1000 identities x 4 frames overfit (held-out 0.74), 4000 x 1 do not (0.82).
  num_identities: int = 4000          # training identities (train split)
  identity_start: int = 3000          # past the face encoders' pools (0..1499, 1500..2999)
  resolutions: tuple[int, ...] = (32, 64)      # clip sides (the eval's), alternating by identity
  frames_per_clip: int = 1
  render_seed: int = 4000
  context: float = 1.25               # cached crops hold the box enlarged by this
  box_jitter: float = 0.05            # train-time box shift / scale, fraction of the side
  steps: int = 600
  batch_size: int = 128
  lr: float = 3e-3
  weight_decay: float = 1e-4
  seed: int = 0
  heldout_identities: int = 200       # held-out split, for the report only
  heldout_seed: int = 4100

  def to_dict(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d) -> "ProbeConfig":
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
      raise ValueError(f"unknown probe config keys {sorted(unknown)}.")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class AttributeProbe(nn.Module):
  """Face crops -> concatenated per-attribute logits.

  Convolutions keep where a feature sits (flatten, no pooling): eyes, brows,
  glasses and beard differ by position in the box, not only by colour.
  """
  num_classes: Sequence[int]
  widths: Sequence[int] = (32, 64, 128)
  stem_stride: int = 2
  hidden: int = 128

  @nn.compact
  def __call__(self, crops):
    """crops float [N, S, S, 3] in [-1, 1] -> logits float32 [N, sum(num_classes)]."""
    x = crops
    for i, width in enumerate(self.widths):
      stride = self.stem_stride if i == 0 else 2
      x = nn.relu(nn.Conv(width, (3, 3), strides=(stride, stride), name=f"conv{i}")(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    return nn.Dense(int(sum(self.num_classes)), name="logits")(x)


def _split_logits(logits):
  """[N, sum(classes)] -> list over attributes of [N, classes_a]."""
  cuts = np.cumsum([len(CLASSES[a]) for a in ATTRIBUTES])[:-1]
  return jnp.split(logits, cuts, axis=-1)


def render_crops(identity_ids, split: str, resolutions, frames_per_clip: int, seed: int,
                 size: int, context: float = 1.0):
  """Face crops of real clips, one clip per identity, identity n rendered at
  `resolutions[n % len(resolutions)]` (identities, not renders, are what a
  probe needs many of).

  Returns:
    (uint8 crops [M, P, P, 3] with P = round(size * context), each the face
    box enlarged by `context`; int32 labels [M, A]), M = ids x frames_per_clip.
  """
  ids = np.asarray(identity_ids).reshape(-1)
  pixels = int(round(size * context))
  crops = np.zeros((len(ids) * frames_per_clip, pixels, pixels, 3), np.uint8)
  for k, resolution in enumerate(resolutions):
    cfg = world.WorldConfig(resolution=int(resolution), num_frames=frames_per_clip,
                            num_references=1, reference_resolution=8)
    mine = np.arange(k, len(ids), len(resolutions))
    if not len(mine):
      continue
    clips = [world.render_clip(cfg, seed, int(n), split=split, identity_ids=[int(ids[n])])
             for n in mine]
    frames = np.concatenate([c["frames"] for c in clips])
    boxes = context_boxes(np.concatenate([c["boxes"][0] for c in clips]), context)
    rows = (mine[:, None] * frames_per_clip + np.arange(frames_per_clip)).reshape(-1)
    crops[rows] = realism.crop_uint8(frames, boxes, pixels)
  return crops, np.repeat(attribute_labels(ids), frames_per_clip, axis=0)


def accuracy(predictions, labels) -> dict:
  """int [N, A] predictions and labels -> {attribute: accuracy, "mean": over MEAN_ATTRIBUTES}."""
  hits = np.asarray(predictions) == np.asarray(labels)
  out = {a: float(hits[:, i].mean()) for i, a in enumerate(ATTRIBUTES)}
  out["mean"] = float(np.mean([out[a] for a in MEAN_ATTRIBUTES]))
  return out


def chance(labels) -> dict:
  """Majority-class accuracy of labels [N, A]: the same keys as `accuracy`."""
  labels = np.asarray(labels)
  out = {a: float(np.bincount(labels[:, i]).max() / len(labels)) for i, a in enumerate(ATTRIBUTES)}
  out["mean"] = float(np.mean([out[a] for a in MEAN_ATTRIBUTES]))
  return out


class Probe:
  """A trained attribute probe: config + params + a jitted predict.

  Attributes:
    config: ProbeConfig.
    params: the AttributeProbe params pytree (NumPy arrays).
    report: dict of what training measured (seconds, held-out accuracy).
  """

  def __init__(self, config: ProbeConfig, params, report=None):
    self.config = config
    self.params = params
    self.report = report or {}
    self.module = _module(config)
    module = self.module

    def predict(params, crops):
      logits = module.apply({"params": params}, crops.astype(jnp.float32) / 127.5 - 1.0)
      return jnp.stack([jnp.argmax(group, axis=-1) for group in _split_logits(logits)], axis=-1)

    self._predict = jax.jit(predict)

  @property
  def crop_size(self) -> int:
    return self.config.crop_size

  def predict(self, crops, batch_size: int = 256) -> np.ndarray:
    """uint8 crops [N, S, S, 3] (S = crop_size) -> int32 class indices [N, A]."""
    crops = np.asarray(crops)
    s = self.crop_size
    if crops.shape[1:] != (s, s, 3):
      raise ValueError(f"the probe takes crops [N, {s}, {s}, 3], got {crops.shape}.")
    out = []
    size = min(batch_size, 1 << max(len(crops) - 1, 0).bit_length())
    for lo in range(0, len(crops), size):
      chunk = crops[lo:lo + size]
      padded = np.zeros((size,) + crops.shape[1:], crops.dtype)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(self._predict(self.params, jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0, len(ATTRIBUTES)), np.int32)

  def predict_frames(self, frames, boxes) -> np.ndarray:
    """uint8 frames [N, H, W, 3] with face boxes [N, 4] -> int32 [N, A]."""
    return self.predict(realism.crop_uint8(frames, boxes, self.crop_size))

  def save(self, workdir):
    """Writes probe.json and params.npz into `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    flat = flax.traverse_util.flatten_dict(self.params, sep="/")
    np.savez(os.path.join(workdir, PARAMS_FILE), **{k: np.asarray(v) for k, v in flat.items()})
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      json.dump(dict(config=self.config.to_dict(),
                     classes=_class_names(),
                     report=self.report), f, indent=2)

  @classmethod
  def from_workdir(cls, workdir) -> "Probe":
    """Loads a folder written by `save`.

    FileNotFoundError if there is none; ValueError if it was trained on other
    attribute classes than the world's today (its outputs would mean other things).
    """
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
      meta = json.load(f)
    if meta.get("classes") != _class_names():
      raise ValueError(f"the probe in {workdir} predicts other attribute classes than the world's.")
    with np.load(os.path.join(workdir, PARAMS_FILE), allow_pickle=False) as z:
      params = flax.traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep="/")
    return cls(ProbeConfig.from_dict(meta["config"]), params, meta.get("report"))


def _class_names() -> dict:
  return {a: [str(c) for c in CLASSES[a]] for a in ATTRIBUTES}


def _module(config: ProbeConfig) -> AttributeProbe:
  return AttributeProbe(num_classes=tuple(len(CLASSES[a]) for a in ATTRIBUTES),
                        widths=tuple(config.widths), stem_stride=config.stem_stride,
                        hidden=config.hidden)


def fit(config: ProbeConfig, images, labels):
  """Trains the probe on cached context crops.

  Args:
    images: uint8 [M, P, P, 3] context crops (`render_crops(..., context=config.context)`).
    labels: int32 [M, A].
  Returns:
    (params, final mean cross-entropy over attributes).
  """
  module = _module(config)
  s = config.crop_size
  # Non-partitionable threefry compiles in < 1 s on CPU (vs ~17 s); the probe
  # is initialised on one device, where the difference does not matter.
  with jax.threefry_partitionable(False):
    params = jax.jit(module.init)(rng.derive(config.seed, 0, "probe_init"),
                                  jnp.zeros((1, s, s, 3)))["params"]
  warmup = min(30, config.steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup,
                                                max(config.steps, warmup + 1))
  optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
  opt_state = optimizer.init(params)
  images, labels = jnp.asarray(images), jnp.asarray(labels)

  def loss_fn(params, crops, batch_labels):
    logits = _split_logits(module.apply({"params": params}, crops))
    losses = [optax.softmax_cross_entropy_with_integer_labels(group, batch_labels[:, i]).mean()
              for i, group in enumerate(logits)]
    return sum(losses) / len(losses)

  @jax.jit
  def train_step(params, opt_state, index, boxes, flip):
    crops = crop_and_resize(images[index], boxes, s) / 127.5 - 1.0
    # Attributes are left-right symmetric, so a mirrored face is a free sample.
    crops = jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)
    loss, grads = jax.value_and_grad(loss_fn)(params, crops, labels[index])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  loss = None
  for step in range(config.steps):
    generator = np.random.default_rng([config.seed, step, rng.purpose_id("probe_batch")])
    index = generator.integers(0, len(labels), config.batch_size)
    boxes = jittered_boxes(generator, config.batch_size, config.context, config.box_jitter)
    flip = generator.uniform(size=config.batch_size) < 0.5
    params, opt_state, loss = train_step(params, opt_state, index, boxes, flip)
  return jax.tree.map(np.asarray, params), float(loss)


def train_probe(config: ProbeConfig = ProbeConfig()) -> Probe:
  """Renders training crops, fits, and measures held-out accuracy per resolution."""
  start = time.perf_counter()
  ids = world.split_identities("train", config.num_identities, config.identity_start)
  images, labels = render_crops(ids, "train", config.resolutions, config.frames_per_clip,
                                config.render_seed, config.crop_size, config.context)
  render_s = time.perf_counter() - start
  start = time.perf_counter()
  params, loss = fit(config, images, labels)
  train_s = time.perf_counter() - start
  probe = Probe(config, params)
  heldout = world.split_identities("heldout", config.heldout_identities)
  report = dict(render_s=render_s, train_s=train_s, final_loss=loss,
                train_crops=int(len(images)), heldout_accuracy={}, heldout_chance={})
  for resolution in config.resolutions:
    crops, truth = render_crops(heldout, "heldout", [resolution], 2, config.heldout_seed,
                                config.crop_size)
    report["heldout_accuracy"][str(resolution)] = accuracy(probe.predict(crops), truth)
    report["heldout_chance"][str(resolution)] = chance(truth)
  probe.report = report
  return probe


def describe(probe: Probe) -> str:
  """One line per clip resolution: held-out real accuracy per attribute."""
  lines = []
  for res, acc in probe.report.get("heldout_accuracy", {}).items():
    per = ", ".join(f"{a} {acc[a]:.2f}" for a in ATTRIBUTES)
    lines.append(f"  held-out real crops of {res}x{res} clips: mean {acc['mean']:.3f} ({per}); "
                 f"chance {probe.report['heldout_chance'][res]['mean']:.3f}")
  return "\n".join(lines)


def load_or_train(workdir, config: ProbeConfig = ProbeConfig(), log=print) -> Probe:
  """The probe cached in `workdir`, or a new one trained and saved there.

  A cached probe whose config differs from `config` is retrained (and the
  folder overwritten), so a changed crop size can never be evaluated with a
  stale probe.
  """
  if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    try:
      probe = Probe.from_workdir(workdir)
    except ValueError as e:
      log(f"attribute probe: {e} Retraining.")
    else:
      if probe.config == config:
        log(f"attribute probe: loaded from {workdir} (delete the folder to retrain)")
        return probe
      log(f"attribute probe: the one in {workdir} was trained with another config; retraining")
  log(f"attribute probe: training on real {config.crop_size}x{config.crop_size} face crops of "
      f"{config.num_identities} training identities (about a minute) -> {workdir}")
  probe = train_probe(config)
  probe.save(workdir)
  log(f"attribute probe: rendered in {probe.report['render_s']:.1f}s, trained in "
      f"{probe.report['train_s']:.1f}s, saved to {workdir}\n{describe(probe)}")
  return probe
