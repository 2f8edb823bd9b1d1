"""Random-access sources and the deterministic global-batch pipeline.

A source maps a global example index to a record (the dict of `render_clip`
plus `index`). `GlobalBatches` turns a source into batches for a mesh:

* the examples of step s are positions s*B .. s*B+B-1 of an endless stream;
  position p is example `permute(p mod N)` of epoch `p // N`, where `permute`
  is a keyed bijection of [0, N) (a Feistel network, so nothing of size N is
  ever materialised). The order is thus a pure function of (seed, step), and a
  run resumed at step k reads exactly what the uninterrupted run read;
* each process reads only the rows of the global batch that its devices hold,
  and the rows become one global `jax.Array` per key, sharded on `batch`;
* reference dropout (how many of the K references of a character are valid,
  1..K) is a pure function of (seed, index);
* with a `TextEmbeddings` table (a Wan model reading precomputed UMT5
  output), each row also gets its prompt's `text_embeddings` [L, D], and its
  `text_tokens` are that prompt's token mask (idjax.data.text_embeddings).
"""

import concurrent.futures
import functools
import os

import grain
import jax
import numpy as np

from idjax import sharding as sharding_lib
from idjax.data import prompts
from idjax.data import world

_MASK64 = (1 << 64) - 1
_DROPOUT = 11  # purpose of the reference-dropout generator
_FEISTEL_ROUNDS = 6

# No pixel masks: the train step builds its masks from the boxes (as sampling
# does), so shipping the records' head masks to the device would be dead weight.
BATCH_KEYS = ("frames", "boxes", "identity_ids", "character_valid", "references",
              "reference_valid", "reference_mattes", "text_tokens", "index")
TEXT_EMBEDDINGS = "text_embeddings"  # the extra key of a batch for a table


class OnTheFlySource:
  """Renders record `index` of a virtual dataset of `size` examples on demand.

  Records equal those of the TFDS builder with the same world, seed and split.
  """

  def __init__(self, world_cfg: world.WorldConfig, seed: int, split: str, size: int):
    if size < 1:
      raise ValueError(f"size must be >= 1, got {size}.")
    self.world_cfg, self.seed, self.split, self.size = world_cfg, int(seed), split, int(size)

  def __len__(self):
    return self.size

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.size:
      raise IndexError(f"index {index} out of range for {self.size} examples.")
    return world.render_record(self.world_cfg, self.seed, index, self.split)

  def __repr__(self):
    return f"OnTheFlySource({self.world_cfg}, seed={self.seed}, split={self.split!r}, size={self.size})"


class TfdsSource:
  """A prepared TFDS split read through `tfds.data_source` (ArrayRecord, no TensorFlow)."""

  def __init__(self, data_source):
    self._source = data_source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = dict(self._source[int(index)])
    # TFDS decodes text to bytes and scalars to Python ints; match render_clip.
    record["prompt"] = record["prompt"].decode("utf-8")
    record["index"] = np.int64(record["index"])
    return record


def world_config(data_config) -> world.WorldConfig:
  return world.WorldConfig(
      resolution=data_config.resolution, num_frames=data_config.num_frames,
      max_characters=data_config.max_characters, min_characters=data_config.min_characters,
      num_references=data_config.num_references,
      reference_resolution=data_config.reference_resolution)


def make_source(data_config):
  """A random-access source (len, __getitem__) described by a config's `data` section.

  Fields of `data_config` (an ml_collections.ConfigDict):
    source: "on_the_fly" (render on demand) or "tfds" (prepare ArrayRecord
      files on first use, then read them).
    resolution: frame side H = W in pixels (32..128).
    num_frames: frames per clip T.
    max_characters, min_characters: characters per clip are drawn in
      [min, max]; arrays are padded to max_characters.
    num_references: K reference portraits per character.
    reference_resolution: reference side R in pixels.
    seed: world seed; record i is render_clip(world, seed, i, split=split).
    split: "train" or "heldout" (identities disjoint by hash).
    size: number of examples N (the epoch length).
    tfds_data_dir: where TFDS files live ("" = the TFDS default).
    text_len: prompt tokens per example (used by GlobalBatches, not here).
  """
  cfg = world_config(data_config)
  split, size, seed = data_config.split, int(data_config.size), int(data_config.seed)
  if split not in ("train", "heldout"):
    raise ValueError(f"data.split must be 'train' or 'heldout', got {split!r}.")
  if data_config.source == "on_the_fly":
    return OnTheFlySource(cfg, seed, split, size)
  if data_config.source == "tfds":
    # Imported here: TFDS is slow to import and on-the-fly use never needs it.
    import tensorflow_datasets as tfds
    from idjax.data import tfds_builder
    # Only the requested split is prepared; the other gets zero examples.
    sizes = dict(train=0, heldout=0)
    sizes[split] = size
    config = tfds_builder.builder_config(cfg, seed, sizes["train"], sizes["heldout"])
    _check_prepared(data_config.tfds_data_dir, tfds_builder.SyntheticIdentityVideo.name, config.name)
    return TfdsSource(tfds.data_source(
        tfds_builder.SyntheticIdentityVideo.name, split=split,
        data_dir=data_config.tfds_data_dir or None, builder_kwargs=dict(config=config)))
  raise ValueError(f"data.source must be 'on_the_fly' or 'tfds', got {data_config.source!r}.")


# Written by `python -m idjax.data.prepare` (idjax/data/prepare/run.py) into its --out.
PREPARE_PLAN = "prepare_plan.json"


def _check_prepared(data_dir, dataset: str, config_name: str) -> None:
  """ValueError when `data_dir` holds shards made by idjax.data.prepare but
  none for these data.* values: TFDS would otherwise render the synthetic
  world into the user's folder and train on that instead of their footage."""
  if not data_dir or not os.path.isfile(os.path.join(data_dir, PREPARE_PLAN)):
    return
  if not os.path.isdir(os.path.join(data_dir, dataset, config_name)):
    raise ValueError(
        f"{data_dir} holds footage prepared by idjax.data.prepare, but not for these data.* "
        f"values (no {dataset}/{config_name}); use the --config.data.* flags that prepare "
        "printed (also in its prepare_report.json).")


def _mix(x: int) -> int:
  """splitmix64 finaliser: a well-mixed 64-bit hash of a 64-bit integer."""
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
  x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
  return x ^ (x >> 31)


def permute(i: int, n: int, key: int) -> int:
  """The image of i under a keyed bijection of [0, n) (Feistel + cycle walking)."""
  half = max(1, ((n - 1).bit_length() + 1) // 2)
  mask = (1 << half) - 1
  x = i
  while True:
    left, right = x >> half, x & mask
    for r in range(_FEISTEL_ROUNDS):
      round_key = (key * 0x9E3779B97F4A7C15 + r * 0xD1B54A32D192ED03 + right) & _MASK64
      left, right = right, left ^ (_mix(round_key) & mask)
    x = (left << half) | right
    if x < n:  # walk the cycle until we land back inside the domain
      return x


def reference_valid(seed: int, index: int, num_characters: int, num_references: int) -> np.ndarray:
  """bool [C, K]: a random non-empty subset of each character's references."""
  rng = np.random.default_rng([seed, index, _DROPOUT])
  valid = np.zeros((num_characters, num_references), bool)
  for c in range(num_characters):
    count = int(rng.integers(1, num_references + 1))
    valid[c, rng.permutation(num_references)[:count]] = True
  return valid


def _to_example(record, *, seed, text_len, reference_dropout, text_table=None):
  """A source record -> one row of a batch (numpy, keys BATCH_KEYS, and
  TEXT_EMBEDDINGS with a `text_table`)."""
  C, K = record["references"].shape[:2]
  index = int(record["index"])
  if reference_dropout:
    ref_valid = reference_valid(seed, index, C, K)
  else:
    ref_valid = np.ones((C, K), bool)
  example = dict(
      frames=record["frames"], boxes=record["boxes"],
      identity_ids=record["identity_ids"], character_valid=record["character_valid"],
      references=record["references"],
      reference_valid=ref_valid & record["character_valid"][:, None],
      # Each reference's head matte (1 on the head); a source without one
      # (real footage) gives all ones: the whole portrait may be the head.
      reference_mattes=record.get("reference_mattes",
                                  np.ones(record["references"].shape[:-1], np.uint8)),
      text_tokens=prompts.tokenize(record["prompt"], text_len),
      index=np.int32(index))
  if text_table is not None:
    example["text_tokens"], example[TEXT_EMBEDDINGS] = text_table.lookup(record["prompt"])
  return example


class GlobalBatches:
  """Global batches of a source for a mesh; the order is a pure function of (seed, step).

  Args:
    source: random access (len, __getitem__) returning records with `index`.
    global_batch_size: B, rows across all processes.
    seed: order and reference-dropout seed.
    mesh: the device mesh; batches are sharded on the logical `batch` axis.
      None gives NumPy batches (for host-side tools).
    rules: logical-axis rules (None = idjax.sharding.DEFAULT_RULES).
    text_len: L, prompt tokens per row.
    text_embeddings: None, or a `TextEmbeddings` table of [L, D] rows: each
      row then gets its prompt's embeddings (a prompt without one raises
      UsageError when its batch is read).
    reference_dropout: draw 1..K valid references per character (else all K).
    num_threads: parallel reads within this process.
    process_index, process_count: override jax's values to simulate one
      process of many (tests); `local_batch_at` then returns that share
      (`batch_at` needs the real processes).
  """

  def __init__(self, source, *, global_batch_size, seed, mesh, rules=None, text_len=24,
               text_embeddings=None, reference_dropout=True, num_threads=None,
               process_index=None, process_count=None):
    self.source = source
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.mesh = mesh
    self.rules = sharding_lib.DEFAULT_RULES if rules is None else rules
    self.text_len = int(text_len)
    self._simulated = process_count is not None
    self.process_index = jax.process_index() if process_index is None else int(process_index)
    self.process_count = jax.process_count() if process_count is None else int(process_count)
    ways = sharding_lib.batch_axis_size(mesh, self.rules) if mesh is not None else 1
    if self.global_batch_size % ways or self.global_batch_size % self.process_count:
      raise ValueError(f"global batch size {self.global_batch_size} must divide by the batch "
                       f"sharding ({ways}) and the process count ({self.process_count}).")
    self.keys = BATCH_KEYS + ((TEXT_EMBEDDINGS,) if text_embeddings is not None else ())
    self._dataset = grain.MapDataset.source(source).map(functools.partial(
        _to_example, seed=self.seed, text_len=self.text_len, reference_dropout=reference_dropout,
        text_table=text_embeddings))
    self._pool = concurrent.futures.ThreadPoolExecutor(num_threads or min(4, os.cpu_count() or 1))
    # A separate thread assembles the next step, so it never waits on a read
    # queued behind itself.
    self._ahead = concurrent.futures.ThreadPoolExecutor(1)
    self._next = None  # (step, future of its local batch) read ahead by batch_at
    self._rows = self._local_rows()

  def _local_rows(self) -> tuple[int, int]:
    """[start, stop) of the global batch rows that this process feeds."""
    B = self.global_batch_size
    if self._simulated or self.mesh is None:
      per = B // self.process_count
      return self.process_index * per, (self.process_index + 1) * per
    spans = self._sharding(1).addressable_devices_indices_map((B,)).values()
    starts = [s[0].start or 0 for s in spans]
    stops = [B if s[0].stop is None else s[0].stop for s in spans]
    return min(starts), max(stops)

  def _sharding(self, ndim):
    return sharding_lib.batch_sharding(self.mesh, ndim, self.rules)

  def indices_at(self, step: int) -> np.ndarray:
    """int64 [B]: the global example indices of step `step`, in batch-row order."""
    n = len(self.source)
    positions = step * self.global_batch_size + np.arange(self.global_batch_size)
    return np.array([permute(int(p % n), n, _mix((self.seed << 32) ^ int(p // n)))
                     for p in positions], np.int64)

  def local_batch_at(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of step `step` (numpy), reading only those examples."""
    start, stop = self._rows
    indices = self.indices_at(step)[start:stop]
    rows = list(self._pool.map(self._dataset.__getitem__, indices))
    return {k: np.stack([r[k] for r in rows]) for k in self.keys}

  def _globalize(self, local):
    if self.mesh is None:  # no devices asked for: host batches
      return local
    B = self.global_batch_size
    return {k: jax.make_array_from_process_local_data(self._sharding(v.ndim), v, (B,) + v.shape[1:])
            for k, v in local.items()}

  def batch_at(self, step: int) -> dict[str, jax.Array]:
    """Step `step` as global arrays sharded on the batch axis (keys `self.keys`).

    Starts reading step + 1 in the background, so a loop calling batch_at(s),
    batch_at(s + 1), ... overlaps reading with the training step. Any other
    order still gets the right batch, only without the head start.
    """
    ahead, self._next = self._next, None
    if ahead is not None and ahead[0] == step:
      local = ahead[1].result()
    else:
      local = self.local_batch_at(step)
    self._next = (step + 1, self._ahead.submit(self.local_batch_at, step + 1))
    return self._globalize(local)

  def iterate(self, start_step: int = 0):
    """Yields batch_at(start_step), batch_at(start_step + 1), ..."""
    step = start_step
    while True:
      yield self.batch_at(step)
      step += 1

  def __iter__(self):
    return self.iterate(0)
