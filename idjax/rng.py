"""Every random draw in idjax derives from (seed, step, purpose).

A key is never split and threaded through code: whoever needs randomness asks
for `derive(seed, step, "what it is for")`. Resuming at step k or resharding
therefore cannot change any draw.
"""

import zlib

import jax


def purpose_id(purpose: str) -> int:
  """A stable 31-bit integer for a purpose string (crc32, not Python's hash)."""
  return zlib.crc32(purpose.encode("utf-8")) & 0x7FFFFFFF


def derive(seed, step, purpose: str) -> jax.Array:
  """The key for `purpose` at `step` of the run seeded with `seed`.

  `seed` may be an int or a key (then it is used as the root); `step` may be a
  traced integer, so this works inside jit.
  """
  root = jax.random.key(seed) if isinstance(seed, int) else seed
  return jax.random.fold_in(jax.random.fold_in(root, step), purpose_id(purpose))


def per_example(key: jax.Array, indices) -> jax.Array:
  """One key per example, from the example's global index (not its batch slot),

  so a sample is the same whether drawn alone or inside any batch.
  """
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
