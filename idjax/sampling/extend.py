"""Long clips chunk by chunk, and continuing a given clip.

A clip of T frames is made in chunks of `chunk_frames` frames. Every chunk
after the first starts with the last `context_frames` frames made so far (or
given), as clean context, and adds `chunk_frames - context_frames` new ones.

How the context is held clean. A model trained with clean context
(`train.context_prob` > 0: some training clips have their first frames
given at t = 0 and only the rest noised) takes per-frame timesteps: the
context frames enter every step clean, at t = 0, and do not move (their
step is (0 - 0) v). Any other model takes one timestep per example, so the
sampler "replaces": before every ODE step at noise level t the context
frames of the state are set to the known clean context noised to t,
`(1 - t) ctx + t n_ctx` (the rectified-flow forward process), and after the
last step to the context itself. The new frames see, through temporal
attention, a context that is exactly where the forward process would put
it, so they are pulled towards continuing it (inpainting by replacement;
no retraining). The output's context and given frames are the uint8 frames
themselves, so they are bit-exact by construction.

Determinism and chunk size. The noise of output frame f is
`normal(rng.derive(seed, f, "extend/noise"))` whatever chunk it falls in,
and the context noise of the chunk whose window starts at frame s is
`rng.derive(seed, s, "extend/context")`: a chunk is a pure function of
(seed, its window, the frames before it). Identity inputs (the references)
and the layout trajectory (computed once for the whole clip, then cut per
window) are shared by every chunk. Hence extending the first chunk of a
chunked clip with the same settings reproduces the rest of it exactly.

Context in latent space: the context frames are encoded (uint8 -> model
space -> the autoencoder's encoder) alone, m frames in one fixed shape;
the whole chunk, context included, is decoded, and only its new frames kept.
That needs one latent frame per frame. An autoencoder with a temporal factor
> 1 (the Wan VAE) is refused: its causal encoder encodes the first frame of
a call alone, so context frames encoded on their own are not the latents
they have inside the clip, and chunk and context lengths would have to be
1 + 4k frames; such a model samples a whole clip of 1 + 4k frames in one
`Generator.generate` call.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from idjax import diffusion
from idjax import layout as layout_lib
from idjax import rng
from idjax import sharding
from idjax.sampling import memory
from idjax.sampling import samplers


def _frame_noise_fn(shape):
  """(root key, int32 frame indices [n]) -> noise [n, *shape], one draw per frame."""

  def draw(root, frames):
    return jax.vmap(
        lambda f: jax.random.normal(rng.derive(root, f, "extend/noise"), shape, jnp.float32)
    )(frames)

  return jax.jit(draw)


def _boxes_for(layout, num_chars, max_chars, num_frames, padded_frames):
  """The clip's boxes [C, padded_frames, 4]: the layout's trajectory over the
  clip's `num_frames`, its last box repeated for frames a last chunk makes past
  the end (they are cut off)."""
  boxes = layout_lib.layout_boxes([layout], [num_chars], max_chars, num_frames)[0]
  pad = np.repeat(boxes[:, -1:], padded_frames - num_frames, axis=1)
  return np.concatenate([boxes, pad], axis=1)


def _to_model_space(generator, frames_u8):
  """uint8 [1, m, H, W, 3] -> the model's clean space [1, m, h, w, C]."""
  x = diffusion.to_model_space(jnp.asarray(frames_u8))
  if generator.autoencoder is None:
    return x
  return generator.autoencoder.encode(generator.autoencoder_params, x)


def extend(
    generator,
    prompt: str,
    references=(),
    num_frames: int | None = None,
    *,
    given=None,
    chunk_frames: int | None = None,
    context_frames: int | None = None,
    seed: int = 0,
    layout=None,
    identity_strength=None,
    text_guidance=None,
    identity_guidance=None,
    steps=None,
    sampler=None,
    shift=None,
    renoise=None,
    progress: bool = False,
) -> dict:
  """One clip of `num_frames` frames, chunk by chunk, after the `given` frames.

  Args:
    generator: a sampling.generator.Generator (pixel or latent space).
    prompt, references: as one prompt of Generator.generate (references: a
      list of characters, each a list of 1..K images).
    num_frames: T, the whole clip's length, given frames included.
    given: None or uint8 [G, H, W, 3] (G < T) at the model's resolution: the
      clip to continue. Output frames 0..G-1 are these, bit for bit.
    chunk_frames: frames per model call (default config.sample.num_frames).
    context_frames: m, clean frames each later chunk starts with (default
      chunk_frames // 2); 0 makes independent chunks (the naive baseline).
    layout: None or one box-trajectory spec per character, over all T frames.
    The rest: as Generator.generate.

  Returns:
    dict(frames uint8 [T, H, W, 3], boxes float32 [C, T, 4] or None,
    chunk_starts: the first new frame of every chunk after the first (the
    seams, for drift.seam_consistency), num_given, timings).
  """
  g = generator
  if g.temporal_factor != 1:
    raise ValueError(
        "Chunked sampling (--extend, chunked eval rows) needs one latent frame per frame, but "
        f"this model's autoencoder packs {g.temporal_factor} frames into a latent frame; sample "
        f"the whole clip in one call instead (1 + {g.temporal_factor}k frames)."
    )
  d = g.config.sample
  num_frames = int(d.num_frames if num_frames is None else num_frames)
  chunk = int(d.num_frames if chunk_frames is None else chunk_frames)
  m = chunk // 2 if context_frames is None else int(context_frames)
  steps = int(d.steps if steps is None else steps)
  sampler = d.sampler if sampler is None else sampler
  s_text = float(d.text_guidance if text_guidance is None else text_guidance)
  s_id = float(d.identity_guidance if identity_guidance is None else identity_guidance)
  strength = float(d.identity_strength if identity_strength is None else identity_strength)
  shift = float(d.shift if shift is None else shift)
  eta = float(d.renoise if renoise is None else renoise)
  references = [list(c) for c in references]
  res = g.resolution
  given = np.zeros((0, res, res, 3), np.uint8) if given is None else np.asarray(given)
  pt = int(g.config.model.patch_size[0])
  if chunk < 1 or chunk % pt:
    raise ValueError(f"chunk_frames must be a positive multiple of {pt}, got {chunk}.")
  if not 0 <= m < chunk:
    raise ValueError(f"context_frames must lie in 0..{chunk - 1}, got {m}.")
  if given.dtype != np.uint8 or given.ndim != 4 or given.shape[1:] != (res, res, 3):
    raise ValueError(
        f"The given frames must be uint8 [G, {res}, {res}, 3], got "
        f"{given.dtype} {list(given.shape)}."
    )
  if len(given) >= num_frames:
    raise ValueError(f"{num_frames} frames leave nothing to add to {len(given)} given frames.")
  clean_context = float(g.config.train.get("context_prob", 0.0)) > 0
  strengths = np.full((1,), strength, np.float32)
  g._check(
      [prompt],
      [references],
      None if layout is None else [layout],
      num_frames,
      strengths,
      steps,
      sampler,
  )
  g.check_renoise(eta, sampler)

  padded = num_frames + chunk
  boxes = None
  if layout is not None:
    boxes = _boxes_for(layout, len(references), g.max_characters, num_frames, padded)
  passes = memory.guidance_passes(s_text, s_id)
  step_fn = g._step_fn(sampler, passes, renoise=eta > 0)
  grid = samplers.timesteps(steps, shift)
  side, rows = g.model_side, g.chunk
  noise_fn = _frame_noise_fn((side, side, g.channels))
  root = jax.random.key(int(seed))
  x_sharding = g._frames_sharding(5)
  put = lambda a: jax.device_put(a, g._replicated)

  @jax.jit
  def replace(x, ctx, ctx_noise, t):
    noised = (1.0 - t) * ctx + t * ctx_noise
    return jax.lax.with_sharding_constraint(
        x.at[:, : ctx.shape[1]].set(jnp.broadcast_to(noised, (x.shape[0],) + noised.shape[1:])),
        x_sharding,
    )

  frames = [given]
  made = len(given)
  starts = []
  timings = dict(chunks=0, sampling_s=0.0)
  start_time = time.perf_counter()
  s_text_a, s_id_a, eta_a = (put(jnp.float32(v)) for v in (s_text, s_id, eta))
  while made < num_frames:
    ctx_len = min(m, made)
    if clean_context:  # whole temporal patches, which take one t
      ctx_len -= ctx_len % pt
    lo = made - ctx_len
    if made > 0:
      starts.append(made)
    window = None if boxes is None else boxes[None, :, lo : lo + chunk]
    host = g._host_batch([prompt], [references], chunk, strengths, [seed], window)
    identity = g._identity_inputs(host, slice(0, rows))
    noise = np.zeros((rows, chunk, side, side, g.channels), np.float32)
    frame_ids = jnp.arange(lo, lo + chunk, dtype=jnp.int32)
    noise[0] = np.asarray(noise_fn(root, frame_ids))
    x = jax.device_put(noise, x_sharding)
    text, strength_a = g._put_batch(host.text[:rows]), g._put_batch(host.strength[:rows])
    embeddings = None if host.text_embeddings is None else g._put_batch(host.text_embeddings[:rows])
    ctx = ctx_noise = None
    if ctx_len:
      clip = np.concatenate(frames)[lo:made]
      ctx = _to_model_space(g, clip[None])
      ctx_noise = jax.random.normal(rng.derive(root, lo, "extend/context"), ctx.shape, jnp.float32)
    bar = tqdm(range(steps), desc=f"chunk at {lo}", disable=not progress, leave=False)
    is_new = np.arange(chunk) >= ctx_len
    with sharding.activation_sharding(g.mesh, g.rules):
      if ctx is not None and clean_context:
        x = replace(x, ctx, ctx_noise, put(np.float32(0.0)))
      for i in bar:
        t, t_next = put(grid[i]), put(grid[i + 1])
        if ctx is not None and clean_context:
          t = put(np.where(is_new, grid[i], 0.0).astype(np.float32))
          t_next = put(np.where(is_new, grid[i + 1], 0.0).astype(np.float32))
        elif ctx is not None:
          x = replace(x, ctx, ctx_noise, t)
        extra = ()
        if eta > 0:  # step i + 1's fresh noise, per frame as the starting noise
          fresh = np.zeros_like(noise)
          fresh[0] = np.asarray(noise_fn(rng.derive(root, i + 1, "sample/renoise"), frame_ids))
          extra = (jax.device_put(fresh, x_sharding), eta_a)
        x = step_fn(
            g.params, x, t, t_next, text, identity, strength_a, s_text_a, s_id_a, embeddings, *extra
        )
      if ctx is not None:
        x = replace(x, ctx, ctx_noise, put(np.float32(0.0)))
    new = np.asarray(g._to_frames(x))[0, ctx_len:, ..., :3]
    new = new[: num_frames - made]
    frames.append(new)
    made += len(new)
    timings["chunks"] += 1
  timings["sampling_s"] = time.perf_counter() - start_time
  out = np.concatenate(frames)
  return dict(
      frames=out,
      boxes=None if boxes is None else boxes[:, :num_frames],
      chunk_starts=starts,
      num_given=len(given),
      timings=timings,
  )
