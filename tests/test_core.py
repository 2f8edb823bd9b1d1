"""The lead's shared pieces: rng derivation, mesh construction, rules, config overrides."""

import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from idjax import configlib, rng, sharding


def test_derive_is_a_pure_function_of_seed_step_purpose():
  a = jax.random.key_data(rng.derive(0, 5, "noise"))
  assert np.array_equal(a, jax.random.key_data(rng.derive(0, 5, "noise")))
  for other in (rng.derive(1, 5, "noise"), rng.derive(0, 6, "noise"), rng.derive(0, 5, "t")):
    assert not np.array_equal(a, jax.random.key_data(other))


def test_derive_under_jit_matches_eager():
  eager = jax.random.normal(rng.derive(3, 7, "x"), (4,))
  jitted = jax.jit(lambda s: jax.random.normal(rng.derive(3, s, "x"), (4,)))(7)
  np.testing.assert_array_equal(eager, jitted)


def test_per_example_keys_depend_on_index_not_slot():
  key = rng.derive(0, 0, "noise")
  batch = rng.per_example(key, jnp.array([4, 9, 2]))
  alone = rng.per_example(key, jnp.array([9]))
  draw = lambda k: jax.random.normal(k, (3,))
  np.testing.assert_array_equal(jax.vmap(draw)(batch)[1], jax.vmap(draw)(alone)[0])


def test_random_draw_is_identical_on_every_sharding(devices):
  """Partitionable threefry: a draw does not depend on the output sharding."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  key = rng.derive(0, 1, "noise")
  dense = jax.random.normal(key, (8, 16))
  out = sharding.logical_to_sharding(("batch", "mlp"), mesh, sharding.DEFAULT_RULES)
  sharded = jax.jit(lambda k: jax.random.normal(k, (8, 16)), out_shardings=out)(key)
  assert sharded.sharding.spec == P(("data", "fsdp"), "tensor")
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(dense))


@pytest.mark.parametrize("sizes,expected", [
    ({"data": -1}, (8, 1, 1, 1)),
    ({"data": 2, "fsdp": -1}, (2, 4, 1, 1)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, (2, 2, 2, 1)),
    ({"data": 2, "sequence": 4}, (2, 1, 1, 4)),
])
def test_mesh_shapes(devices, sizes, expected):
  mesh = sharding.make_mesh(sizes)
  assert tuple(mesh.shape.values()) == expected
  assert mesh.axis_names == sharding.MESH_AXES


@pytest.mark.parametrize("sizes", [{"data": 3}, {"data": -1, "fsdp": -1}, {"data": 16}])
def test_bad_mesh_is_refused(devices, sizes):
  with pytest.raises(ValueError):
    sharding.make_mesh(sizes)


def test_rules_map_each_mesh_axis_once(devices):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_sharding(("embed", "mlp"), mesh, rules).spec == P("fsdp", "tensor")
  # Activations: batch takes fsdp, so embed falls through to replicated.
  act = sharding.logical_to_sharding(("batch", "frames", "patches", "embed"), mesh, rules)
  assert act.spec == P(("data", "fsdp"), "sequence", None, None)
  assert sharding.batch_axis_size(mesh) == 4


def test_rules_survive_a_json_round_trip():
  as_json = [list(map(lambda a: list(a) if isinstance(a, tuple) else a, r)) for r in sharding.DEFAULT_RULES]
  assert sharding.rules_from_config(as_json) == sharding.DEFAULT_RULES


def test_activation_constraint_takes_effect_inside_context(devices):
  mesh = sharding.make_mesh({"data": 2, "sequence": 4})

  def f(x):
    return nn.with_logical_constraint(x * 2, ("batch", "frames", "embed"))

  x = jnp.arange(2 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 3)
  with sharding.activation_sharding(mesh, sharding.DEFAULT_RULES):
    y = jax.jit(f)(x)
  chex.assert_trees_all_close(y, x * 2)
  assert y.sharding.spec == P("data", "sequence")


def _config():
  c = ml_collections.ConfigDict()
  c.train = ml_collections.ConfigDict(dict(steps=10, lr=1e-3, name="a", flag=False, shape=(1, 2)))
  return c


def test_overrides_are_typed():
  c = _config()
  rest = configlib.parse_overrides(c, ["--config.train.steps=5", "--config.train.lr", "0.5",
                                       "--config.train.flag=true", "--config.train.shape=(3,4)", "pos"])
  assert rest == ["pos"]
  assert (c.train.steps, c.train.lr, c.train.flag, c.train.shape) == (5, 0.5, True, (3, 4))


@pytest.mark.parametrize("arg", ["--config.train.stepz=1", "--config.nope.x=1",
                                 "--config.train.steps=abc", "--config.train.flag=maybe",
                                 "--config.train.steps"])
def test_bad_overrides_are_usage_errors(arg):
  with pytest.raises(configlib.UsageError):
    configlib.parse_overrides(_config(), [arg])


def test_config_json_round_trip(tmp_path):
  c = _config()
  configlib.save_config(c, str(tmp_path / "config.json"))
  back = configlib.load_saved_config(str(tmp_path / "config.json"))
  assert back.train.steps == 10 and list(back.train.shape) == [1, 2]


def test_shipped_configs_load():
  for path in ("configs/tiny.py", "configs/tiny_latent.py", "configs/base.py"):
    c = configlib.load_config_file(str(pathlib.Path(__file__).parent.parent / path))
    assert c.kind == "video"
    assert sharding.rules_from_config(c.sharding.rules) == sharding.DEFAULT_RULES



def test_override_of_a_linked_field_moves_the_link():
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(frames=8))
  c.model = ml_collections.ConfigDict()
  c.model.frames = c.data.get_ref("frames")  # as configs/tiny.py links them
  configlib.parse_overrides(c, ["--config.data.frames=4"])
  assert (c.data.frames, c.model.frames) == (4, 4)
