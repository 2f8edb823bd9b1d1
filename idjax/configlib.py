"""Config files and `--config.key=value` overrides, with errors a user can act on.

A config file is a Python file with `get_config()` returning an
`ml_collections.ConfigDict` (optionally `get_config(arg)` for
`--config path.py:arg`). Overrides are typed by the value already in the
config, so `--config.train.steps=abc` is refused rather than silently kept as
a string.
"""

import argparse
import ast
import importlib.util
import json
import os
import sys

import ml_collections


class UsageError(ValueError):
  """A mistake in what the user asked for: reported in one sentence, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose mistakes are UsageErrors (one sentence, exit 2), not its own exit."""

  def error(self, message):
    raise UsageError(message[:1].upper() + message[1:] + ".")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"Config file {path!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location(
      "idjax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # A broken config file is the user's to fix.
    raise UsageError(f"Config file {path!r} failed to load: {e}") from e
  if not hasattr(module, "get_config"):
    raise UsageError(f"Config file {path!r} has no get_config() function.")
  config = module.get_config(arg) if arg else module.get_config()
  return config


def _coerce(key: str, old, text: str):
  """Parses `text` as the type of the existing value `old`."""
  try:
    if isinstance(old, bool):
      lowered = text.lower()
      if lowered in ("true", "1", "yes"):
        return True
      if lowered in ("false", "0", "no"):
        return False
      raise ValueError
    if isinstance(old, int):
      return int(text)
    if isinstance(old, float):
      return float(text)
    if isinstance(old, str):
      return text
    if old is None:
      try:
        return ast.literal_eval(text)
      except (ValueError, SyntaxError):
        return text
    if isinstance(old, (tuple, list)):
      value = ast.literal_eval(text)
      if not isinstance(value, (tuple, list)):
        value = (value,)
      return type(old)(value)
    if isinstance(old, dict):
      return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    pass
  raise UsageError(f"--config.{key}={text!r}: expected a value of type {type(old).__name__}.")


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts[:-1]):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise UsageError(f"--config.{key}: unknown config key {'.'.join(parts[:i + 1])!r}.")
    node = node[part]
  last = parts[-1]
  if not isinstance(node, ml_collections.ConfigDict) or last not in node:
    raise UsageError(f"--config.{key}: unknown config key {key!r}.")
  # Fields linked with `get_ref` share one value: overriding one moves all.
  with node.ignore_type():
    node[last] = _coerce(key, node[last], text)


def parse_overrides(config: ml_collections.ConfigDict, args: list[str]) -> list[str]:
  """Applies every `--config.a.b=v` (or `--config.a.b v`) in args; returns the rest."""
  rest = []
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" in body:
        key, text = body.split("=", 1)
      elif i + 1 < len(args):
        key, text = body, args[i + 1]
        i += 1
      else:
        raise UsageError(f"{arg} needs a value.")
      apply_override(config, key, text)
    else:
      rest.append(arg)
    i += 1
  return rest


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
  """Atomically: a crash leaves the old file or the new one, never a torn one."""
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load_saved_config(path: str) -> ml_collections.ConfigDict:
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def exit_on_usage_error(fn):
  """Decorator for `main()`: a UsageError becomes one line on stderr and exit 2."""
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UsageError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  return wrapped
