"""TFDS ArrayRecord shards that `config.data.source = "tfds"` reads unchanged.

The training pipeline (`idjax.data.pipeline.make_source`) opens a split as
the TFDS dataset `synthetic_identity_video`, config `config_name(...)` (sizes,
seed and the split's example count), under `data.tfds_data_dir`. So each
split of a prepared folder is written where that call looks, with the
builder's own features and `dataset_info.json`: the train split in the
config directory named for (N_train, 0) examples, the held-out split in the
one named for (0, N_heldout). `train_flags` spells out the matching
`--config.data.*` overrides.

Each shard is serialised with the builder's features, written to a
temporary file in its directory, flushed and renamed, so a shard under its
final name is complete: a resumed run skips it. `dataset_info.json` comes
last, so a split is visible to TFDS only once all its shards are there.
"""

import os

from array_record.python import array_record_module

from idjax import paths
from idjax.data import tfds_builder, world


def builder(cfg: world.WorldConfig, seed: int, split: str, size: int, data_dir: str):
  sizes = dict(train=0, heldout=0)
  sizes[split] = size
  return tfds_builder.make_builder(cfg, seed, sizes["train"], sizes["heldout"], data_dir=data_dir)


def shard_paths(directory: str, split: str, num_shards: int) -> list[str]:
  name = tfds_builder.SyntheticIdentityVideo.name
  return [
      os.path.join(directory, f"{name}-{split}.array_record-{s:05d}-of-{num_shards:05d}")
      for s in range(num_shards)
  ]


def write_shard(path: str, features, records) -> None:
  """Serialises `records` (dicts with the builder's features) into one ArrayRecord file."""
  blobs = [features.serialize_example(r) for r in records]

  def write(tmp):
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    for blob in blobs:
      writer.write(blob)
    writer.close()

  paths.atomic_write(path, write)


def finalize(b, split: str, shard_lengths: list[int]) -> None:
  """Writes dataset_info.json and features.json: the split becomes readable."""
  import tensorflow_datasets as tfds  # imported here: slow, and only the last step needs it

  template = tfds.core.ShardedFileTemplate(
      data_dir=b.data_dir, dataset_name=b.name, split=split, filetype_suffix="array_record"
  )
  size = sum(os.path.getsize(p) for p in shard_paths(b.data_dir, split, len(shard_lengths)))
  info = b.info
  info.set_splits(
      tfds.core.SplitDict(
          [
              tfds.core.SplitInfo(
                  name=split,
                  shard_lengths=list(shard_lengths),
                  num_bytes=size,
                  filename_template=template,
              )
          ]
      )
  )
  info.write_to_directory(b.data_dir)


def is_finalized(b) -> bool:
  return os.path.exists(os.path.join(b.data_dir, "dataset_info.json"))


def train_flags(cfg: world.WorldConfig, seed: int, data_dir: str, split: str, size: int) -> str:
  """The train.py overrides that read this split."""
  return " ".join(
      [
          "--config.data.source=tfds",
          f"--config.data.tfds_data_dir={data_dir}",
          f"--config.data.split={split}",
          f"--config.data.size={size}",
          f"--config.data.seed={seed}",
          f"--config.data.resolution={cfg.resolution}",
          f"--config.data.num_frames={cfg.num_frames}",
          f"--config.data.max_characters={cfg.max_characters}",
          f"--config.data.min_characters={cfg.min_characters}",
          f"--config.data.num_references={cfg.num_references}",
          f"--config.data.reference_resolution={cfg.reference_resolution}",
      ]
  )
