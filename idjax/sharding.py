"""The one place where logical axis names meet the device mesh.

Models name axes (`batch`, `frames`, `embed`, `heads`, ...) on parameters and
activations; the rules table below (copied into every config as
`config.sharding.rules`) maps each name to mesh axes. Nothing else in idjax
mentions a mesh axis.

Mesh axes:
  data      pure data parallelism (replicated parameters)
  fsdp      data parallelism with parameters and optimizer state sharded
  tensor    Megatron-style sharding of heads and MLP hidden units
  sequence  frames of a long video; spatial attention is then local, and the
            temporal layers reshard to put `sequence` on patches instead
            (one all-to-all each way)
"""

from collections.abc import Sequence
import math

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# Logical name -> mesh axes. A mesh axis is used at most once per array: when
# two names of one array map to the same mesh axis, the later one falls
# through to its next rule (or stays replicated). So activations can reuse
# the parameter names: `embed` is fsdp-sharded in weights but replicated in
# activations whose `batch` already took fsdp.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("frames", "sequence"),
    ("patches", None),
    ("temporal_frames", None),
    ("temporal_patches", "sequence"),
    ("length", None),
    ("chars", None),
    ("refs", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
)


def rules_from_config(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Normalises a rules table read from a config (lists become tuples)."""
  out = []
  for name, axes in rules:
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
    out.append((str(name), axes))
  return tuple(out)


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves `-1` (at most one) to the devices left over; checks the product."""
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  fill = [i for i, s in enumerate(shape) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}.")
  known = math.prod(s for s in shape if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"Cannot fill mesh {dict(zip(MESH_AXES, shape))} with {num_devices} devices.")
    shape[fill[0]] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"Mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, but {num_devices} are in use."
    )
  return tuple(shape)


def make_mesh(sizes: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None,
              dcn_sizes: dict[str, int] | None = None) -> Mesh:
  """A mesh over `devices` (default: all) with axes (data, fsdp, tensor, sequence).

  `sizes` are the per-slice (ICI) sizes, one of them may be -1. `dcn_sizes`,
  for multi-slice pods, are the sizes across slices (DCN); the mesh axis size
  is then their product, laid out so that DCN traffic stays on its own axes.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = dict(sizes or {"data": -1})
  if dcn_sizes:
    dcn = tuple(int(dcn_sizes.get(a, 1)) for a in MESH_AXES)
    ici = mesh_shape(sizes, len(devices) // math.prod(dcn))
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  else:
    shape = mesh_shape(sizes, len(devices))
    try:
      grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
      # Topology-aware placement only exists for some platforms; a plain
      # reshape is right for CPUs and single GPUs.
      grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def logical_to_sharding(logical_spec, mesh: Mesh, rules) -> NamedSharding:
  """NamedSharding for one array given its logical axis names (tuple of str|None)."""
  spec = nn.logical_to_mesh_axes(tuple(logical_spec), rules_from_config(rules))
  return NamedSharding(mesh, spec)


def tree_shardings(logical_specs, mesh: Mesh, rules):
  """Maps a pytree of logical PartitionSpecs (from `nn.get_partition_spec`)."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules_from_config(rules))


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
  """Shards the leading (batch) axis of an `ndim`-dimensional input array."""
  return logical_to_sharding(("batch",) + (None,) * (ndim - 1), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_axis_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
  """How many ways the batch axis is split (a global batch must divide by it)."""
  spec = nn.logical_to_mesh_axes(("batch",), rules_from_config(rules))[0]
  axes = (spec,) if isinstance(spec, str) else (spec or ())
  return math.prod(mesh.shape[a] for a in axes)


class activation_sharding:
  """Context in which `nn.with_logical_constraint` inside models takes effect.

  Use around tracing (jit/lower) of model code:
      with activation_sharding(mesh, rules): jax.jit(step)(...)
  """

  def __init__(self, mesh: Mesh, rules):
    self._mesh_ctx = jax.set_mesh(mesh)
    self._rules_ctx = nn.logical_axis_rules(rules_from_config(rules))

  def __enter__(self):
    self._mesh_ctx.__enter__()
    self._rules_ctx.__enter__()
    return self

  def __exit__(self, *exc):
    self._rules_ctx.__exit__(*exc)
    return self._mesh_ctx.__exit__(*exc)
