"""Inference restore (idjax/restore.py, Generator.from_workdir).

A video checkpoint holds the whole TrainState; sampling reads only its EMA
params, each shard straight onto its device of the mesh, and samples the
same frames on fsdp=8 as on one device. Unreadable newer steps are skipped
and left in place; a parameter whose placement cannot be computed is refused.
"""

import os
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from idjax import configlib, restore, sharding
from idjax.sampling import generator as generator_lib
from idjax.sampling.generator import Generator
from idjax.train import checkpoint
from idjax.train.state import create_state, make_optimizer
from helpers import make_workdir, one_device_mesh, random_refs, tiny_params, tiny_parts


def fsdp_mesh():
  return sharding.make_mesh({"data": 1, "fsdp": 8})


def _ema_step5():
  cfg, _, fe = tiny_parts()
  return tiny_params(cfg, fe, seed=5)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  """A tiny video workdir with steps 0 and 5. Step 5's EMA params are another
  random draw and its Adam moments are nonzero, so which step and which
  subtree were read shows."""
  root = str(tmp_path_factory.mktemp("restore"))
  video = make_workdir(root, with_eval_encoder=False)
  config = restore.read_video_config(video)
  _, params, _ = tiny_parts()
  tx, _ = make_optimizer(config.train)
  state = create_state(params, tx, 0)
  moments = jax.tree.map(lambda x: np.full(x.shape, 7, x.dtype), state.opt_state)
  later = state.replace(step=jnp.int32(5), ema_params=_ema_step5(), opt_state=moments)
  manager = checkpoint.make_manager(video, config.train)
  checkpoint.save(manager, later, force=True)
  manager.wait_until_finished()
  manager.close()
  return video


@pytest.fixture
def reads(monkeypatch):
  """(folder, name) of every array orbax reads from disk."""
  seen = []
  original = ocp.type_handlers.ArrayHandler.deserialize

  async def deserialize(self, infos, args=None):
    seen.extend((os.fspath(info.parent_dir), info.name) for info in infos)
    return await original(self, infos, args)

  monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "deserialize", deserialize)
  return seen


def test_fsdp_restore_reads_only_the_ema_shards_and_samples_as_one_device(video, reads):
  gen8 = Generator.from_workdir(video, mesh=fsdp_mesh())
  leaves = jax.tree.leaves(gen8.params)

  # Only the EMA subtree was read from the checkpoint: one read per EMA
  # array, none of params / opt_state (the Adam moments) / counters.
  state_reads = [
      name for folder, name in reads if folder.startswith(os.path.join(video, "checkpoints"))
  ]
  assert state_reads and all(n.startswith("ema_params.") for n in state_reads), state_reads
  assert len(state_reads) == len(leaves)
  chex.assert_trees_all_equal(jax.device_get(gen8.params), _ema_step5())  # newest step

  # Each param is laid out by the rules, and each shard lives on its own device.
  want = generator_lib.abstract_params(gen8.config, gen8.face_encoder, gen8.model_side, gen8.mesh)
  sharded_total, per_device = 0, {d: 0 for d in jax.devices()}
  for p, a in zip(leaves, jax.tree.leaves(want)):
    assert p.sharding == a.sharding
    shards = p.addressable_shards
    assert sorted(s.device.id for s in shards) == sorted(d.id for d in jax.devices())
    if "fsdp" in jax.tree.leaves(tuple(p.sharding.spec)):
      sharded_total += p.nbytes
      assert all(s.data.nbytes * 8 == p.nbytes for s in shards), (p.shape, p.sharding.spec)
      for s in shards:
        per_device[s.device] += s.data.nbytes
  all_bytes = sum(p.nbytes for p in leaves)
  assert sharded_total > 0.9 * all_bytes, (sharded_total, all_bytes)
  assert set(per_device.values()) == {sharded_total // 8}

  # The same frames as the one-device restore of the same checkpoint. (Equal
  # uint8 frames, not equal floats: with fsdp XLA partitions some matmuls
  # differently, and the velocities differ from one device's by ~1e-5, far
  # below a uint8 step; on a data-only mesh they are bit-identical too.)
  gen1 = Generator.from_workdir(video, mesh=one_device_mesh())
  rng = np.random.default_rng(0)
  prompts = ["a person with pale skin", "a person with blue eyes", "a person"]
  refs = [[random_refs(rng, 1)], [random_refs(rng, 2)], []]
  kw = dict(
      seed=3, layout=[[[0.1, 0.1, 0.7, 0.7]], [[0.2, 0.2, 0.8, 0.8]], []], steps=2, progress=False
  )
  one = gen1.generate(prompts, refs, **kw)["frames"]
  eight = gen8.generate(prompts, refs, **kw)["frames"]
  chex.assert_type(eight, np.uint8)
  np.testing.assert_array_equal(eight, one)
  assert np.mean((one == 0) | (one == 255)) < 0.5  # frames, not saturation


def _truncate_arrays(step_dir):
  for folder, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(folder) == "d":
      for name in files:
        path = os.path.join(folder, name)
        os.truncate(path, os.path.getsize(path) // 2)


def test_an_unreadable_newest_step_is_skipped_and_left_in_place(video, tmp_path):
  work = str(tmp_path / "video")
  shutil.copytree(video, work)
  _truncate_arrays(os.path.join(work, "checkpoints", "5"))
  _, params, fe = tiny_parts()
  config = restore.read_video_config(work)
  abstract = generator_lib.abstract_params(config, fe, 16, fsdp_mesh())
  lines = []
  step, ema = restore.restore_ema(work, abstract, log=lines.append)
  assert step == 0
  chex.assert_trees_all_equal(jax.device_get(ema), params)
  assert len(lines) == 1 and lines[0].startswith("warning: checkpoint step 5 in "), lines
  assert lines[0].endswith("; left it in place; continuing from step 0."), lines[0]
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["0", "5"]

  _truncate_arrays(os.path.join(work, "checkpoints", "0"))
  with pytest.raises(
      ValueError,
      match=r"No checkpoint in .* can be read \(step 5: .*; " r"step 0: .*\); nothing was changed",
  ):
    restore.restore_ema(work, abstract, log=lines.append)


def test_a_workdir_without_checkpoints_is_refused_and_left_alone(tmp_path):
  cfg, _, fe = tiny_parts()
  work = str(tmp_path / "video")
  os.makedirs(work)
  configlib.save_config(cfg, os.path.join(work, restore.CONFIG_FILE))
  abstract = generator_lib.abstract_params(
      restore.read_video_config(work), fe, 16, one_device_mesh()
  )
  with pytest.raises(ValueError, match="holds no checkpoint yet"):
    restore.restore_ema(work, abstract)
  assert os.listdir(work) == [restore.CONFIG_FILE]


def test_a_checkpoint_of_another_model_is_a_usage_error(video):
  cfg, _, fe = tiny_parts()
  cfg = cfg.copy_and_resolve_references()
  cfg.model.width = 64
  abstract = generator_lib.abstract_params(cfg, fe, 16, one_device_mesh())
  with pytest.raises(configlib.UsageError, match=r"EMA params at step 5 .* do not fit the model"):
    restore.restore_ema(video, abstract)


class _Net(nn.Module):
  names: tuple
  features: int = 16

  @nn.compact
  def __call__(self, x):
    kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.names)
    return nn.Dense(self.features, kernel_init=kernel)(x)  # the bias is left unnamed


def _boxed(names, width=16, features=16):
  x = jax.ShapeDtypeStruct((1, width), jnp.float32)
  return jax.eval_shape(_Net(names, features).init, jax.random.key(0), x)["params"]


def test_params_that_cannot_be_placed_are_refused(devices):
  mesh = fsdp_mesh()
  with pytest.raises(ValueError, match=r"Dense_0/bias has no logical axis names"):
    restore.abstract_params(_boxed(("embed", "mlp")), mesh, sharding.DEFAULT_RULES)
  rules = sharding.DEFAULT_RULES
  boxed = _boxed(("embed", "mlp"))
  boxed["Dense_0"]["bias"] = nn.LogicallyPartitioned(boxed["Dense_0"]["bias"], ("mlp",))
  out = restore.abstract_params(boxed, mesh, rules)
  assert out["Dense_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert out["Dense_0"]["bias"].sharding.spec == jax.sharding.PartitionSpec("tensor")
  boxed["Dense_0"]["kernel"] = nn.LogicallyPartitioned(
      boxed["Dense_0"]["kernel"].value, ("embed", "channels")
  )
  with pytest.raises(ValueError, match=r"kernel has axis names \['channels'\] that the rules"):
    restore.abstract_params(boxed, mesh, rules)
  odd = _boxed(("embed", "mlp"), width=12)
  odd["Dense_0"]["bias"] = nn.LogicallyPartitioned(odd["Dense_0"]["bias"], ("mlp",))
  with pytest.raises(ValueError, match=r"kernel \(12, 16\) does not split as"):
    restore.abstract_params(odd, mesh, rules)


def test_the_generator_refuses_params_of_another_model():
  cfg, params, fe = tiny_parts()
  wrong = dict(params)
  wrong.pop("final_adaln")
  with pytest.raises(ValueError, match="do not fit the model .*missing final_adaln"):
    Generator(cfg, wrong, fe, mesh=one_device_mesh())
