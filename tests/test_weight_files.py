"""idjax.weight_files: safetensors and diffusers folders read with NumPy alone."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

from idjax import weight_files


def _tensors():
  rng = np.random.default_rng(0)
  return {
      "a.weight": rng.normal(size=(3, 4)).astype(np.float32),
      "b.bias": rng.normal(size=(5,)).astype(np.float16),
      "c.scale": rng.normal(size=(2, 2, 2)).astype(ml_dtypes.bfloat16),
      "d.index": np.arange(7, dtype=np.int64),
  }


def test_safetensors_round_trip_keeps_values_and_dtypes(tmp_path):
  path = tmp_path / "w.safetensors"
  tensors = _tensors()
  weight_files.write_safetensors(path, tensors, metadata={"format": "pt"})
  back = weight_files.read_safetensors(path)
  assert sorted(back) == sorted(tensors)
  for name, value in tensors.items():
    assert back[name].dtype == value.dtype, name
    np.testing.assert_array_equal(back[name], value)
  # The header follows the published layout: 8-byte little-endian size, JSON.
  raw = path.read_bytes()
  size = int.from_bytes(raw[:8], "little")
  header = json.loads(raw[8 : 8 + size])
  assert header["a.weight"] == {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}
  assert header["__metadata__"] == {"format": "pt"}


def test_safetensors_reads_a_subset(tmp_path):
  path = tmp_path / "w.safetensors"
  weight_files.write_safetensors(path, _tensors())
  back = weight_files.read_safetensors(path, ["b.bias"])
  assert list(back) == ["b.bias"]
  with pytest.raises(weight_files.WeightFileError, match="no tensor named 'zzz'"):
    weight_files.read_safetensors(path, ["zzz"])


def test_truncated_or_foreign_files_are_refused(tmp_path):
  path = tmp_path / "w.safetensors"
  weight_files.write_safetensors(path, _tensors())
  truncated = tmp_path / "t.safetensors"
  truncated.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(weight_files.WeightFileError, match="does not fit its byte range"):
    weight_files.read_safetensors(truncated)
  foreign = tmp_path / "f.safetensors"
  foreign.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
  with pytest.raises(weight_files.WeightFileError, match="past the end|not JSON"):
    weight_files.read_safetensors(foreign)


def test_diffusers_folder_single_file_and_shards_agree(tmp_path):
  tensors = _tensors()
  config = {"_class_name": "Toy", "width": 4}
  single = tmp_path / "single"
  single.mkdir()
  (single / "config.json").write_text(json.dumps(config))
  weight_files.write_safetensors(single / "diffusion_pytorch_model.safetensors", tensors)

  sharded = tmp_path / "sharded"
  sharded.mkdir()
  (sharded / "config.json").write_text(json.dumps(config))
  names = sorted(tensors)
  shards = {
      "model-00001-of-00002.safetensors": names[:2],
      "model-00002-of-00002.safetensors": names[2:],
  }
  for shard, shard_names in shards.items():
    weight_files.write_safetensors(sharded / shard, {n: tensors[n] for n in shard_names})
  weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
  (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(
      json.dumps({"metadata": {}, "weight_map": weight_map})
  )

  for folder in (single, sharded):
    got_config, got = weight_files.read_diffusers_folder(folder)
    assert got_config == config
    assert sorted(got) == names
    for n in names:
      np.testing.assert_array_equal(got[n], tensors[n])

  os.remove(sharded / "model-00002-of-00002.safetensors")
  with pytest.raises(weight_files.WeightFileError, match="shard model-00002-of-00002"):
    weight_files.read_diffusers_folder(sharded)


def test_diffusers_folder_errors_name_what_is_missing(tmp_path):
  with pytest.raises(weight_files.WeightFileError, match="no such folder"):
    weight_files.read_diffusers_folder(tmp_path / "nope")
  with pytest.raises(weight_files.WeightFileError, match="no config.json"):
    weight_files.read_diffusers_folder(tmp_path)
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(weight_files.WeightFileError, match="not valid JSON"):
    weight_files.read_diffusers_folder(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(weight_files.WeightFileError, match="no \\*.safetensors"):
    weight_files.read_diffusers_folder(tmp_path)
