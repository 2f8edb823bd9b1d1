"""Prompts + reference images (+ layout) -> video clips, batched and sharded.

Reproducibility. A sample's noise comes from its own seed only
(`rng.derive(seed_i, 0, "sample/noise")`), never from its batch slot, and
every model evaluation runs on the same per-device shapes whatever the mesh
or batch: the batch is cut into chunks of `per_device_batch` examples per
device (padding the last one), and each chunk goes through one compiled step.
Why: XLA CPU picks matmul kernels and their blocking from the operand shapes,
so the same example inside a batch of 1 and of 8 can differ in the last bit
(and such differences grow over the ODE steps). Fixing the per-device shape
removes that cause; with a data-parallel mesh the per-device program is then
the same on 1 or N devices, and frames are bit-identical. The denoising loop
runs inside `sharding.activation_sharding`, as training does; its
constraints keep the activations, down to the per-example timestep and
adaLN vectors, batch-sharded, so on an fsdp mesh too a device computes its
own examples at full width and the frames equal one device's (tested on
fsdp=8). (The guarantee is for equal `per_device_batch`; bigger chunks are
faster on accelerators.)

In latent space (config.model.space == "latent") the model diffuses the
frozen autoencoder's latents: noise and face masks are made at the latent
grid, and the latents are decoded to frames at the end, chunk by chunk with
the same per-device shapes, so the bit-identity above holds for the frames.
The decode streams over time too: `decode_frames` latent frames per call
(default DECODE_FRAMES), each call's uint8 frames copied to the host (and
handed to `generate`'s `on_frames`) before the next, so device memory for
the decode is one chunk's whatever the clip's length, and the host never
holds the clip as floats. A chunk reads the `decode_context` latent frames
before it (the project autoencoder's causal temporal convs), or continues
the cache of the one before (the Wan VAE's); every chunk has one shape (the
last repeats the clip's last latent frame, and the frames it gives are
dropped), so the frames equal a whole-clip decode's.
An autoencoder with temporal factor f > 1 (the Wan VAE, f = 4) takes
T = 1 + f k frames and the model T' = 1 + k latent frames; a latent
frame's face mask is the union of the masks of the frames it covers
(layout.latent_face_masks), as the trainer builds them.

Without a layout the model gets all-ones face masks (every token may attend
to the identity), which is what the trainer's mask dropout teaches; the
returned boxes and masks are then None.

Classifier-free guidance with separate text and identity scales:
  v = v(0, 0) + s_text (v(text, 0) - v(0, 0)) + s (v(text, id) - v(text, 0)),
  s = 1 + (s_id - 1) * (the union of the face masks)
where "0 text" is all-zero tokens and "0 id" is char_valid all False: identity
guidance acts inside the faces only (samplers.guide says why). Only
the passes a setting needs are run: one when both scales are 1, two when only
s_text is 1.
"""

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from idjax import config_rules
from idjax import diffusion
from idjax import layout as layout_lib
from idjax import models
from idjax import restore
from idjax import rng
from idjax import sharding
from idjax.autoencoder.frozen import FrozenAutoencoder
from idjax.conditioning import encode_references, model_canvas, model_face_masks
from idjax.data import prompts as prompts_lib
from idjax.data import text_embeddings as text_lib
from idjax.face.frozen import FrozenFaceEncoder
from idjax.models.wan.identity_dit import dummy_text_embeddings
from idjax.sampling import memory
from idjax.sampling import samplers

# Latent frames per decoder call: the decoder's activations are this many
# frames' (4x as many frames of the Wan VAE); longer chunks make fewer calls
# and re-read less context.
DECODE_FRAMES = 16


def resolve_path(path: str, workdir: str) -> str:
  """A path from a saved config: absolute, or relative to the cwd, the workdir
  or the workdir's parent (the first that exists; else as given)."""
  if os.path.isabs(path):
    return path
  for base in (os.getcwd(), workdir, os.path.dirname(os.path.abspath(workdir))):
    candidate = os.path.join(base, path)
    if os.path.exists(candidate):
      return candidate
  return path


def model_side(config, autoencoder=None) -> int:
  """The spatial side of what the model diffuses: the frame, or its latent grid."""
  side = int(config.data.resolution)
  return side if autoencoder is None else autoencoder.latent_shape(1, side, side)[1]


def abstract_params(config, face_encoder, side, mesh):
  """The video model's params as ShapeDtypeStructs in their shardings on
  `mesh`: the logical axis names of an abstract init (no FLOPs, no memory)
  through config.sharding.rules, as the trainer lays them out.

  The init is the trainer's (`train.trainer.model_inputs`): face masks given,
  which is also what `generate` always passes (all ones without a layout),
  so its params tree is the one sampling applies.
  """
  m = config.model
  fe = face_encoder
  args = models.dummy_inputs(
      m, batch=1, frames=m.patch_size[0], height=side, width=side, text_len=int(m.text_len),
      num_chars=int(m.max_characters), num_refs=int(config.data.num_references),
      face_embed_dim=fe.embed_dim, face_feature_dim=fe.feature_dim, face_cells=fe.feature_cells)
  model = models.build_model(m)
  text = dummy_text_embeddings(model, 1, int(m.text_len))
  boxed = jax.eval_shape(functools.partial(model.init, **text), jax.random.key(0), *args)["params"]
  return restore.abstract_params(boxed, mesh, config.sharding.rules)


def prepare_reference(image, size: int) -> np.ndarray:
  """Any image (array or PIL, any mode and size) -> uint8 [size, size, 3].

  Centre-cropped to a square (references are framed like a square face box),
  then resized with PIL's antialiased bilinear filter.
  """
  if not isinstance(image, Image.Image):
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.dtype != np.uint8:
      raise ValueError(f"Reference images must be uint8, got {array.dtype}.")
    image = Image.fromarray(array)
  image = image.convert("RGB")
  width, height = image.size
  if width == 0 or height == 0:
    raise ValueError("A reference image is empty.")
  return np.asarray(_centre_square(image, size), np.uint8)


def _centre_square(image: Image.Image, size: int) -> Image.Image:
  """The centred square crop of `image`, resized to `size` with PIL's
  antialiased bilinear filter: how a reference (and its matte) is framed."""
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  return image if side == size else image.resize((size, size), Image.BILINEAR)


def prepare_matte(image, size: int) -> np.ndarray:
  """A reference's head matte, uint8 [size, size] (1 on the head): its alpha
  channel (RGBA or LA; opaque from 128), cropped and resized as
  `prepare_reference` does the colours; all ones without one (none known)."""
  if isinstance(image, Image.Image):
    transparent = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info)
    alpha = image.convert("RGBA").getchannel("A") if transparent else None
  else:
    array = np.asarray(image)
    alpha = (Image.fromarray(array[..., -1])
             if array.ndim == 3 and array.shape[-1] in (2, 4) else None)
  if alpha is None:
    return np.ones((size, size), np.uint8)
  return (np.asarray(_centre_square(alpha, size)) >= 128).astype(np.uint8)


@dataclasses.dataclass
class _Batch:
  """Host-side inputs of B (padded) examples."""
  noise: np.ndarray            # float32 [B, T', h, w, C] at the model's grid
  text: np.ndarray             # int32 [B, L]
  references: np.ndarray       # uint8 [B, C, K, R, R, 3]
  mattes: np.ndarray           # uint8 [B, C, K, R, R], 1 on the head (all ones: none known)
  ref_valid: np.ndarray        # bool [B, C, K]
  char_valid: np.ndarray       # bool [B, C]
  strength: np.ndarray         # float32 [B]
  face_masks: np.ndarray       # float32 [B, C, T', h, w] at the model's grid
  boxes: np.ndarray | None     # float32 [B, C, T, 4], or None (no layout)
  text_embeddings: np.ndarray | None = None  # [B, L, D] of a model that reads them


class Generator:
  """A trained video model, its conditioning face encoder and a mesh.

  Attributes:
    config: the run's full ConfigDict (model, data, sample sections); keys
      that a config saved before they existed lacks are filled in with the
      values they had then (config_rules.with_absent_keys).
    params: EMA params, placed on the mesh by the sharding rules.
    face_encoder: the frozen encoder the model was trained with.
    autoencoder: the frozen video autoencoder of a latent-space model (None
      in pixel space).
    mesh, rules: where sampling runs.
    per_device_batch: examples per device per model call (see module doc).
    decode_frames: latent frames per decoder call (see module doc).
    text_table: the precomputed text embeddings (idjax.data.text_embeddings)
      of a model that reads them instead of prompt tokens, else None.
  """

  def __init__(self, config, params, face_encoder: FrozenFaceEncoder, mesh=None,
               per_device_batch: int | None = None, autoencoder=None, text_table=None,
               decode_frames: int = DECODE_FRAMES):
    config = config_rules.with_absent_keys(config)
    self.config = config
    self.model = models.build_model(config.model)
    self.face_encoder = face_encoder
    self.autoencoder = autoencoder
    if (config.model.space == "latent") != (autoencoder is not None):
      raise ValueError("A latent-space model needs its autoencoder, and a pixel-space one none.")
    self.rules = sharding.rules_from_config(config.sharding.rules)
    self.mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
    if per_device_batch is None:
      per_device_batch = int(config.sample.per_device_batch)
    self.per_device_batch = per_device_batch
    if decode_frames < 1:
      raise ValueError(f"decode_frames must be >= 1, got {decode_frames}.")
    self.decode_frames = decode_frames
    self.chunk = per_device_batch * sharding.batch_axis_size(self.mesh, self.rules)
    self.resolution = int(config.data.resolution)
    self.mask_scale = float(config.model.face_mask_scale)  # present: with_absent_keys
    self.reference_resolution = int(config.data.reference_resolution)
    self.num_references = int(config.data.num_references)
    self.max_characters = int(config.model.max_characters)
    self.text_len = int(config.model.text_len)
    self.channels = int(config.model.channels)
    self.temporal_factor = 1 if autoencoder is None else int(autoencoder.temporal_factor)
    # A model reading UMT5 embeddings maps each prompt to its row of the table.
    if not getattr(self.model, "reads_text_embeddings", False):
      text_table = None
    elif text_table is None:
      text_table = text_lib.for_config(config)
    else:
      text_table.check_shape(self.text_len, config.model.text_dim)
    self.text_table = text_table
    self.model_side = model_side(config, autoencoder)
    self._abstract_params = abstract_params(config, face_encoder, self.model_side, self.mesh)
    restore.check_fits(params, self._abstract_params, "The params given to the Generator")
    # A no-op for params restored by `from_workdir` (already in place); host
    # arrays go shard by shard to their devices.
    self.params = jax.device_put(params, self._param_shardings())
    self._replicated = sharding.replicated(self.mesh)
    self.face_params = jax.device_put(face_encoder.params, self._replicated)
    self.autoencoder_params = (None if autoencoder is None
                               else jax.device_put(autoencoder.params, self._replicated))
    self._decode = {}
    self._steps = {}
    self._encode = None
    self._canvas = None
    self._noise = {}

  @classmethod
  def from_workdir(cls, workdir, mesh=None, per_device_batch=None,
                   text_embeddings=None) -> "Generator":
    """The config and EMA params of a video workdir, with its frozen face
    encoder (and autoencoder, in latent space, and text embeddings table, for
    a model that reads them: `text_embeddings`, a file, overrides the
    config's data.text_embeddings).

    Only the EMA params of the newest readable checkpoint are read (unreadable
    newer steps are skipped with a warning and left in place), each shard
    straight onto its device of `mesh` (default: config.mesh). Raises
    ValueError (one sentence) when the workdir cannot be sampled.
    """
    config = config_rules.with_absent_keys(restore.read_video_config(workdir))
    face_encoder = FrozenFaceEncoder.from_workdir(
        resolve_path(config.face_encoder_workdir, workdir))
    autoencoder = None
    if config.model.space == "latent":
      autoencoder = FrozenAutoencoder.from_workdir(
          resolve_path(config.autoencoder_workdir, workdir))
    mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
    saved_table = config.data.get("text_embeddings", "")
    text_table = text_lib.for_config(
        config, text_embeddings or (saved_table and resolve_path(saved_table, workdir)))
    abstract = abstract_params(config, face_encoder, model_side(config, autoencoder), mesh)
    _, params = restore.restore_ema(workdir, abstract)
    return cls(config, params, face_encoder, mesh=mesh, per_device_batch=per_device_batch,
               autoencoder=autoencoder, text_table=text_table)

  # --- placement ---------------------------------------------------------

  def _param_shardings(self):
    """Each param's NamedSharding: its logical axis names through the rules
    (fsdp/tensor-sharded as in training; replicated on a data-only mesh)."""
    return jax.tree.map(lambda a: a.sharding, self._abstract_params)

  def _put_batch(self, tree):
    return jax.tree.map(
        lambda a: jax.device_put(a, sharding.batch_sharding(self.mesh, np.ndim(a), self.rules)), tree)

  def _frames_sharding(self, ndim: int, axis: int = 1):
    """Batch-sharded, with axis `axis` (frames) on the rules' `frames` mesh
    axes (`sequence`): a long clip's noise, state and masks are split over
    the sequence devices instead of replicated on each (no-op without one)."""
    names = ["batch"] + [None] * (ndim - 1)
    names[axis] = "frames"
    return sharding.logical_to_sharding(tuple(names), self.mesh, self.rules)

  # --- compiled pieces ---------------------------------------------------

  def _encode_fn(self):
    """uint8 references [G, C, K, R, R, 3] -> emb [G, C, K, D], features [G, C, K, N, F],
    exactly as the trainer encodes them."""
    if self._encode is None:
      self._encode = jax.jit(functools.partial(encode_references, self.face_encoder))
    return self._encode

  def _canvas_fn(self):
    """(references, ref_valid, char_valid, boxes) -> the reference canvas in
    the model's space, exactly as the trainer draws (and encodes) it."""
    if self._canvas is None:
      res, ae = self.resolution, self.autoencoder
      alpha = bool(getattr(self.model, "canvas_alpha", False))

      def canvas(ae_params, refs, mattes, ref_valid, char_valid, boxes):
        to_model = (lambda x: x) if ae is None else functools.partial(ae.encode, ae_params)
        return model_canvas(refs, ref_valid, char_valid, boxes, res, res, self.mask_scale,
                            to_model, mattes if alpha else None, self.temporal_factor)

      self._canvas = jax.jit(canvas)
    return self._canvas

  def _to_frames(self, x, on_frames=None) -> np.ndarray:
    """The model's clean output [G, T', ...] (on the mesh) -> uint8 frames
    [G, T, H, W, 3] on the host, decoded in chunks of `decode_frames` latent
    frames (module doc); `on_frames(frames)` gets each chunk's frames as they
    arrive."""
    ae, total = self.autoencoder, x.shape[1]
    lead = 0 if ae is None else ae.decode_lead
    size = max(min(self.decode_frames, total - lead), 1)
    bounds = [(0, lead)] if lead else []
    bounds += [(lo, min(lo + size, total)) for lo in range(lead, total, size)]
    cache, parts = None, []
    for lo, hi in bounds:
      chunk = lead if lo < lead else size
      frames, cache = self._decode_fn(chunk)(self.autoencoder_params, x, jnp.int32(lo), cache)
      # Drops the frames of latents past the clip's end (the last chunk's padding).
      frames = np.asarray(frames)[:, :frames.shape[1] // chunk * (hi - lo), ..., :3]
      if on_frames is not None:
        on_frames(frames)
      parts.append(frames)
    return np.concatenate(parts, axis=1)

  def _decode_fn(self, size: int):
    """(autoencoder params, x [G, T', ...], start, cache) -> (uint8 frames of
    latent frames [start, start + size), the decoder's cache after them):
    one program for every chunk of `size` (the Wan VAE's first call, with no
    cache, is its own). Latent frames before 0 are copies of frame 0 (what
    the causal padding reads), after the clip copies of its last."""
    if size in self._decode:
      return self._decode[size]
    ae = self.autoencoder
    context = 0 if ae is None else ae.decode_context

    def decode(params, x, start, cache):
      index = jnp.clip(start - context + jnp.arange(context + size), 0, x.shape[1] - 1)
      window = jnp.take(x, index, axis=1)
      if ae is None:
        return diffusion.to_uint8(window), cache
      frames, cache = ae.decode_more(params, window, cache)
      return diffusion.to_uint8(frames), cache

    self._decode[size] = jax.jit(decode)
    return self._decode[size]

  def model_frames(self, num_frames: int) -> int:
    """Frames of the grid the model diffuses for a clip of `num_frames`: the
    clip's own, or its latent frames. ValueError (one sentence naming the
    valid counts) for a count the autoencoder does not take."""
    if self.autoencoder is None:
      return num_frames
    return self.autoencoder.latent_shape(num_frames, self.resolution, self.resolution)[0]

  def _noise_fn(self, shape):
    """One example's noise from its key: fixed shape, so one program for all."""
    if shape not in self._noise:
      self._noise[shape] = jax.jit(lambda key: jax.random.normal(key, shape, jnp.float32))
    return self._noise[shape]

  def _step_fn(self, method: str, passes: int, renoise: bool = False):
    key = (method, passes, renoise)
    if key in self._steps:
      return self._steps[key]
    model = self.model

    def step(params, x, t, t_next, text, identity, strength, s_text, s_id, embeddings=None,
             fresh=None, eta=None):
      # Zero tokens (the null-text pass) zero a model's text embeddings too.
      kw = {} if embeddings is None else {"text_embeddings": embeddings}

      def velocity(x, t):
        # One t per example, or per frame ([T]: clean context at 0).
        tb = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],) + jnp.shape(t))
        apply = lambda tokens, ident: model.apply({"params": params}, x, tb, tokens, ident,
                                                  strength, **kw)
        v_full = apply(text, identity)
        if passes == 1:
          return v_full
        no_id = identity.replace(char_valid=jnp.zeros_like(identity.char_valid))
        v_text = apply(text, no_id)
        v_null = None if passes == 2 else apply(jnp.zeros_like(text), no_id)
        faces = identity.face_masks * identity.char_valid[:, :, None, None, None]
        faces = jnp.max(faces, axis=1)[..., None]  # [B, T, h, w, 1], the union
        return samplers.guide(v_full, v_text, v_null, s_text, s_id, faces)

      if renoise:
        return samplers.renoise_step(velocity, x, t, t_next, fresh, eta)
      return samplers.step(velocity, x, t, t_next, method)

    fn = jax.jit(step, out_shardings=self._frames_sharding(5), donate_argnums=(1,))
    self._steps[key] = fn
    return fn

  # --- inputs ------------------------------------------------------------

  def _host_batch(self, prompts, references, num_frames, strengths, seeds, boxes):
    b, pad = len(prompts), -len(prompts) % self.chunk
    n = b + pad
    c, k, r, side = self.max_characters, self.num_references, self.reference_resolution, self.model_side
    refs = np.zeros((n, c, k, r, r, 3), np.uint8)
    mattes = np.ones((n, c, k, r, r), np.uint8)
    ref_valid = np.zeros((n, c, k), bool)
    char_valid = np.zeros((n, c), bool)
    for i, chars in enumerate(references):
      for j, images in enumerate(chars):
        for m, image in enumerate(images):
          refs[i, j, m] = prepare_reference(image, r)
          mattes[i, j, m] = prepare_matte(image, r)
          ref_valid[i, j, m] = True
        char_valid[i, j] = True
    text = np.zeros((n, self.text_len), np.int32)
    embeddings = None
    if self.text_table is not None:
      embeddings = np.zeros((n, self.text_len, self.text_table.text_dim), np.float32)
      for i, prompt in enumerate(prompts):
        text[i], embeddings[i] = self.text_table.lookup(prompt)
    else:
      for i, prompt in enumerate(prompts):
        text[i] = prompts_lib.tokenize(prompt, self.text_len)
    strength = np.zeros((n,), np.float32)
    strength[:b] = strengths
    frames = self.model_frames(num_frames)
    shape = (frames, side, side, self.channels)
    noise = self._seeded_noise(seeds, n, shape, 0, "sample/noise")
    # Without a layout every token may attend to the identity: all-ones masks,
    # which is what the trainer's mask dropout taught the model to handle.
    masks = np.ones((n, c, frames, side, side), np.float32)
    if boxes is not None:
      masks[:b] = model_face_masks(boxes, side, side, self.temporal_factor, self.mask_scale,
                                   xp=np)
    padded_boxes = None
    if boxes is not None:
      padded_boxes = np.zeros((n,) + boxes.shape[1:], np.float32)
      padded_boxes[:b] = boxes
    return _Batch(noise, text, refs, mattes, ref_valid, char_valid, strength, masks,
                  padded_boxes, embeddings)

  def _seeded_noise(self, seeds, n, shape, step, purpose):
    """[n, *shape] noise, example i's from `rng.derive(seeds[i], step, purpose)`
    at its own fixed shape (so the same on any mesh or batch); zeros for
    padding. Step 0 is the starting noise, step k the renoise step into grid
    level k."""
    noise_fn = self._noise_fn(shape)
    out = np.zeros((n,) + shape, np.float32)
    for i, seed in enumerate(seeds):
      out[i] = np.asarray(noise_fn(rng.derive(int(seed), step, purpose)))
    return out

  @staticmethod
  def check_renoise(eta: float, sampler: str):
    if not 0.0 <= eta <= 1.0:
      raise ValueError(f"renoise must lie in [0, 1], got {eta}.")
    if eta > 0 and sampler != "euler":
      raise ValueError(f"renoise > 0 takes the euler sampler, not {sampler!r}.")

  def _check(self, prompts, references, layout, num_frames, strengths, steps, sampler):
    if not prompts:
      raise ValueError("At least one prompt is needed.")
    if self.text_table is not None:
      for prompt in prompts:
        self.text_table.lookup(prompt)  # UsageError (a ValueError) naming a prompt it lacks
    if len(references) != len(prompts):
      raise ValueError(f"references has {len(references)} entries for {len(prompts)} prompts.")
    for i, chars in enumerate(references):
      if len(chars) > self.max_characters:
        raise ValueError(f"Prompt {i} has {len(chars)} characters; the model takes at most "
                         f"{self.max_characters}.")
      for j, images in enumerate(chars):
        if not 1 <= len(images) <= self.num_references:
          raise ValueError(f"Character {j} of prompt {i} has {len(images)} reference images; "
                           f"expected 1 to {self.num_references}.")
    if layout is not None and len(layout) != len(prompts):
      raise ValueError(f"layout has {len(layout)} entries for {len(prompts)} prompts.")
    if num_frames < 1:
      raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    self.model_frames(num_frames)  # a count the autoencoder does not take: one sentence
    if steps < 1:
      raise ValueError(f"steps must be >= 1, got {steps}.")
    if sampler not in samplers.METHODS:
      raise ValueError(f"Unknown sampler {sampler!r}; expected one of {samplers.METHODS}.")
    if np.any((strengths < 0) | (strengths > 1)) or not np.all(np.isfinite(strengths)):
      raise ValueError("identity_strength must lie in [0, 1].")

  def _identity_inputs(self, host, sl) -> models.IdentityInputs:
    """The model's identity inputs for examples `sl` of a host batch, on the
    mesh: encoded references, validity, face masks and (for models that read
    it) the reference canvas."""
    refs = self._put_batch(host.references[sl])
    emb, feats = self._encode_fn()(self.face_params, refs)
    ref_valid = self._put_batch(host.ref_valid[sl])
    char_valid = self._put_batch(host.char_valid[sl])
    canvas = None
    if self.model.reference_canvas and host.boxes is not None:
      canvas = self._canvas_fn()(self.autoencoder_params, refs,
                                 self._put_batch(host.mattes[sl]), ref_valid, char_valid,
                                 self._put_batch(host.boxes[sl]))
    return models.IdentityInputs(
        ref_embeddings=emb, ref_features=feats, ref_valid=ref_valid, char_valid=char_valid,
        face_masks=jax.device_put(host.face_masks[sl], self._frames_sharding(5, axis=2)),
        ref_canvas=canvas)

  # --- the API -----------------------------------------------------------

  def generate(self, prompts, references=None, num_frames=None, identity_strength=None,
               text_guidance=None, identity_guidance=None, steps=None, sampler=None,
               seed=0, layout=None, shift=None, renoise=None, progress=True,
               on_frames=None) -> dict:
    """Samples one clip per prompt.

    Args:
      prompts: B strings.
      references: None (text only) or, per prompt, a list of characters, each
        a list of 1..K reference images (uint8 arrays or PIL images, any size
        and mode). A prompt with an empty list is text only. An alpha
        channel (RGBA, LA) is the head's matte, which a model with
        model.canvas_alpha reads (`prepare_matte`).
      num_frames: T (default config.sample.num_frames); 1 + 4k with the Wan
        VAE (temporal factor 4), which the model samples as 1 + k latent frames.
      identity_strength: float or [B] floats in [0, 1], scales the identity path.
      text_guidance, identity_guidance: CFG scales (1 = no guidance).
      steps: ODE steps; sampler: "euler" or "heun"; shift: timestep shift
        (samplers.timesteps; default config.sample.shift).
      seed: int (sample i gets seed + i) or B ints (one per sample).
      layout: None (identity unrouted) or, per prompt, one box-trajectory spec
        per character ([4], [2, 4] start/end, or [T, 4]; see layout.py).
      renoise: share in [0, 1] of the noise swapped for fresh noise after each
        Euler step (samplers.renoise_step; default config.sample.renoise; 0
        is the ODE sampler). The fresh noise comes from each example's seed.
      progress: tqdm bar over denoising steps.
      on_frames: None, or a function called as the clips are decoded, with
        (i, uint8 [n, t, H, W, 3]): the next t frames of samples i .. i + n - 1
        (a group's frames in order of time, groups in order of samples), so
        a writer can take them as they come.

    Returns:
      dict(frames uint8 [B, T, H, W, 3], boxes float32 [B, C, T, 4] or None,
      masks float32 [B, C, T, H, W] or None, metadata: B dicts (seed,
      identity_strength, prompt, num_references), timings: dict of seconds).
    """
    defaults = self.config.sample
    num_frames = int(defaults.num_frames if num_frames is None else num_frames)
    steps = int(defaults.steps if steps is None else steps)
    sampler = defaults.sampler if sampler is None else sampler
    s_text = float(defaults.text_guidance if text_guidance is None else text_guidance)
    s_id = float(defaults.identity_guidance if identity_guidance is None else identity_guidance)
    strength = defaults.identity_strength if identity_strength is None else identity_strength
    shift = float(defaults.shift if shift is None else shift)
    eta = float(defaults.renoise if renoise is None else renoise)
    self.check_renoise(eta, sampler)
    prompts = list(prompts)
    b = len(prompts)
    references = [[] for _ in prompts] if references is None else [list(c) for c in references]
    strengths = np.broadcast_to(np.asarray(strength, np.float32), (b,)).copy()
    seeds = (np.arange(b, dtype=np.int64) + int(seed) if np.ndim(seed) == 0
             else np.asarray(seed, np.int64).reshape(-1))
    if len(seeds) != b:
      raise ValueError(f"seed has {len(seeds)} values for {b} prompts.")
    self._check(prompts, references, layout, num_frames, strengths, steps, sampler)
    boxes = None
    if layout is not None:
      boxes = layout_lib.layout_boxes(layout, [len(c) for c in references],
                                      self.max_characters, num_frames)

    timings = {}
    start = time.perf_counter()
    host = self._host_batch(prompts, references, num_frames, strengths, seeds, boxes)
    timings["prepare_s"] = time.perf_counter() - start

    passes = memory.guidance_passes(s_text, s_id)
    step_fn = self._step_fn(sampler, passes, renoise=eta > 0)
    grid = samplers.timesteps(steps, shift)
    g = self.chunk
    chunks = []
    start = time.perf_counter()
    for lo in range(0, len(host.noise), g):
      sl = slice(lo, lo + g)
      identity = self._identity_inputs(host, sl)
      chunks.append(dict(
          x=jax.device_put(host.noise[sl], self._frames_sharding(5)),
          text=self._put_batch(host.text[sl]),
          embeddings=(None if host.text_embeddings is None
                      else self._put_batch(host.text_embeddings[sl])),
          identity=identity, strength=self._put_batch(host.strength[sl])))
    jax.block_until_ready([c["identity"] for c in chunks])
    timings["encode_s"] = time.perf_counter() - start
    s_text_a = jax.device_put(jnp.float32(s_text), self._replicated)
    s_id_a = jax.device_put(jnp.float32(s_id), self._replicated)
    eta_a = jax.device_put(jnp.float32(eta), self._replicated)
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"{sampler} x{passes}", disable=not progress, leave=False)
    # The model's activation constraints take effect here, as in training
    # (the step is traced on its first call).
    with sharding.activation_sharding(self.mesh, self.rules):
      for i in bar:
        t = jax.device_put(grid[i], self._replicated)
        t_next = jax.device_put(grid[i + 1], self._replicated)
        fresh = None
        if eta > 0:
          fresh = self._seeded_noise(seeds, len(host.noise), host.noise.shape[1:], i + 1,
                                     "sample/renoise")
        for lo, c in zip(range(0, len(host.noise), g), chunks):
          extra = () if fresh is None else (
              jax.device_put(fresh[lo:lo + g], self._frames_sharding(5)), eta_a)
          c["x"] = step_fn(self.params, c["x"], t, t_next, c["text"], c["identity"],
                           c["strength"], s_text_a, s_id_a, c["embeddings"], *extra)
        if i == 0:
          jax.block_until_ready([c["x"] for c in chunks])
          timings["first_step_s"] = time.perf_counter() - start  # includes compilation
    frames = []
    for lo, c in zip(range(0, len(host.noise), g), chunks):
      real = min(g, b - lo)  # the group's samples, not its padding (only the last has some)
      sink = None if on_frames is None else (
          lambda part, lo=lo, real=real: on_frames(lo, part[:real]))
      frames.append(self._to_frames(c["x"], sink))
    frames = np.concatenate(frames)[:b]
    timings["sampling_s"] = time.perf_counter() - start
    timings["steps"] = steps
    timings["model_passes_per_evaluation"] = passes
    timings["seconds_per_step_after_first"] = (
        (timings["sampling_s"] - timings["first_step_s"]) / max(steps - 1, 1))
    metadata = [dict(seed=int(seeds[i]), identity_strength=float(strengths[i]), prompt=prompts[i],
                     num_references=[len(c) for c in references[i]]) for i in range(b)]
    res = self.resolution
    return dict(frames=frames[..., :3], boxes=boxes,
                masks=None if boxes is None else layout_lib.face_masks(boxes, res, res),
                metadata=metadata, timings=timings)
