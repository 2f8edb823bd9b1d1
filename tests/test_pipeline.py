"""GlobalBatches: order as a pure function of (seed, step), sharding, per-process reads."""

import itertools
import threading

import chex
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from idjax import sharding
from idjax.data import pipeline
from idjax.data import prompts
from idjax.data import world

CFG = world.WorldConfig(resolution=16, num_frames=2, max_characters=2, num_references=3,
                        reference_resolution=8)


class RecordingSource:
  """An on-the-fly source that remembers which indices were read."""

  def __init__(self, size=12, seed=0):
    self.inner = pipeline.OnTheFlySource(CFG, seed, "train", size)
    self.read = []
    self._lock = threading.Lock()

  def __len__(self):
    return len(self.inner)

  def __getitem__(self, index):
    with self._lock:
      self.read.append(int(index))
    return self.inner[index]


@pytest.fixture(scope="module")
def mesh(devices):
  return sharding.make_mesh(dict(data=2, fsdp=2, tensor=2, sequence=1), devices)


def _numpy(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_permute_is_a_keyed_bijection(n):
  images = [pipeline.permute(i, n, key=3) for i in range(n)]
  assert sorted(images) == list(range(n))
  if n >= 64:
    assert images != [pipeline.permute(i, n, key=4) for i in range(n)]
    assert images != list(range(n))


def test_each_epoch_visits_every_example_once(mesh):
  batches = pipeline.GlobalBatches(RecordingSource(size=12), global_batch_size=4, seed=1, mesh=mesh)
  epochs = [np.concatenate([batches.indices_at(s) for s in range(3 * e, 3 * e + 3)]) for e in range(3)]
  for order in epochs:
    assert sorted(order.tolist()) == list(range(12))
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
  other = pipeline.GlobalBatches(RecordingSource(size=12), global_batch_size=4, seed=2, mesh=mesh)
  assert not np.array_equal(epochs[0], np.concatenate([other.indices_at(s) for s in range(3)]))


def test_global_arrays_sharded_on_batch(mesh):
  source = RecordingSource(size=12)
  batches = pipeline.GlobalBatches(source, global_batch_size=8, seed=0, mesh=mesh, text_len=20)
  batch = batches.batch_at(0)
  shapes = dict(frames=(8, 2, 16, 16, 3), boxes=(8, 2, 2, 4),
                identity_ids=(8, 2), character_valid=(8, 2), references=(8, 2, 3, 8, 8, 3),
                reference_valid=(8, 2, 3), reference_mattes=(8, 2, 3, 8, 8),
                text_tokens=(8, 20), index=(8,))
  dtypes = dict(frames=np.uint8, boxes=np.float32, identity_ids=np.int32,
                character_valid=np.bool_, references=np.uint8, reference_valid=np.bool_,
                reference_mattes=np.uint8, text_tokens=np.int32, index=np.int32)
  # No pixel masks: the train step builds them from the boxes.
  assert set(batch) == set(pipeline.BATCH_KEYS) == set(shapes)
  for key, array in batch.items():
    assert isinstance(array, jax.Array)
    chex.assert_shape(array, shapes[key])
    assert array.dtype == dtypes[key], key
    assert array.sharding.spec == P(("data", "fsdp"), *([None] * (array.ndim - 1)))
    assert array.sharding.is_equivalent_to(sharding.batch_sharding(mesh, array.ndim), array.ndim)
    # 4 batch shards of 2 rows, each held by the 2 devices of a tensor pair.
    rows = {(s.index[0].start, s.index[0].stop) for s in array.addressable_shards}
    assert rows == {(0, 2), (2, 4), (4, 6), (6, 8)}
  # Each row is the record it claims to be.
  np_batch = _numpy(batch)
  np.testing.assert_array_equal(np_batch["index"], batches.indices_at(0))
  for row, index in enumerate(np_batch["index"]):
    record = source.inner[index]
    for key in ("frames", "boxes", "identity_ids", "character_valid", "references"):
      np.testing.assert_array_equal(np_batch[key][row], record[key])
    np.testing.assert_array_equal(np_batch["text_tokens"][row], prompts.tokenize(record["prompt"], 20))


def test_resume_equals_uninterrupted(mesh):
  make = lambda: pipeline.GlobalBatches(RecordingSource(size=10), global_batch_size=4, seed=7, mesh=mesh)
  straight = [_numpy(b) for b in itertools.islice(make().iterate(0), 5)]
  resumed = [_numpy(b) for b in itertools.islice(make().iterate(3), 2)]
  for a, b in zip(straight[3:], resumed):
    for key in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(a[key], b[key])
  # Steps differ from one another (the stream moves on) and cross the epoch boundary.
  assert not np.array_equal(straight[0]["index"], straight[1]["index"])
  np.testing.assert_array_equal(_numpy(make().batch_at(4))["frames"], straight[4]["frames"])


def test_reference_dropout_is_a_function_of_index(mesh):
  batches = pipeline.GlobalBatches(RecordingSource(size=6), global_batch_size=4, seed=3, mesh=mesh)
  seen = {}
  for step in range(6):
    b = _numpy(batches.batch_at(step))
    for index, valid, char in zip(b["index"], b["reference_valid"], b["character_valid"]):
      counts = valid.sum(axis=1)
      assert np.all(counts[char] >= 1) and np.all(counts[char] <= 3) and np.all(counts[~char] == 0)
      if index in seen:
        np.testing.assert_array_equal(seen[index], valid)
      seen[index] = valid
      np.testing.assert_array_equal(valid, pipeline.reference_valid(3, int(index), 2, 3) & char[:, None])
  counts = np.concatenate([v.sum(axis=1) for v in seen.values()])
  assert len(set(counts.tolist()) - {0}) >= 2  # the number of references really varies
  full = pipeline.GlobalBatches(RecordingSource(size=6), global_batch_size=4, seed=3, mesh=mesh,
                                reference_dropout=False)
  b = _numpy(full.batch_at(0))
  np.testing.assert_array_equal(b["reference_valid"], np.repeat(b["character_valid"][..., None], 3, -1))


def test_each_process_reads_only_its_share(mesh):
  whole_source = RecordingSource(size=20)
  whole = pipeline.GlobalBatches(whole_source, global_batch_size=8, seed=5, mesh=mesh,
                                 process_index=0, process_count=1)
  expected = whole.local_batch_at(2)
  parts = []
  for p in range(4):
    source = RecordingSource(size=20)
    batches = pipeline.GlobalBatches(source, global_batch_size=8, seed=5, mesh=mesh,
                                     process_index=p, process_count=4)
    local = batches.local_batch_at(2)
    share = batches.indices_at(2)[2 * p: 2 * p + 2]
    assert sorted(source.read) == sorted(share.tolist())  # nothing else was rendered
    parts.append(local)
  for key in pipeline.BATCH_KEYS:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), expected[key])


def test_batch_size_must_divide(mesh):
  with pytest.raises(ValueError):
    pipeline.GlobalBatches(RecordingSource(), global_batch_size=6, seed=0, mesh=mesh)
  with pytest.raises(ValueError):
    pipeline.GlobalBatches(RecordingSource(), global_batch_size=4, seed=0, mesh=None, process_count=3,
                           process_index=0)
