"""Output paths checked before any work, and files written atomically.

Every CLI checks where it will write before it renders, trains or samples, so
a mistake costs seconds, not the run: the target is not a file where a folder
is wanted (or the reverse), it does not lie under a regular file, and the
nearest existing folder accepts a new file. Nothing is created by a check.
"""

import contextlib
import os
import tempfile

from idjax.configlib import UsageError


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _check_creatable(path: str, flag: str) -> None:
  """The nearest existing ancestor of `path` must be a folder that takes a new file."""
  ancestor = _nearest_existing(os.path.dirname(path))
  if not os.path.isdir(ancestor):
    raise UsageError(f"{flag} {path} lies under {ancestor}, which is a file, not a folder.")
  # os.access says yes to root on any mode; a probe file also sees read-only
  # mounts and pseudo file systems. It is removed at once.
  try:
    fd, probe = tempfile.mkstemp(prefix=".idjax-write-probe-", dir=ancestor)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"{flag} {path} cannot be created: writing in {ancestor} fails "
                     f"({e.strerror or type(e).__name__}).") from None


def check_folder(path: str, flag: str) -> str:
  """Refuses a folder path that is a file, lies under a file or cannot be
  created or written; returns it absolute. Creates nothing."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.exists(path):
    _check_creatable(path, flag)
  elif not os.path.isdir(path):
    raise UsageError(f"{flag} {path} is a file, not a folder.")
  elif not os.access(path, os.W_OK | os.X_OK):
    raise UsageError(f"{flag} {path} is not writable.")
  return path


def check_files(paths, flag: str, overwrite: bool) -> None:
  """Output files: none may be a folder; an existing one needs `overwrite`;
  their folder must be creatable and writable."""
  for path in paths:
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
      raise UsageError(f"{flag}: {path} is a folder, not a file.")
    if os.path.exists(path) and not overwrite:
      raise UsageError(f"{path} exists; pass --overwrite to replace it.")
    _check_creatable(path, flag)


@contextlib.contextmanager
def atomic_file(path: str):
  """Yields a temporary path beside `path` to write; when the block ends
  without an exception the file is flushed to disk and renamed onto `path`,
  and in every case the temporary file is gone afterwards: an interrupted run
  never leaves a truncated file under the final name. The temporary name
  keeps the extension (some writers pick the format by it)."""
  directory, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(directory, f".{stem}.{os.getpid()}.tmp{ext}")
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write(path: str, write) -> None:
  """Calls write(tmp_path) inside `atomic_file(path)`."""
  with atomic_file(path) as tmp:
    write(tmp)


def write_text(path: str, text: str) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  atomic_write(path, write)
