"""The page's inputs -> checked values, or one sentence the page shows.

Plain functions of plain values (strings, numbers, file paths), so they are
tested without a browser. Every refusal is an InputError whose message is one
sentence naming the field, in the page's words (not sample.py's flags).
"""

import dataclasses
import math
import os

import numpy as np

from idjax.app import layouts
from idjax.config_rules import MAX_SEED
from idjax.configlib import UsageError
from idjax.layout import validate_box
from idjax.sampling.cli import load_image

MAX_CHARACTERS = 8
MAX_REFERENCES = 5
# An upload larger than this is refused before it is decoded. References are
# shrunk to the model's reference size (tens of pixels), so this is generous.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_STEPS = 200
MAX_GUIDANCE = 20.0
TYPED = "typed boxes"  # the trajectory choice that reads the start and end boxes


class InputError(ValueError):
  """A mistake in the page's inputs: shown in the page as one sentence."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the loaded model takes (the page's bounds)."""

  max_characters: int  # min(8, the model's characters)
  max_references: int  # min(5, the model's references per character)
  max_frames: int
  max_steps: int = MAX_STEPS

  @classmethod
  def for_model(cls, max_characters: int, num_references: int, default_frames: int) -> "Limits":
    return cls(
        max_characters=min(MAX_CHARACTERS, int(max_characters)),
        max_references=min(MAX_REFERENCES, int(num_references)),
        max_frames=max(16, 4 * int(default_frames)),
    )


@dataclasses.dataclass(frozen=True)
class Character:
  """One character as the page sends it."""

  files: tuple = ()  # uploaded reference paths
  trajectory: str = "centre"  # a layouts.PRESETS name or TYPED
  start: str = ""  # typed boxes 'y0, x0, y1, x1'
  end: str = ""  # empty: the start box for every frame


def check_prompt(prompt) -> str:
  prompt = "" if prompt is None else str(prompt)
  if not prompt.strip():
    raise InputError("The prompt is empty: describe the clip, e.g. 'a person with pale skin'.")
  return prompt


def check_count(count, limits: Limits) -> int:
  if (
      not isinstance(count, (int, float))
      or count != int(count)
      or not (1 <= count <= limits.max_characters)
  ):
    raise InputError(
        f"The number of characters must be 1 to {limits.max_characters} "
        f"(what this model takes), got {count}."
    )
  return int(count)


def read_reference(path, what: str) -> np.ndarray:
  """An uploaded file -> uint8 RGB [h, w, 3] (as sample.py reads it), or InputError."""
  name = os.path.basename(str(path))
  if not os.path.isfile(path):
    raise InputError(f"{what} {name!r} was not received; upload it again.")
  size = os.path.getsize(path)
  if size > MAX_UPLOAD_BYTES:
    raise InputError(
        f"{what} {name!r} is {size / 2**20:.1f} MB; the limit is "
        f"{MAX_UPLOAD_BYTES // 2**20} MB."
    )
  try:
    return load_image(path)
  except UsageError as e:
    if "too large" in str(e):
      raise InputError(f"{what} {name!r} has too many pixels; give a smaller image.") from None
    if "empty" in str(e):
      raise InputError(f"{what} {name!r} is empty.") from None
    raise InputError(
        f"{what} {name!r} is not an image that can be read (give a PNG, JPEG, "
        "GIF, BMP or WebP file)."
    ) from None


def check_references(files, index: int, limits: Limits) -> list:
  """Character `index`'s uploads -> their paths, each one readable."""
  files = [str(f) for f in (files or [])]
  who = f"Character {index + 1}"
  if not files:
    raise InputError(
        f"{who} has no reference image: upload 1 to {limits.max_references}, or "
        "pick a held-out identity."
    )
  if len(files) > limits.max_references:
    raise InputError(
        f"{who} has {len(files)} reference images; this model takes 1 to "
        f"{limits.max_references}."
    )
  for path in files:
    read_reference(path, f"{who}'s reference")
  return files


def parse_box(text, what: str) -> np.ndarray:
  """'y0, x0, y1, x1' (fractions of the frame) -> float64 [4] as typed, or InputError.

  Kept in float64 so that the sample.py command the page shows carries the
  numbers as typed (sample.py reads them into float32, as the Generator does)."""
  text = "" if text is None else str(text)
  try:
    values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
  except ValueError:
    values = None
  if values is None or len(values) != 4:
    raise InputError(f"{what} must be four numbers y0, x0, y1, x1 between 0 and 1, got {text!r}.")
  try:
    validate_box(values, what)
  except ValueError as e:
    raise InputError(str(e)) from None
  return np.asarray(values, np.float64)


def trajectory(character: Character, index: int, count: int) -> np.ndarray:
  """The character's start and end box, float [2, 4]."""
  who = f"Character {index + 1}"
  if character.trajectory in layouts.PRESETS:
    return layouts.preset_boxes(character.trajectory, index, count)
  if character.trajectory != TYPED:
    raise InputError(f"{who}'s trajectory must be one of {', '.join(layouts.PRESETS + (TYPED,))}.")
  start = parse_box(character.start, f"{who}'s start box")
  end = (
      start
      if not str(character.end or "").strip()
      else parse_box(character.end, f"{who}'s end box")
  )
  return np.stack([start, end]).astype(np.float64)


def check_int(value, what: str, lo: int, hi: int) -> int:
  if value is None or isinstance(value, bool):
    raise InputError(f"{what} is empty; give a whole number from {lo} to {hi}.")
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}.") from None
  if not math.isfinite(number) or number != int(number) or not lo <= number <= hi:
    raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}.")
  return int(number)


def check_float(value, what: str, lo: float, hi: float) -> float:
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise InputError(f"{what} must be a number from {lo:g} to {hi:g}, got {value!r}.") from None
  if not (math.isfinite(number) and lo <= number <= hi):
    raise InputError(f"{what} must be a number from {lo:g} to {hi:g}, got {value!r}.")
  return number


@dataclasses.dataclass(frozen=True)
class Checked:
  """A request that passed every check the page makes."""

  prompt: str
  references: list  # per character, its reference paths
  boxes: list  # per character, float [2, 4] start and end box
  identity_strength: float
  text_guidance: float
  identity_guidance: float
  frames: int
  steps: int
  seed: int


def check_form(
    prompt,
    characters,
    identity_strength,
    text_guidance,
    identity_guidance,
    frames,
    steps,
    seed,
    limits: Limits,
) -> Checked:
  """Every input of the page, first mistake first (prompt, characters, numbers)."""
  prompt = check_prompt(prompt)
  count = check_count(len(characters), limits)
  references = [check_references(c.files, i, limits) for i, c in enumerate(characters)]
  boxes = [trajectory(c, i, count) for i, c in enumerate(characters)]
  return Checked(
      prompt=prompt,
      references=references,
      boxes=boxes,
      identity_strength=check_float(identity_strength, "Identity strength", 0.0, 1.0),
      text_guidance=check_float(text_guidance, "Text guidance", 0.0, MAX_GUIDANCE),
      identity_guidance=check_float(identity_guidance, "Identity guidance", 0.0, MAX_GUIDANCE),
      frames=check_int(frames, "Frames", 1, limits.max_frames),
      steps=check_int(steps, "Steps", 1, limits.max_steps),
      seed=check_int(seed, "Seed", 0, MAX_SEED),
  )
