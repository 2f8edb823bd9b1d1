"""Published weight files read with NumPy alone: safetensors and diffusers folders.

No torch and no pickle: a `.safetensors` file is an 8-byte header size, a
JSON header of dtype/shape/offsets, and raw little-endian data, so it is
memory-mapped and sliced here. bfloat16 tensors come back as `ml_dtypes`
bfloat16 arrays (the dtype JAX uses), so a bf16 checkpoint is never widened
on the host unless the caller asks.

A diffusers model folder (`vae/`, `transformer/`) holds `config.json` and
either one `*.safetensors` file or shards listed by a
`*.safetensors.index.json` (`{"weight_map": {tensor: shard file}}`).
"""

import json
import os

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class WeightFileError(ValueError):
  """A weight file or folder that cannot be read as what it claims to be."""


def read_safetensors_header(path) -> dict:
  """The JSON header of a .safetensors file: {name: {dtype, shape, data_offsets}}."""
  header = _raw_header(path)
  header.pop("__metadata__", None)
  return header


def read_safetensors_metadata(path) -> dict:
  """The header's free-form `__metadata__` ({str: str}; {} when it has none)."""
  metadata = _raw_header(path).get("__metadata__") or {}
  if not isinstance(metadata, dict):
    raise WeightFileError(f"{os.fspath(path)}: __metadata__ is not a JSON object.")
  return metadata


def _raw_header(path) -> dict:
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw_size = f.read(8)
      if len(raw_size) != 8:
        raise WeightFileError(f"{path}: too short to be a .safetensors file.")
      header_size = int.from_bytes(raw_size, "little")
      if header_size > os.path.getsize(path) - 8:
        raise WeightFileError(
            f"{path}: header size {header_size} is past the end of the file; "
            "not a .safetensors file, or truncated."
        )
      header = json.loads(f.read(header_size))
  except (UnicodeDecodeError, json.JSONDecodeError):
    raise WeightFileError(f"{path}: the header is not JSON; not a .safetensors file.") from None
  return header


def read_safetensors(path, names=None) -> dict:
  """{name: np.ndarray} of a .safetensors file (read-only, memory-mapped views).

  Args:
    path: the file.
    names: optional iterable of tensor names to read (default: all).
  """
  path = os.fspath(path)
  header = read_safetensors_header(path)
  header_size = int.from_bytes(open(path, "rb").read(8), "little")
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
  tensors = {}
  for name in (header if names is None else names):
    if name not in header:
      raise WeightFileError(f"{path}: no tensor named {name!r}.")
    info = header[name]
    if info["dtype"] not in DTYPES:
      raise WeightFileError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
    start, stop = info["data_offsets"]
    dtype = np.dtype(DTYPES[info["dtype"]])
    count = int(np.prod(info["shape"], dtype=np.int64))
    if stop - start != count * dtype.itemsize or stop > data.size:
      raise WeightFileError(
          f"{path}: tensor {name} of shape {info['shape']} and dtype "
          f"{info['dtype']} does not fit its byte range [{start}, {stop})."
      )
    tensors[name] = data[start:stop].view(dtype).reshape(info["shape"])
  return tensors


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
  """Writes {name: array} as a .safetensors file (for tests and exports)."""
  names = {np.dtype(v): k for k, v in DTYPES.items()}
  header, offset, blobs = {}, 0, []
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    if array.dtype not in names:
      raise WeightFileError(f"tensor {name}: dtype {array.dtype} has no safetensors name.")
    blob = array.tobytes()
    header[name] = dict(
        dtype=names[array.dtype], shape=list(array.shape), data_offsets=[offset, offset + len(blob)]
    )
    blobs.append(blob)
    offset += len(blob)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  encoded = json.dumps(header).encode()
  encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
  with open(path, "wb") as f:
    f.write(len(encoded).to_bytes(8, "little"))
    f.write(encoded)
    for blob in blobs:
      f.write(blob)


def read_diffusers_folder(folder) -> tuple[dict, dict]:
  """(config, {name: np.ndarray}) of a diffusers model folder.

  Reads `config.json` and the weights: one `*.safetensors` file, or the
  shards named by a `*.safetensors.index.json`. Raises WeightFileError with
  one sentence when the folder, its config or a shard is missing.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise WeightFileError(f"{folder}: no such folder.")
  config_path = os.path.join(folder, "config.json")
  if not os.path.isfile(config_path):
    raise WeightFileError(
        f"{folder}: no config.json; expected a diffusers model folder "
        "(config.json and *.safetensors)."
    )
  try:
    with open(config_path) as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise WeightFileError(f"{config_path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
  files = sorted(os.listdir(folder))
  indexes = [n for n in files if n.endswith(".safetensors.index.json")]
  if indexes:
    if len(indexes) > 1:
      raise WeightFileError(f"{folder}: several shard indexes ({', '.join(indexes)}); keep one.")
    with open(os.path.join(folder, indexes[0])) as f:
      weight_map = json.load(f).get("weight_map", {})
    by_shard = {}
    for name, shard in weight_map.items():
      by_shard.setdefault(shard, []).append(name)
    tensors = {}
    for shard, names in sorted(by_shard.items()):
      shard_path = os.path.join(folder, shard)
      if not os.path.isfile(shard_path):
        raise WeightFileError(f"{folder}: the index names shard {shard}, which is missing.")
      tensors.update(read_safetensors(shard_path, names))
    return config, tensors
  singles = [n for n in files if n.endswith(".safetensors")]
  if not singles:
    raise WeightFileError(f"{folder}: no *.safetensors weights (and no shard index).")
  if len(singles) > 1:
    raise WeightFileError(
        f"{folder}: several .safetensors files ({', '.join(singles)}) "
        "but no *.safetensors.index.json saying which tensor is where."
    )
  return config, read_safetensors(os.path.join(folder, singles[0]))
