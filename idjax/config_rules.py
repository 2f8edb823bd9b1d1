"""One validation pass over a config, before any device work.

Every rule is one line of a table: a key and what its value must be
(`("train.steps", integer(1))`), or a few keys and a relation between them.
`check` runs the table of the config's `kind` and raises one UsageError
listing every violation with the key, the value and the rule, so that
train.py, sample.py and eval refuse a bad value in the same words, at once.

Every enum-like key (a string from a fixed set) is a `one_of` rule here, so a
misspelt option is refused when the config is loaded, naming its key, rather
than deep inside a traced model; the modules that branch on such a value
keep only a cheap check at construction, for Python callers. Tests keep each
set equal to the one the code branches on.

Keys a table names but the config lacks are skipped (older configs, saved
before a key existed, still load; `with_absent_keys` gives such a config the
values those keys had then); keys no table names are not an error
(configlib already refuses unknown `--config.` overrides).
"""

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

from idjax.configlib import UsageError

MESH_AXES = ("data", "fsdp", "tensor", "sequence")  # as idjax.sharding (kept jax-free here)
MAX_SEED = 2**32 - 1
MAX_CHARACTERS = 8    # what the synthetic world can draw into one clip
TEXT_VOCABULARY = 44  # len(idjax.data.prompts.VOCABULARY); tests keep the two equal
# "none" and idjax.models.dit.REMAT_POLICIES (jax checkpoint policies; kept
# jax-free here, tests keep the two equal).
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "checkpoint_dots", "checkpoint_dots_with_no_batch_dims", "everything_saveable",
                  "nothing_saveable")


@dataclasses.dataclass(frozen=True)
class Check:
  """A test on one value and the words that state it ("an integer >= 1");
  `choices`: the allowed values of an enum-like key (`one_of`)."""
  ok: Callable[[Any], bool]
  text: str
  choices: tuple | None = None


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(lo, hi, lo_open=False) -> str:
  if lo is not None and hi is not None:
    return f" in {'(' if lo_open else '['}{lo}, {hi}]"
  if lo is not None:
    return f" {'>' if lo_open else '>='} {lo}"
  return f" <= {hi}" if hi is not None else ""


def integer(lo=None, hi=None) -> Check:
  return Check(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
               "an integer" + _bounds(lo, hi))


def number(lo=None, hi=None, *, lo_open=False) -> Check:
  """A finite real number; `lo_open`: strictly above lo."""
  def ok(v):
    if not _is_real(v):
      return False
    above = lo is None or (v > lo if lo_open else v >= lo)
    return above and (hi is None or v <= hi)
  return Check(ok, "a finite number" + _bounds(lo, hi, lo_open))


def one_of(*values) -> Check:
  return Check(lambda v: v in values, "one of " + ", ".join(repr(x) for x in values), values)


def nonempty_text() -> Check:
  return Check(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")


def integers(n=None, lo=1) -> Check:
  """A tuple (or JSON list) of integers >= lo, of length n if given."""
  def ok(v):
    return (isinstance(v, (tuple, list)) and (n is None or len(v) == n) and len(v) > 0
            and all(_is_int(x) and x >= lo for x in v))
  return Check(ok, f"{'a list' if n is None else f'{n}'} of integers >= {lo}")


def boolean() -> Check:
  return Check(lambda v: isinstance(v, bool), "true or false")


def mesh_sizes() -> Check:
  """Mesh axis sizes: each >= 1, or -1 (at most one) for 'all devices left'."""
  def ok(v):
    sizes = [v.get(a, 1) for a in MESH_AXES] if hasattr(v, "get") else [None]
    return (all(_is_int(s) and (s >= 1 or s == -1) for s in sizes)
            and sum(s == -1 for s in sizes) <= 1 and set(v) <= set(MESH_AXES))
  return Check(ok, f"sizes of the axes {', '.join(MESH_AXES)}, each >= 1 or one of them -1")


def sharding_rules() -> Check:
  def axes_ok(axes):
    axes = axes if isinstance(axes, (tuple, list)) else (axes,)
    return all(a is None or a in MESH_AXES for a in axes)
  return Check(lambda v: isinstance(v, (tuple, list)) and all(
      isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str) and axes_ok(r[1])
      for r in v), f"(logical name, mesh axes) pairs with axes among {', '.join(MESH_AXES)}")


PROBABILITY = number(0.0, 1.0)
POSITIVE = number(0.0, lo_open=True)

COMMON = (
    ("seed", integer(0, MAX_SEED)),
)

VIDEO = COMMON + (
    ("face_encoder_workdir", nonempty_text()),
    # data
    ("data.source", one_of("on_the_fly", "tfds")),
    ("data.split", one_of("train", "heldout")),
    ("data.resolution", integer(8, 512)),
    ("data.num_frames", integer(1)),
    ("data.max_characters", integer(1, MAX_CHARACTERS)),
    ("data.min_characters", integer(1, MAX_CHARACTERS)),
    ("data.num_references", integer(1)),
    ("data.reference_resolution", integer(8, 512)),
    ("data.seed", integer(0, MAX_SEED)),
    ("data.size", integer(1)),
    ("data.text_len", integer(1)),
    # model
    ("model.backbone", one_of("idjax", "wan")),
    ("model.space", one_of("pixel", "latent")),
    ("model.channels", integer(1)),
    ("model.patch_size", integers(3)),
    ("model.prediction", one_of("clean", "velocity")),
    ("model.reference_canvas", boolean()),
    ("model.face_mask_scale", number(0.0, 1.0, lo_open=True)),
    ("model.canvas_alpha", boolean()),
    ("model.absolute_position", boolean()),
    ("train.matte_dropout", PROBABILITY),
    ("model.width", integer(1)),
    ("model.depth", integer(1)),
    ("model.num_heads", integer(1)),
    ("model.mlp_ratio", POSITIVE),
    ("model.text_width", integer(1)),
    ("model.text_layers", integer(0)),
    ("model.text_vocab_size", integer(TEXT_VOCABULARY)),
    ("model.num_identity_tokens", integer(1)),
    ("model.identity_layers", integer(1)),
    ("model.reference_mode", one_of("mean", "joint")),
    ("model.use_separator", boolean()),
    ("model.identity_routing", one_of("hard", "soft", "none")),
    ("model.temporal_causal", boolean()),
    ("model.attention_impl", one_of("xla", "cudnn")),
    ("model.scan_blocks", boolean()),
    ("model.remat_policy", one_of(*REMAT_POLICIES)),
    ("model.param_dtype", one_of("float32", "bfloat16", "float16")),
    ("model.dtype", one_of("float32", "bfloat16", "float16")),
    # model, Wan backbone only (configs/wan_tiny.py)
    ("model.ffn_dim", integer(1)),
    ("model.text_dim", integer(1)),
    ("model.freq_dim", integer(2)),
    ("model.text_input", one_of("tokens", "embeddings")),
    ("model.backbone_param_dtype", one_of("float32", "bfloat16", "float16")),
    # train
    ("train.steps", integer(1)),
    ("train.batch_size", integer(1)),
    ("train.grad_accum", integer(1)),
    ("train.trainable", one_of("all", "adapters")),
    ("train.init_from", Check(lambda v: isinstance(v, str), "a video workdir, or '' for none")),
    ("train.lr", POSITIVE),
    ("train.warmup_steps", integer(0)),
    ("train.weight_decay", number(0.0)),
    ("train.grad_clip", POSITIVE),
    ("train.ema_decay", PROBABILITY),
    ("train.loss_weighting", one_of("velocity", "clean")),
    ("train.t_logit_mean", number()),
    ("train.t_logit_std", POSITIVE),
    ("train.text_dropout", PROBABILITY),
    ("train.identity_dropout", PROBABILITY),
    ("train.mask_dropout", PROBABILITY),
    ("train.context_prob", PROBABILITY),
    ("train.lambda_id", number(0.0)),
    ("train.lambda_temporal", number(0.0)),
    ("train.id_loss_max_t", PROBABILITY),
    ("train.id_loss_frames", integer(1)),
    ("train.log_every", integer(1)),
    ("train.checkpoint_every", integer(1)),
    ("train.keep_checkpoints", integer(1)),
    ("train.sample_every", integer(0)),
    ("train.max_nonfinite_steps", integer(1)),
    ("train.heartbeat_timeout_s", integer(1)),
    ("train.init_timeout_s", integer(1)),
    # sample
    ("sample.sampler", one_of("euler", "heun")),
    ("sample.steps", integer(1)),
    ("sample.identity_strength", PROBABILITY),
    ("sample.text_guidance", number()),
    ("sample.identity_guidance", number()),
    ("sample.renoise", PROBABILITY),
    ("sample.num_frames", integer(1)),
    ("sample.shift", POSITIVE),
    ("sample.per_device_batch", integer(1)),
    # mesh
    ("mesh", mesh_sizes()),
    ("sharding.rules", sharding_rules()),
)

FACE_ENCODER = COMMON + (
    ("architecture", one_of("resnet", "iresnet")),
    ("input_size", integer(8)),
    ("width", integer(1)),
    ("stem_stride", integer(1)),
    ("num_stages", integer(1)),
    ("blocks_per_stage", integer(1)),
    ("groups", integer(1)),
    ("embed_dim", integer(1)),
    ("num_train_identities", integer(2)),
    ("identity_start", integer(0)),
    ("resolutions", integers(None, 8)),
    ("clips_per_identity", integer(1)),
    ("frames_per_clip", integer(1)),
    ("references_per_clip", integer(0)),
    ("context", number(1.0)),
    ("box_jitter", number(0.0, 0.5)),
    ("render_seed", integer(0, MAX_SEED)),
    ("steps", integer(1)),
    ("batch_size", integer(1)),
    ("lr", POSITIVE),
    ("warmup_steps", integer(0)),
    ("weight_decay", number(0.0)),
    ("margin", number(0.0)),
    ("scale", POSITIVE),
    ("log_every", integer(1)),
    ("verification.resolutions", integers(None, 8)),
    ("verification.num_identities", integer(2)),
    ("verification.seed", integer(0, MAX_SEED)),
)

# Relations: (keys, test on their values, the rule in words). A relation runs
# only when all its keys are present and passed their own rules.
VIDEO_RELATIONS = (
    (("model.width", "model.num_heads"), lambda w, h: w % h == 0,
     "model.num_heads must divide model.width"),
    (("model.width", "model.num_heads"), lambda w, h: w // h >= 4,
     "model.width / model.num_heads (the head size) must be >= 4 for RoPE"),
    (("model.text_width", "model.num_heads"), lambda w, h: w % h == 0,
     "model.num_heads must divide model.text_width"),
    (("model.backbone", "model.width", "model.num_heads"),
     lambda b, w, h: b != "wan" or (w // h) % 2 == 0 and w // h >= 6,
     "a Wan backbone's head size (model.width / model.num_heads) must be even and >= 6 "
     "for its 3D RoPE"),
    (("model.backbone", "model.prediction"), lambda b, p: b != "wan" or p == "velocity",
     "a Wan backbone predicts velocity (model.prediction='velocity')"),
    (("model.backbone", "model.reference_canvas"), lambda b, c: b != "wan" or not c,
     "a Wan backbone reads no reference canvas (model.reference_canvas=False)"),
    (("model.absolute_position", "model.width"), lambda a, w: not a or w % 4 == 0,
     "model.absolute_position's sin-cos embedding needs model.width divisible by 4"),
    (("model.canvas_alpha", "model.reference_canvas"), lambda a, c: not a or c,
     "model.canvas_alpha is the reference canvas's alpha: it needs model.reference_canvas=True"),
    (("sample.sampler", "sample.renoise"), lambda m, r: r == 0 or m == "euler",
     "sample.renoise > 0 takes sample.sampler='euler'"),
    (("model.freq_dim",), lambda f: f % 2 == 0, "model.freq_dim must be even"),
    (("data.resolution", "model.patch_size"), lambda r, p: r % p[1] == 0 and r % p[2] == 0,
     "data.resolution must be divisible by the patch height and width"),
    (("data.num_frames", "model.patch_size"), lambda t, p: t % p[0] == 0,
     "data.num_frames must be divisible by the patch's frames"),
    (("sample.num_frames", "model.patch_size"), lambda t, p: t % p[0] == 0,
     "sample.num_frames must be divisible by the patch's frames"),
    (("data.min_characters", "data.max_characters"), lambda lo, hi: lo <= hi,
     "data.min_characters must be <= data.max_characters"),
    (("model.max_characters", "data.max_characters"), lambda m, d: m == d,
     "model.max_characters must equal data.max_characters"),
    (("model.text_len", "data.text_len"), lambda m, d: m == d,
     "model.text_len must equal data.text_len"),
    (("train.batch_size", "train.grad_accum"), lambda b, a: b % a == 0,
     "train.grad_accum must divide train.batch_size"),
    (("model.space", "autoencoder_workdir"),
     lambda space, workdir: space != "latent" or (isinstance(workdir, str) and workdir.strip()),
     "a latent-space model (model.space='latent') needs a non-empty autoencoder_workdir"),
)

# What a video config's key meant before the key existed: a config saved
# then (a workdir's config.json) is read with these values
# (`with_absent_keys`), and relations read them for absent keys. They are not
# defaults: every shipped config sets these keys (tiny.py makes clean-
# prediction models; an old saved config without the key was a velocity one).
ABSENT_AS = {
    "autoencoder_workdir": "",       # needed only in latent space
    "model.backbone": "idjax",       # before the Wan backbone
    "train.trainable": "all",        # before frozen-backbone training
    "train.init_from": "",           # before fine-tuning from another workdir
    "train.context_prob": 0.0,       # before clean-context (per-frame t) training
    "model.space": "pixel",          # before latent-space models
    "model.prediction": "velocity",  # before clean prediction
    "model.reference_canvas": False,  # before the reference canvas
    "model.face_mask_scale": 1.0,    # before shrunk face masks (the box's ellipse)
    "model.canvas_alpha": False,     # before the canvas's alpha channel
    "model.absolute_position": False,  # before the patches' position embedding
    "train.matte_dropout": 0.0,      # before reference mattes
    "sample.shift": 1.0,             # before the timestep-grid shift
    "sample.renoise": 0.0,           # before the renoising sampler
    "sample.per_device_batch": 1,    # before batched sampling
}

RULES = {"video": VIDEO, "face_encoder": FACE_ENCODER, "autoencoder": COMMON}
RELATIONS = {"video": VIDEO_RELATIONS}
KINDS = tuple(RULES)

_MISSING = object()


def lookup(config, key: str, default=_MISSING):
  """config["a.b.c"] through nested ConfigDicts or dicts; `default` if absent."""
  node = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return default
  return node


def with_absent_keys(config):
  """`config`, or a copy of it with each ABSENT_AS key it lacks set to the
  value the key had before it existed (for configs saved back then). A key
  whose section is absent too is left absent."""
  parent = lambda key: key.rpartition(".")[0]
  missing = [key for key in ABSENT_AS if lookup(config, key) is _MISSING
             and (not parent(key) or lookup(config, parent(key)) is not _MISSING)]
  if not missing:
    return config
  config = config.copy_and_resolve_references()
  for key in missing:
    node = lookup(config, parent(key)) if parent(key) else config
    node[key.rpartition(".")[2]] = ABSENT_AS[key]
  return config


def _show(value) -> str:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def violations(config, num_devices: int | None = None) -> list[str]:
  """Every rule `config` breaks, one phrase each ("train.steps=-5 must be an integer >= 1").

  `num_devices`: also check that the mesh fits them and that the global batch
  divides by the mesh's batch shards times train.grad_accum.
  """
  kind = lookup(config, "kind", "video")
  if kind not in RULES:
    return [f"kind={kind!r} must be one of {', '.join(repr(k) for k in KINDS)}"]
  found, bad_keys = [], set()
  for key, check in RULES[kind]:
    value = lookup(config, key)
    if value is not _MISSING and not check.ok(value):
      found.append(f"{key}={_show(value)} must be {check.text}")
      bad_keys.add(key)
  for keys, test, text in RELATIONS.get(kind, ()):
    values = [lookup(config, k, ABSENT_AS.get(k, _MISSING)) for k in keys]
    if any(v is _MISSING for v in values) or bad_keys & set(keys):
      continue
    if not test(*values):
      shown = ", ".join(f"{k}={_show(v)}" for k, v in zip(keys, values))
      found.append(f"{text} ({shown})")
  if num_devices is not None and kind == "video" and not found:
    found += _device_violations(config, num_devices)
  return found


def _device_violations(config, num_devices: int) -> list[str]:
  mesh = lookup(config, "mesh", None)
  if mesh is None:
    return []
  sizes = {a: int(mesh.get(a, 1)) for a in MESH_AXES}
  known = math.prod(s for s in sizes.values() if s != -1)
  for axis, size in sizes.items():
    if size == -1:
      if num_devices % known:
        return [f"mesh={_show(mesh)} cannot be filled with {num_devices} devices"]
      sizes[axis] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    return [f"mesh={_show(mesh)} needs {math.prod(sizes.values())} devices, "
            f"but {num_devices} are in use"]
  batch_axes = dict((name, axes) for name, axes in lookup(config, "sharding.rules", ())).get(
      "batch", ("data", "fsdp"))
  batch_axes = batch_axes if isinstance(batch_axes, (tuple, list)) else (batch_axes,)
  shards = math.prod(sizes[a] for a in batch_axes if a is not None)
  batch, accum = lookup(config, "train.batch_size", None), lookup(config, "train.grad_accum", 1)
  if batch is not None and batch % (shards * accum):
    return [f"train.batch_size={batch} must divide by the {shards} batch shards of the mesh "
            f"times train.grad_accum={accum}"]
  return []


def check_seed(value, flag: str = "--seed") -> None:
  """A seed from the command line: what `seed` rules accept (jax keys and the
  world's generators take it; numpy int64 arithmetic on it cannot overflow)."""
  if not (_is_int(value) and 0 <= value <= MAX_SEED):
    raise UsageError(f"{flag} must be in 0..{MAX_SEED}, got {value}.")


def check(config, num_devices: int | None = None, *, source: str = "config") -> None:
  """Raises UsageError naming every violation (see `violations`)."""
  found = violations(config, num_devices)
  if found:
    raise UsageError(f"Invalid {source}: " + "; ".join(found) + ".")
