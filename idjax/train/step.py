"""The pure train step: batch -> losses -> grads -> (guarded) optax update.

Randomness is drawn per example from `derive(rng, step, purpose)` folded with
the example's global `index`, so the step computes the same numbers on any
mesh and for any batch slot. Gradient accumulation is a `lax.scan` over
micro-batches inside the step (the step stays one function and one jit);
micro-batch m takes examples m, m + A, m + 2A, ... so that every micro-batch
stays spread over all data-parallel devices.
"""

import einops
import jax
import jax.numpy as jnp

from idjax import config_rules, diffusion, losses
from idjax.conditioning import encode_references, model_canvas, model_face_masks
from idjax.models.identity import IdentityInputs
from idjax.rng import derive, per_example
from idjax.train.state import (TrainState, apply_gradients, make_optimizer, merge, partition,
                               trainable_filter)


def draw_example_randomness(train_config, root, step, index, frames_shape, clip_frames=None):
  """Every per-example random draw of one step, keyed by global example index.

  frames_shape: the shape of what the model diffuses, [B, T', h, w, C] (the
  noise's). clip_frames: the clip's frame count, from which the identity
  loss's window is drawn (default T'; they differ for an autoencoder that
  packs several frames into a latent frame).
  """
  def keys(purpose):
    return per_example(derive(root, step, purpose), index)

  def bernoulli(purpose, rate):
    return jax.vmap(lambda k: jax.random.bernoulli(k, rate))(keys(purpose))

  num_frames = frames_shape[1]  # of the model's grid: latent frames in latent space
  id_frames = num_frames if clip_frames is None else clip_frames
  window = min(int(train_config.id_loss_frames), id_frames)
  # Clean context (train.context_prob): the first `context` frames of the
  # example are given at t = 0 and only the rest are noised and scored, so
  # the model learns to continue a clip (what long-video chunks do).
  context_prob = float(train_config.get("context_prob", 0.0))
  extra = {}
  if context_prob > 0 and num_frames > 1:
    count = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_frames))(keys("context_frames"))
    extra["context"] = jnp.where(bernoulli("context", context_prob), count, 0)
  return dict(
      **extra,
      t=jax.vmap(lambda k: diffusion.sample_logit_normal(
          k, (), train_config.t_logit_mean, train_config.t_logit_std))(keys("t")),
      noise=jax.vmap(lambda k: jax.random.normal(k, frames_shape[1:], jnp.float32))(
          keys("noise")),
      drop_text=bernoulli("text_dropout", train_config.text_dropout),
      drop_identity=bernoulli("identity_dropout", train_config.identity_dropout),
      drop_mask=bernoulli("mask_dropout", train_config.mask_dropout),
      drop_matte=bernoulli("matte_dropout", float(train_config.get("matte_dropout", 0.0))),
      id_start=jax.vmap(lambda k: jax.random.randint(k, (), 0, id_frames - window + 1))(
          keys("id_frames")),
  )


def make_train_step(config, model, encoder, autoencoder=None):
  """Returns `train_step(state, batch, frozen) -> (state, metrics)`.

  `frozen` = dict(face=face-encoder params, autoencoder=autoencoder params or
  None): the frozen networks' params are an argument rather than part of the
  state, so they are never updated or checkpointed with the video model, and
  the step wraps them in stop_gradient.

  With train.trainable = "adapters" only the identity path is differentiated
  and updated (`state.trainable_filter`); the backbone's params enter the
  loss as constants.

  With an `autoencoder` (config.model.space == "latent") the model diffuses
  the clip's latents: frames are encoded here (no gradient), masks are built
  at the latent grid, and the identity loss decodes the clean estimate's
  window through the frozen decoder, whose gradient reaches the model. With
  a temporal factor f > 1 (the Wan VAE: T = 1 + 4k frames, 1 + k latent
  frames) a latent frame's masks are the union of its frames' masks
  (layout.latent_face_masks), and the identity loss's window of frames is
  cut from the decoded clip (losses.decoded_window_embeddings).
  """
  tc = config.train
  tx, schedule = make_optimizer(tc)
  lambda_id = float(tc.lambda_id)
  # Configs saved before the key existed trained everything (config_rules.ABSENT_AS).
  trainable = trainable_filter(tc.get("trainable", "all"), model)
  temporal_factor = 1 if autoencoder is None else autoencoder.temporal_factor
  # The model's face masks come from the boxes shrunk by this factor; the
  # identity loss crops the faces by the boxes themselves.
  mask_scale = float(config.model.get("face_mask_scale",
                                      config_rules.ABSENT_AS["model.face_mask_scale"]))

  def split(params):
    """(the params that are differentiated, the fixed rest or None)."""
    return (params, None) if trainable is None else partition(params, trainable)

  def prepare(state, batch, frozen):
    """Inputs of the loss for the whole batch (nothing here is differentiated)."""
    x0 = diffusion.to_model_space(batch["frames"])
    frame_height, frame_width = x0.shape[2:4]
    to_model = lambda x: x
    if autoencoder is not None:
      to_model = lambda x: jax.lax.stop_gradient(autoencoder.encode(frozen["autoencoder"], x))
      x0 = to_model(x0)
    r = draw_example_randomness(tc, state.root_key, state.step, batch["index"], x0.shape,
                                clip_frames=batch["frames"].shape[1])
    ref_emb, ref_fmap = encode_references(encoder, frozen["face"], batch["references"])
    char_valid = batch["character_valid"] & ~r["drop_identity"][:, None]
    canvas = None
    if model.reference_canvas:
      # Without masks (mask dropout) there is no layout to draw the
      # references in, as when sampling without boxes.
      # Matte dropout: all-ones mattes (none known), as for references
      # without an alpha channel.
      mattes = None
      if getattr(model, "canvas_alpha", False):  # the model's input width decides
        mattes = jnp.where(r["drop_matte"][:, None, None, None, None], 1,
                           batch["reference_mattes"])
      canvas = model_canvas(
          batch["references"], batch["reference_valid"],
          char_valid & ~r["drop_mask"][:, None], batch["boxes"], frame_height, frame_width,
          mask_scale, to_model, mattes, temporal_factor)
    # Masks from the boxes, exactly as sampling builds them from a layout
    # (conditioning.model_face_masks).
    height, width = x0.shape[2:4]
    masks = model_face_masks(batch["boxes"], height, width, temporal_factor, mask_scale)
    # Mask dropout: all-ones masks teach the model to place the face itself,
    # as it must when sampling without a layout.
    masks = jnp.where(r["drop_mask"][:, None, None, None, None], 1.0, masks)
    # Per-frame timesteps [B, T] when some examples have clean context.
    if "context" in r:
      new_frames = jnp.arange(x0.shape[1])[None, :] >= r["context"][:, None]
      t_model = jnp.where(new_frames, r["t"][:, None], 0.0)
    else:
      new_frames, t_model = None, r["t"]
    return dict(
        x0=x0, noise=r["noise"], t=r["t"], t_model=t_model, new_frames=new_frames,
        id_start=r["id_start"],
        text_tokens=jnp.where(r["drop_text"][:, None], 0, batch["text_tokens"]),
        ref_emb=ref_emb, ref_fmap=ref_fmap, ref_valid=batch["reference_valid"],
        char_valid=char_valid, masks=masks, boxes=batch["boxes"], canvas=canvas,
        # Precomputed UMT5 output (a Wan model's data.text_embeddings), or None.
        # Text dropout needs nothing more: the model zeroes every position
        # whose token is 0, and dropped rows have all tokens 0.
        text_embeddings=batch.get("text_embeddings"))

  def loss_fn(trained, fixed, mb, frozen, dropout_key):
    params = trained if fixed is None else merge(fixed, trained)
    t = mb["t_model"]
    x_t = diffusion.noisy_sample(mb["x0"], mb["noise"], t)
    identity = IdentityInputs(mb["ref_emb"], mb["ref_fmap"], mb["ref_valid"],
                              mb["char_valid"], mb["masks"], mb["canvas"])
    strength = jnp.ones_like(mb["t"])
    text = {} if mb["text_embeddings"] is None else {"text_embeddings": mb["text_embeddings"]}
    v_hat = model.apply({"params": params}, x_t, t, mb["text_tokens"], identity,
                        strength, deterministic=False, rngs={"dropout": dropout_key}, **text)
    target = diffusion.velocity_target(mb["x0"], mb["noise"])
    if mb["new_frames"] is None:
      per_example = losses.denoising_loss(v_hat, target)
      denoise = jnp.mean(per_example * loss_weight(mb["t"]))
    else:  # the mean over each example's new frames; context frames are given
      per_frame = losses.denoising_loss(v_hat, target, example_axes=2)
      new = mb["new_frames"].astype(jnp.float32)
      denoise = jnp.mean(jnp.sum(per_frame * loss_weight(t) * new, axis=1)
                         / jnp.sum(new, axis=1))
    metrics = dict(denoise_loss=denoise)
    total = denoise
    if lambda_id > 0:
      x0_hat = diffusion.clean_estimate(x_t, t, v_hat.astype(jnp.float32))
      low_noise = (mb["t"] <= tc.id_loss_max_t).astype(jnp.float32)
      weight = mb["char_valid"].astype(jnp.float32) * low_noise[:, None]
      frozen = jax.lax.stop_gradient(frozen)
      to_pixels = None if autoencoder is None else (
          lambda z: autoencoder.decode(frozen["autoencoder"], z))
      clip_frames = mb["boxes"].shape[2]  # one box per frame of the clip (T >= T')
      identity_loss, terms = losses.identity_loss_on_estimate(
          x0_hat, mb["boxes"], mb["id_start"], mb["ref_emb"], mb["ref_valid"], weight,
          lambda crops: encoder.apply(frozen["face"], crops)[0], encoder.input_size,
          min(int(tc.id_loss_frames), clip_frames), tc.lambda_temporal, to_pixels,
          latent_window=min(int(tc.get("id_loss_latent_window", 0)), *x0_hat.shape[2:4]),
          temporal_factor=temporal_factor)
      total = total + lambda_id * identity_loss
      metrics.update(identity_loss=identity_loss, id_reference=terms["reference"],
                     id_temporal=terms["temporal"], id_active=jnp.mean(low_noise))
    return total, metrics

  def loss_weight(t):
    """"velocity": plain velocity MSE. "clean": velocity MSE times t^2, i.e.
    the MSE of the clean estimate x0_hat = x_t - t v_hat; it does not let the
    nearly-clean timesteps (1/t^2) drown the high-noise ones, where a small
    model on a small budget must learn the clip's global layout."""
    if tc.loss_weighting == "velocity":
      return jnp.ones_like(t)
    if tc.loss_weighting == "clean":
      return jnp.square(t)
    raise ValueError(f"train.loss_weighting must be 'velocity' or 'clean', got {tc.loss_weighting!r}.")

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def loss_and_grads(params, inputs, frozen, key):
    """(loss, metrics, grads of the trained params: all, or a pruned tree)."""
    trained, fixed = split(params)
    accum = int(tc.grad_accum)
    if accum == 1:
      (loss, metrics), grads = grad_fn(trained, fixed, inputs, frozen, key)
      return loss, metrics, grads
    micro = jax.tree.map(lambda a: einops.rearrange(a, "(b m) ... -> m b ...", m=accum), inputs)

    def body(carry, xs):
      mb, m = xs
      (loss, metrics), grads = grad_fn(trained, fixed, mb, frozen, jax.random.fold_in(key, m))
      return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: grad_fn(trained, fixed, jax.tree.map(lambda a: a[0], micro), frozen, key)))
    zeros = (zeros[0][0], zeros[0][1], zeros[1])
    total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
    return jax.tree.map(lambda a: a / accum, total)

  def train_step(state: TrainState, batch, frozen):
    inputs = prepare(state, batch, frozen)
    key = derive(state.root_key, state.step, "dropout")
    loss, metrics, grads = loss_and_grads(state.params, inputs, frozen, key)
    new_state, update = apply_gradients(state, tx, grads, loss, tc.ema_decay)
    metrics.update(update, loss=loss, lr=schedule(state.step), t_mean=jnp.mean(inputs["t"]))
    return new_state, metrics

  return train_step
