"""Multi-process start-up (`jax.distributed.initialize`) with bounded waits.

Process settings come from flags or from the environment variables
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. JAX's
coordination service then heartbeats every process: when one dies the others
learn it within `heartbeat_timeout_s`. A step blocked in a collective on a dead
peer may not notice, so `Watchdog` also ends a process whose steps stop
completing, with one clear sentence rather than a silent hang.
"""

import dataclasses
import os
import sys
import threading
import time

import jax

from idjax import configlib


@dataclasses.dataclass
class ProcessSettings:
  coordinator: str | None = None
  num_processes: int = 1
  process_id: int = 0


def settings_from(coordinator=None, num_processes=None, process_id=None) -> ProcessSettings:
  """Flags win over environment variables; a single process needs neither."""
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
  try:
    num = int(num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES", 1))
    pid = int(process_id if process_id is not None else env.get("JAX_PROCESS_ID", 0))
  except ValueError as e:
    raise configlib.UsageError(f"Number of processes and process id must be integers ({e}).")
  if num < 1 or not 0 <= pid < num:
    raise configlib.UsageError(f"Process id {pid} is not in [0, {num}).")
  if num > 1 and not coordinator:
    raise configlib.UsageError(
        "A multi-process run needs --coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS).")
  return ProcessSettings(coordinator, num, pid)


def initialize(settings: ProcessSettings, *, init_timeout_s=300, heartbeat_timeout_s=100):
  """Joins the process group (no-op for one process). Must run before any JAX work."""
  if settings.num_processes <= 1:
    return
  try:
    jax.distributed.initialize(
        coordinator_address=settings.coordinator, num_processes=settings.num_processes,
        process_id=settings.process_id, initialization_timeout=int(init_timeout_s),
        heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        shutdown_timeout_seconds=int(heartbeat_timeout_s))
  except Exception as e:  # JAX raises assorted runtime errors here.
    print(f"error: process {settings.process_id} could not join the {settings.num_processes}-"
          f"process group at {settings.coordinator} within {init_timeout_s} s ({e}).",
          file=sys.stderr)
    sys.exit(3)


class Watchdog:
  """Exits the process (code 3) if `beat()` is not called for `timeout_s` seconds.

  Used only in multi-process runs, where a dead peer otherwise blocks the
  next collective forever. os._exit: a hung collective cannot be interrupted.
  """

  def __init__(self, timeout_s: float, what="a training step"):
    self.timeout_s = float(timeout_s)
    self.what = what
    self._last = time.monotonic()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def beat(self):
    self._last = time.monotonic()

  def _run(self):
    while not self._stop.wait(min(1.0, self.timeout_s / 4)):
      if time.monotonic() - self._last > self.timeout_s:
        print(f"error: process {jax.process_index()} made no progress on {self.what} for "
              f"{self.timeout_s:.0f} s; another process has probably died. Exiting.",
              file=sys.stderr, flush=True)
        os._exit(3)

  def stop(self):
    self._stop.set()
