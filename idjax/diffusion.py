"""Rectified flow (flow matching) in the pixel / latent space of the model.

A clip x0 and Gaussian noise are joined by a straight line,
`x_t = (1 - t) x0 + t noise`, t in [0, 1] (t = 1 is pure noise). The model
predicts the constant velocity along that line, `v = noise - x0`; from a
prediction v_hat at (x_t, t) the clean-sample estimate is `x0_hat = x_t - t v_hat`.
Sampling integrates dx/dt = v from t = 1 down to t = 0.
"""

import jax
import jax.numpy as jnp


def to_model_space(frames):
  """uint8 pixels -> float32 in [-1, 1]; float inputs (latents) pass unchanged."""
  frames = jnp.asarray(frames)
  if jnp.issubdtype(frames.dtype, jnp.floating):
    return frames.astype(jnp.float32)
  return frames.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x):
  """float in [-1, 1] -> uint8 pixels (rounded, clipped)."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _expand(t, x):
  """t [B] (or per frame [B, T]) -> [B, (T,) 1, ..., 1] broadcastable against x."""
  return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim))


def noisy_sample(x0, noise, t):
  """x_t = (1 - t) x0 + t noise; x0, noise [B, ...], t [B]."""
  t = _expand(t, x0)
  return (1.0 - t) * x0 + t * noise


def velocity_target(x0, noise):
  """The flow's velocity dx_t/dt = noise - x0."""
  return noise - x0


def clean_estimate(x_t, t, velocity):
  """x0_hat = x_t - t v_hat (exact when v_hat is the true velocity)."""
  return x_t - _expand(t, x_t) * velocity


def sample_logit_normal(key, shape=(), mean=0.0, std=1.0):
  """t = sigmoid(mean + std * N(0, 1)): concentrates training on mid-noise
  levels, where the velocity is hardest to predict (SD3, Esser et al. 2024)."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, shape, jnp.float32))


def timestep_shift(t, shift: float):
  """Warps t toward noise for shift > 1: t' = s t / (1 + (s - 1) t).

  Larger images/videos keep more signal at a given t, so samplers spend more
  steps at high noise by shifting a uniform grid; shift = 1 is the identity,
  and t = 0 and t = 1 are fixed points.
  """
  return shift * t / (1.0 + (shift - 1.0) * t)
