"""Precomputed text-encoder embeddings (Wan's UMT5-XXL), looked up by prompt.

A Wan model with `model.text_input = "embeddings"` reads no prompt tokens:
it takes the text encoder's output, which the user computes once, outside
idjax (UMT5-XXL is 11 GB of weights), and stores in one file named by
`config.data.text_embeddings`:

  a .safetensors file holding
    embeddings  float32 / bfloat16 / float16 [N, L, D]: row i is the text
                encoder's output for prompt i, L = config.data.text_len
                (Wan: 512) tokens of D = config.model.text_dim (UMT5-XXL:
                4096), zero after the prompt's last token (how Wan's
                pipeline pads; the zero rows are what marks the padding);
  and, in the header's `__metadata__`, `prompts`: a JSON list of the N
  prompt strings, in row order, each once.

`write_text_embeddings` writes one (NumPy alone); `TextEmbeddings` memory-
maps it, so a table of many prompts costs no memory until rows are read.
A prompt is matched exactly (same characters); one with no row is a
UsageError naming it. The empty prompt needs no row: it is the all-zero
context, Wan's "no text".
"""

import json
import os

import numpy as np

from idjax import weight_files
from idjax.configlib import UsageError

TENSOR = "embeddings"
PROMPTS = "prompts"  # the __metadata__ key


def write_text_embeddings(path, prompts, embeddings) -> None:
  """Writes `embeddings` [N, L, D] (row i for prompts[i]) in the format above."""
  prompts = [str(p) for p in prompts]
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 3 or len(embeddings) != len(prompts):
    raise ValueError(
        f"embeddings must be [N, L, D] with N = {len(prompts)} prompts, got "
        f"shape {embeddings.shape}."
    )
  if len(set(prompts)) != len(prompts):
    raise ValueError("Each prompt may appear only once.")
  weight_files.write_safetensors(
      path, {TENSOR: embeddings}, metadata={PROMPTS: json.dumps(prompts)}
  )


class TextEmbeddings:
  """The table of one file (module docstring).

  Attributes:
    path: the file.
    prompts: the N prompts, in row order.
    text_len, text_dim: L and D.
  """

  def __init__(self, path):
    self.path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(self.path):
      raise UsageError(
          f"Text embeddings file {self.path} does not exist " "(config.data.text_embeddings)."
      )
    try:
      header = weight_files.read_safetensors_header(self.path)
      metadata = weight_files.read_safetensors_metadata(self.path)
      prompts = json.loads(metadata.get(PROMPTS, "null"))
      table = (
          weight_files.read_safetensors(self.path, [TENSOR])[TENSOR] if TENSOR in header else None
      )
    except ValueError as e:  # WeightFileError and JSON errors
      raise UsageError(f"Text embeddings file {self.path} cannot be read ({e}).") from None
    if table is None or table.ndim != 3:
      raise UsageError(
          f"Text embeddings file {self.path} needs a tensor {TENSOR!r} of shape " "[N, L, D]."
      )
    if (
        not isinstance(prompts, list)
        or len(prompts) != len(table)
        or not all(isinstance(p, str) for p in prompts)
        or len(set(prompts)) != len(prompts)
    ):
      raise UsageError(
          f"Text embeddings file {self.path} needs __metadata__ {PROMPTS!r}: a JSON "
          f"list of its {len(table)} distinct prompts, in row order."
      )
    self.prompts = prompts
    self._row = {p: i for i, p in enumerate(prompts)}
    self._table = table
    self.text_len, self.text_dim = int(table.shape[1]), int(table.shape[2])

  def __contains__(self, prompt) -> bool:
    return prompt == "" or prompt in self._row

  def check_shape(self, text_len: int, text_dim: int) -> None:
    """UsageError unless rows are [text_len, text_dim] (the config's sizes)."""
    if (self.text_len, self.text_dim) != (int(text_len), int(text_dim)):
      raise UsageError(
          f"Text embeddings file {self.path} holds [{self.text_len}, {self.text_dim}] rows; the "
          f"config needs [{text_len}, {text_dim}] (data.text_len, model.text_dim)."
      )

  def lookup(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask int32 [L]: 1 for the prompt's tokens, 0 for padding; embeddings [L, D]
    in the file's dtype). The mask stands in for the prompt tokens: the model
    zeroes the positions whose token is 0, and the trainer's text dropout
    zeroes all of them."""
    if prompt == "":
      return (
          np.zeros((self.text_len,), np.int32),
          np.zeros((self.text_len, self.text_dim), self._table.dtype),
      )
    row = self._row.get(prompt)
    if row is None:
      raise UsageError(
          f"The prompt {prompt!r} has no text embedding in {self.path} "
          f"({len(self.prompts)} prompts); add its row to that file."
      )
    embeddings = np.array(self._table[row])
    mask = np.any(embeddings != 0, axis=-1).astype(np.int32)
    return mask, embeddings


def for_config(config, path=None):
  """The table a config's model reads (None for prompt tokens), its shape checked.

  `path` overrides config.data.text_embeddings (sample.py --text-embeddings).
  """
  if config.model.get("text_input", "tokens") != "embeddings":
    return None
  path = path or config.data.get("text_embeddings", "")
  if not path:
    raise UsageError(
        "This model reads precomputed text embeddings (model.text_input="
        "'embeddings'): set config.data.text_embeddings to their .safetensors file."
    )
  table = TextEmbeddings(path)
  table.check_shape(config.data.text_len, config.model.text_dim)
  return table
