"""idjax: identity-preserving video diffusion in JAX/Flax.

Partitionable threefry makes a random draw independent of how the array that
receives it is sharded, which is what lets a sample drawn on any mesh be
bit-identical to the single-device one.
"""

import jax

jax.config.update("jax_threefry_partitionable", True)

__version__ = "0.1.0"
