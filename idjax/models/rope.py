"""Rotary position embeddings over one or more axes (t; or h, w).

Positions come from the input's shape, never from a learned table, so a model
trained on 8 frames of 32x32 runs on longer and larger clips unchanged.

A head of size H is split between the A position axes: each axis rotates
2 * floor(H / (2A)) channels; leftover channels (when H is not a multiple of
2A) are passed through unrotated.
"""

import einops
import jax.numpy as jnp
import numpy as np


def grid_positions(*sizes: int) -> np.ndarray:
  """Integer coordinates of a row-major grid: [prod(sizes), len(sizes)].

  `grid_positions(h, w)[i]` is (row, col) of the i-th token of a frame
  flattened as "(h w)"; `grid_positions(t)` is just 0..t-1.
  """
  mesh = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
  return np.stack([m.reshape(-1) for m in mesh], axis=-1).astype(np.float32)


def rope_angles(positions, head_dim: int, theta: float = 10_000.0) -> np.ndarray:
  """Rotation angles [L, R/2] for positions [L, A]; R = rotated channels.

  Computed in NumPy: positions are static (from shapes), so the table is a
  compile-time constant.
  """
  positions = np.asarray(positions, np.float32)
  num_axes = positions.shape[-1]
  per_axis = 2 * (head_dim // (2 * num_axes))
  if per_axis == 0:
    raise ValueError(f"head_dim={head_dim} is too small for RoPE over {num_axes} axes.")
  inv_freq = theta ** (-np.arange(0, per_axis, 2, dtype=np.float32) / per_axis)
  angles = [positions[:, a:a + 1] * inv_freq[None, :] for a in range(num_axes)]
  return np.concatenate(angles, axis=-1)


def apply_rope(x, angles):
  """Rotates channel pairs of x [B, L, N, H] by angles [L, R/2] (R <= H).

  Pairs are adjacent channels (2i, 2i+1). Rotation keeps norms, so q.k then
  depends only on relative position along each axis.
  """
  rotated = 2 * angles.shape[-1]
  x_rot, x_pass = x[..., :rotated], x[..., rotated:]
  pairs = einops.rearrange(x_rot.astype(jnp.float32), "... (r two) -> ... r two", two=2)
  cos = jnp.cos(angles)[None, :, None, :]
  sin = jnp.sin(angles)[None, :, None, :]
  a, b = pairs[..., 0], pairs[..., 1]
  out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
  out = einops.rearrange(out, "... r two -> ... (r two)").astype(x.dtype)
  return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out
