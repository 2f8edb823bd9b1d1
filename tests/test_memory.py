"""The sampling memory estimate counts each device's share of the sharded params."""

import flax.linen as nn
import jax
import numpy as np

from idjax import models, sharding
from idjax.sampling import memory
from helpers import tiny_sample_config


def _params(config):
  """The model's boxed abstract params (as `param_bytes_per_device` makes them)."""
  m = config.model
  args = models.dummy_inputs(
      m, batch=1, frames=1, height=4, width=4, text_len=1, num_chars=m.max_characters
  )
  return jax.eval_shape(models.build_model(m).init, jax.random.key(0), *args)["params"]


def test_params_per_device_are_their_shards_under_the_rules(devices):
  config = tiny_sample_config()
  boxed = _params(config)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  total = sum(np.prod(p.value.shape) * p.value.dtype.itemsize for p in leaves)
  # By hand: a param with "embed" among its axis names (the rules' fsdp axis)
  # is split 8 ways on an fsdp=8 mesh; every other param is replicated.
  split = sum(np.prod(p.value.shape) * p.value.dtype.itemsize for p in leaves if "embed" in p.names)
  assert 0.8 * total < split < total
  one = sharding.make_mesh({"data": 1}, devices[:1])
  fsdp = sharding.make_mesh({"fsdp": 8}, devices)
  assert memory.param_bytes_per_device(config, one) == total
  assert memory.param_bytes_per_device(config, fsdp) == total - split + split // 8
  # A data-parallel mesh replicates every param.
  assert memory.param_bytes_per_device(config, sharding.make_mesh({"data": 8}, devices)) == total


def test_sampling_estimate_drops_by_the_params_saved(devices):
  config = tiny_sample_config()
  one = memory.param_bytes_per_device(config, sharding.make_mesh({"data": 1}, devices[:1]))
  eight = memory.param_bytes_per_device(config, sharding.make_mesh({"fsdp": 8}, devices))
  a = memory.sampling_bytes(config, 4, 1, 3, params=one)
  b = memory.sampling_bytes(config, 4, 1, 3, params=eight)
  assert a - b == one - eight > 0
  # The default mesh is config.mesh over every device (data=-1 here).
  assert memory.sampling_bytes(config, 4, 1, 3) == a
