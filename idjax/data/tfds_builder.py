"""TFDS builder `synthetic_identity_video`: the world written to ArrayRecord files.

Prepared once, read back with random access by `tfds.data_source` (no
TensorFlow needed: features are plain uint8/float32/int/bool tensors and a
text prompt; no `tfds.features.Video`, no `as_dataset`). Record i of a split is
exactly `world.render_record(world_cfg, seed, i, split)` (render_clip plus `index`), because
shuffling at write time is disabled.

    builder = make_builder(WorldConfig(resolution=32, num_frames=8), seed=0,
                           train_size=1000, heldout_size=200, data_dir="/tmp/tfds")
    builder.download_and_prepare()
    source = builder.as_data_source("train")
"""

import dataclasses

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from idjax.data import world


@dataclasses.dataclass(eq=False)
class SyntheticIdentityVideoConfig(tfds.core.BuilderConfig):
  """One prepared variant of the world: sizes, seed and examples per split."""
  resolution: int = 64
  num_frames: int = 16
  max_characters: int = 1
  min_characters: int = 1
  num_references: int = 3
  reference_resolution: int = 64
  seed: int = 0
  train_size: int = 1000
  heldout_size: int = 200

  def world_config(self) -> world.WorldConfig:
    return world.WorldConfig(
        resolution=self.resolution, num_frames=self.num_frames, max_characters=self.max_characters,
        min_characters=self.min_characters, num_references=self.num_references,
        reference_resolution=self.reference_resolution)


def config_name(cfg: world.WorldConfig, seed: int, train_size: int, heldout_size: int) -> str:
  """A name that spells out every field, so different worlds never share files."""
  return (f"r{cfg.resolution}_t{cfg.num_frames}_c{cfg.min_characters}-{cfg.max_characters}"
          f"_k{cfg.num_references}_rr{cfg.reference_resolution}_s{seed}_n{train_size}-{heldout_size}")


def builder_config(cfg: world.WorldConfig, seed: int, train_size: int,
                   heldout_size: int) -> SyntheticIdentityVideoConfig:
  return SyntheticIdentityVideoConfig(
      name=config_name(cfg, seed, train_size, heldout_size),
      description="Synthetic identity world clips.",
      resolution=cfg.resolution, num_frames=cfg.num_frames, max_characters=cfg.max_characters,
      min_characters=cfg.min_characters, num_references=cfg.num_references,
      reference_resolution=cfg.reference_resolution, seed=seed, train_size=train_size,
      heldout_size=heldout_size)


_PRESETS = (
    builder_config(world.WorldConfig(resolution=32, num_frames=8, reference_resolution=32),
                   0, 1000, 200),
    builder_config(world.WorldConfig(resolution=64, num_frames=16), 0, 10000, 1000),
    builder_config(world.WorldConfig(resolution=64, num_frames=16, max_characters=4), 0, 10000, 1000),
)


class SyntheticIdentityVideo(tfds.core.GeneratorBasedBuilder):
  """Cartoon-face clips with identities, boxes, masks, references and prompts."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "reference_mattes: each reference portrait's head."}
  BUILDER_CONFIGS = list(_PRESETS)
  # TFDS would infer these through `importlib_resources`, which this
  # TensorFlow-free environment lacks; the builder has no checksums anyway.
  code_path = epath.Path(__file__)
  pkg_dir_path = epath.Path(__file__).parent

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    C, T, H = c.max_characters, c.num_frames, c.resolution
    K, R = c.num_references, c.reference_resolution
    t = tfds.features.Tensor
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "frames": t(shape=(T, H, H, 3), dtype=np.uint8),
            "boxes": t(shape=(C, T, 4), dtype=np.float32),
            "masks": t(shape=(C, T, H, H), dtype=np.uint8),
            "identity_ids": t(shape=(C,), dtype=np.int32),
            "character_valid": t(shape=(C,), dtype=np.bool_),
            "references": t(shape=(C, K, R, R, 3), dtype=np.uint8),
            "reference_mattes": t(shape=(C, K, R, R), dtype=np.uint8),
            "prompt": tfds.features.Text(),
            "index": t(shape=(), dtype=np.int64),
        }),
        homepage="https://github.com/idjax/idjax",
        # Record i must be example i: random access by global index relies on it.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the world is procedural
    c = self.builder_config
    sizes = {"train": c.train_size, "heldout": c.heldout_size}
    # A split of size 0 is not written (make_source prepares one split only).
    return {split: self._generate_examples(split, n) for split, n in sizes.items() if n > 0}

  def _generate_examples(self, split, size):
    c = self.builder_config
    cfg = c.world_config()
    for index in range(size):
      yield index, world.render_record(cfg, c.seed, index, split)


def make_builder(cfg: world.WorldConfig, seed: int, train_size: int, heldout_size: int,
                 data_dir: str | None = None) -> SyntheticIdentityVideo:
  """The builder for any world (not only the presets), in `data_dir` if given."""
  return SyntheticIdentityVideo(config=builder_config(cfg, seed, train_size, heldout_size),
                                data_dir=data_dir or None)
