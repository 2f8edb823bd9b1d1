"""Why frames split 8 ways over `sequence` can differ from one device in the
last bit on XLA CPU (issue 13; docs/long_video.md, "One shot on a sequence
mesh").

Above a size threshold XLA CPU hands fused elementwise work to YNNPACK
("__ynn_fusion" in the compiled HLO), whose exp rounds differently from XLA's
own loops. A [1, 2, 3840, 4] softmax-style exp(a - max(a)) is one YNN fusion
on one device, and at 480 rows per device (8 devices) it is XLA's loop: 572
of 30720 values differ by one float32 ulp. With
--xla_cpu_experimental_ynn_fusion_type= (empty: no YNN fusions) they agree.

  python scripts/xla_cpu_sequence_bits.py
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python scripts/xla_cpu_sequence_bits.py
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# After the flags on purpose: XLA reads them when JAX starts.
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def main():
  x = np.random.default_rng(0).normal(size=(1, 2, 3840, 4)).astype(np.float32)
  shifted_exp = lambda a: jnp.exp(a - jnp.max(a, axis=-1, keepdims=True))
  one = np.asarray(jax.jit(shifted_exp)(x))
  ynn = "__ynn_fusion" in jax.jit(shifted_exp).lower(x).compile().as_text()
  print(f"XLA_FLAGS={os.environ['XLA_FLAGS']!r}; YNN fusion on one device: {ynn}")
  for n in (2, 4, 8):
    split = NamedSharding(
        Mesh(np.array(jax.devices()[:n]), ("sequence",)), PartitionSpec(None, None, "sequence")
    )
    out = np.asarray(jax.jit(shifted_exp, out_shardings=split)(jax.device_put(x, split)))
    print(
        f"{n} devices ({3840 // n} rows each): {int((out != one).sum())} of {out.size} values "
        f"differ, by at most {float(np.abs(out - one).max()):.3g}"
    )


if __name__ == "__main__":
  main()
