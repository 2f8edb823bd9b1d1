"""The TFDS builder round-trips the world byte for byte, without TensorFlow."""

import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from idjax.data import pipeline
from idjax.data import tfds_builder
from idjax.data import world

CFG = world.WorldConfig(resolution=32, num_frames=3, max_characters=2, num_references=2,
                        reference_resolution=16)


def _assert_records_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if k == "prompt":
      assert isinstance(a[k], str) and a[k] == b[k]
    else:
      assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k
      assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), k


def _data_config(source, data_dir, split="train", size=4):
  return ml_collections.ConfigDict(dict(
      source=source, resolution=CFG.resolution, num_frames=CFG.num_frames,
      max_characters=CFG.max_characters, min_characters=CFG.min_characters,
      num_references=CFG.num_references, reference_resolution=CFG.reference_resolution,
      seed=5, split=split, size=size, tfds_data_dir=str(data_dir), text_len=16))


def test_tfds_round_trip_matches_on_the_fly(tmp_path):
  builder = tfds_builder.make_builder(CFG, seed=5, train_size=4, heldout_size=2, data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert list(tmp_path.glob("synthetic_identity_video/*/1.1.0/*.array_record-*"))
  for split, size in (("train", 4), ("heldout", 2)):
    stored = pipeline.TfdsSource(builder.as_data_source(split))
    fresh = pipeline.OnTheFlySource(CFG, 5, split, size)
    assert len(stored) == len(fresh) == size
    for i in range(size):
      _assert_records_equal(stored[i], fresh[i])
      assert int(stored[i]["index"]) == i
  # The registered name works with tfds.data_source too.
  by_name = tfds.data_source("synthetic_identity_video", split="heldout", data_dir=str(tmp_path),
                             download=False, builder_kwargs=dict(config=builder.builder_config))
  _assert_records_equal(pipeline.TfdsSource(by_name)[1],
                        pipeline.OnTheFlySource(CFG, 5, "heldout", 2)[1])
  assert "tensorflow" not in sys.modules


def test_make_source_tfds_equals_on_the_fly(tmp_path):
  tfds_source = pipeline.make_source(_data_config("tfds", tmp_path, split="heldout", size=3))
  fly = pipeline.make_source(_data_config("on_the_fly", tmp_path, split="heldout", size=3))
  assert isinstance(fly, pipeline.OnTheFlySource) and len(tfds_source) == 3
  for i in (2, 0):
    _assert_records_equal(tfds_source[i], fly[i])
  # The held-out split holds held-out identities only.
  ids = fly[1]["identity_ids"][fly[1]["character_valid"]]
  assert all(world.is_heldout(i) for i in ids)


def test_builder_config_names_differ_per_world():
  a = tfds_builder.config_name(CFG, 0, 10, 2)
  b = tfds_builder.config_name(world.WorldConfig(resolution=64), 0, 10, 2)
  assert a != b and a != tfds_builder.config_name(CFG, 1, 10, 2)


def test_make_source_errors(tmp_path):
  with pytest.raises(ValueError):
    pipeline.make_source(_data_config("csv", tmp_path))
  with pytest.raises(ValueError):
    pipeline.make_source(_data_config("on_the_fly", tmp_path, split="test"))
  with pytest.raises(IndexError):
    pipeline.make_source(_data_config("on_the_fly", tmp_path))[4]


def test_a_prepared_folder_is_never_filled_with_synthetic_clips(tmp_path):
  """data.* values that do not name the prepared shards are an error, not a
  silent render of the synthetic world into the user's footage folder."""
  (tmp_path / pipeline.PREPARE_PLAN).write_text("{}")
  before = sorted(p.name for p in tmp_path.iterdir())
  with pytest.raises(ValueError, match="prepared by idjax.data.prepare"):
    pipeline.make_source(_data_config("tfds", tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == before
