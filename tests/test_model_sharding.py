"""A forward pass sharded over 8 simulated devices equals the single-device one."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from idjax import models, sharding
from helpers import init_random, random_inputs, tiny_model_config

RULES = sharding.DEFAULT_RULES


def _shard_inputs(mesh, args):
  """Batch-sharded inputs; the clip and face masks also shard frames."""
  x, t, tokens, ident, strength = args
  by_batch = lambda a: sharding.batch_sharding(mesh, a.ndim, RULES)
  x_sh = sharding.logical_to_sharding(("batch", "frames", None, None, None), mesh, RULES)
  ident_sh = jax.tree.map(by_batch, ident).replace(
      face_masks=sharding.logical_to_sharding(("batch", None, "frames", None, None), mesh, RULES))
  return (x_sh, by_batch(t), by_batch(tokens), ident_sh, by_batch(strength))


@pytest.fixture(scope="module")
def reference():
  cfg = tiny_model_config(identity_routing="soft")
  model = models.build_model(cfg)
  args = random_inputs(cfg, batch=8, frames=4, size=16, chars=2, refs=2)
  params = init_random(model, args, scale=0.1)
  expected = jax.jit(model.apply)({"params": params}, *args)
  return model, args, params, np.asarray(expected)


@pytest.mark.parametrize("sizes", [
    # Pure data parallelism is also covered by data=2 below; slow on 2 cores.
    pytest.param(dict(data=8), marks=pytest.mark.slow), dict(fsdp=8), dict(data=2, fsdp=2, tensor=2), dict(sequence=4, data=2)],
    ids=["data8", "fsdp8", "data2_fsdp2_tensor2", "sequence4_data2"])
def test_sharded_forward_matches_single_device(sizes, reference, devices):
  model, args, params, expected = reference
  mesh = sharding.make_mesh(sizes, devices)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *args)
  param_sh = sharding.tree_shardings(nn.get_partition_spec(abstract), mesh, RULES)["params"]
  in_sh = _shard_inputs(mesh, args)
  out_sh = sharding.logical_to_sharding(("batch", "frames", None, None, None), mesh, RULES)
  with sharding.activation_sharding(mesh, RULES):
    fn = jax.jit(lambda p, *a: model.apply({"params": p}, *a),
                 in_shardings=(param_sh,) + in_sh, out_shardings=out_sh)
    sharded_params = jax.device_put(params, param_sh)
    y = fn(sharded_params, *jax.device_put(args, in_sh))
  # The parameters really are split as the rules say.
  kernel = sharded_params["blocks"]["mlp"]["fc1"]["kernel"]      # (layers, embed, mlp)
  expect_shards = mesh.shape["fsdp"] * mesh.shape["tensor"]
  assert len({str(s.index) for s in kernel.addressable_shards}) == expect_shards
  assert y.sharding.is_equivalent_to(out_sh, y.ndim)
  # Float tolerance: sharded reductions sum in another order.
  scale = np.abs(expected).max()
  assert scale > 0.1
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5 * scale, rtol=1e-4)
