"""Multi-process start-up (`jax.distributed.initialize`) with bounded waits.

Process settings come from flags or from the environment variables
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (and
JAX_COORDINATOR_BIND_ADDRESS).

Network exposure. Process 0 runs JAX's coordination service, a gRPC server
without authentication: JAX binds it to every interface by default. Here a
loopback coordinator address (localhost, 127.0.0.1, ::1) binds it to loopback
only, so a single-host run is not reachable from the network; for several
hosts, `--coordinator-bind HOST:PORT` picks the interface, which should be on
a trusted network.

A dead peer. JAX's own reaction is to abort every survivor with a C++ stack
dump: after `heartbeat_timeout_s` when a worker dies, at once when the
coordinator dies (its Python callback hook cannot be used: the status it
passes has no Python binding). So each run also holds a `Lifeline`: a plain
TCP connection from every process to process 0, over which the kernel itself
reports a killed process within milliseconds. Any survivor then prints one
sentence and exits 3; process 0 watches every peer and the others watch
process 0, so the news reaches everyone. `Watchdog` ends a process whose
steps stop completing (a peer that hangs rather than dies).
"""

import atexit
import dataclasses
import os
import socket
import sys
import threading
import time
import traceback

import jax
from jax.experimental import multihost_utils
import numpy as np

from idjax import configlib

LOST_PEER_EXIT = 3
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclasses.dataclass
class ProcessSettings:
  coordinator: str | None = None
  num_processes: int = 1
  process_id: int = 0
  bind: str | None = None  # where process 0's coordination service listens


def _split_address(address: str, what: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise configlib.UsageError(f"{what} {address!r} must look like HOST:PORT.")
  return host, int(port)


def settings_from(coordinator=None, num_processes=None, process_id=None,
                  bind=None) -> ProcessSettings:
  """Flags win over environment variables; a single process needs neither.
  Without a bind address, a loopback coordinator listens on loopback only."""
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
  bind = bind or env.get("JAX_COORDINATOR_BIND_ADDRESS") or None
  try:
    num = int(num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES", 1))
    pid = int(process_id if process_id is not None else env.get("JAX_PROCESS_ID", 0))
  except ValueError as e:
    raise configlib.UsageError(
        f"Number of processes and process id must be integers ({e}).") from None
  if num < 1 or not 0 <= pid < num:
    raise configlib.UsageError(f"Process id {pid} is not in [0, {num}).")
  if num > 1 and not coordinator:
    raise configlib.UsageError(
        "A multi-process run needs --coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS).")
  if num > 1:
    host, port = _split_address(coordinator, "--coordinator")
    if bind:
      _split_address(bind, "--coordinator-bind")
    elif host in _LOOPBACK:
      bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
  return ProcessSettings(coordinator, num, pid, bind)


def initialize(settings: ProcessSettings, *, init_timeout_s=300, heartbeat_timeout_s=100):
  """Joins the process group and starts the `Lifeline` (no-op for one process).
  Must run before any JAX work."""
  if settings.num_processes <= 1:
    return
  try:
    jax.distributed.initialize(
        coordinator_address=settings.coordinator, num_processes=settings.num_processes,
        process_id=settings.process_id, initialization_timeout=int(init_timeout_s),
        coordinator_bind_address=settings.bind,
        heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        shutdown_timeout_seconds=int(heartbeat_timeout_s))
  except Exception as e:  # JAX raises assorted runtime errors here.
    print(f"error: process {settings.process_id} could not join the {settings.num_processes}-"
          f"process group at {settings.coordinator} within {init_timeout_s} s ({e}).",
          file=sys.stderr)
    sys.exit(LOST_PEER_EXIT)
  Lifeline(settings, init_timeout_s)


def lost_peer(process_id: int, peer: int) -> None:
  """The one sentence, then exit: a survivor cannot finish a collective run."""
  who = f"process {peer}" + (" (the coordinator)" if peer == 0 else "")
  line = (f"error: process {process_id} lost {who}, which ended without finishing the run; "
          f"the run cannot go on without it, so this process exits too (code {LOST_PEER_EXIT}).\n")
  try:
    sys.stderr.flush()
  except (OSError, ValueError):
    pass
  os.write(2, line.encode())  # one write: JAX's C++ logs may interleave with print's pieces
  os._exit(LOST_PEER_EXIT)


class Lifeline:
  """One TCP connection from every process to process 0; see the module doc.

  Process 0 listens on a fresh port of its bind host; the port and a random
  token reach the others with `broadcast_one_to_all`, and a connection that
  does not present the token is dropped. Once every peer has joined, the
  listening socket closes. A process that ends normally says goodbye first
  (atexit), so only an unannounced close counts as a death. An uncaught
  error in a multi-process run ends the process at once (its traceback, then
  exit 1) instead of waiting in JAX's shutdown barrier for peers that are
  blocked on it; the lifeline then tells them.
  """
  _BYE = b"B"

  def __init__(self, settings: ProcessSettings, init_timeout_s: float):
    self.process_id = settings.process_id
    self._conns = []
    self._lock = threading.Lock()
    host, _ = _split_address(settings.coordinator, "--coordinator")
    bind_host = _split_address(settings.bind, "--coordinator-bind")[0] if settings.bind else ""
    server, message = None, np.zeros(5, np.uint32)
    if self.process_id == 0:
      if not bind_host and socket.has_dualstack_ipv6():
        server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
      else:
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        server = socket.create_server((bind_host, 0), family=family)
      message[0] = server.getsockname()[1]
      message[1:] = np.frombuffer(os.urandom(16), np.uint32)
    message = np.asarray(multihost_utils.broadcast_one_to_all(message))
    self._token = message[1:].tobytes()
    if server is not None:
      threading.Thread(target=self._accept, args=(server, settings.num_processes - 1,
                                                  init_timeout_s), daemon=True).start()
    else:
      conn = socket.create_connection((host, int(message[0])), timeout=init_timeout_s)
      conn.sendall(self._token + int(self.process_id).to_bytes(4, "little"))
      self._watch(conn, 0)
    atexit.register(self._goodbye)
    sys.excepthook = self._uncaught

  def _accept(self, server, expected, timeout_s):
    server.settimeout(timeout_s)
    joined = set()
    try:
      while len(joined) < expected:
        conn, _ = server.accept()
        conn.settimeout(10)
        hello = b""
        try:
          while len(hello) < len(self._token) + 4:
            part = conn.recv(len(self._token) + 4 - len(hello))
            if not part:
              break
            hello += part
        except OSError:
          pass
        peer = int.from_bytes(hello[-4:], "little") if len(hello) == len(self._token) + 4 else -1
        if hello[:len(self._token)] != self._token or not 0 < peer <= expected or peer in joined:
          conn.close()  # not one of this run's processes
          continue
        joined.add(peer)
        self._watch(conn, peer)
    except OSError:
      pass  # JAX's own start-up timeout reports a peer that never joined
    finally:
      server.close()

  def _watch(self, conn, peer):
    conn.settimeout(None)
    with self._lock:
      self._conns.append(conn)
    threading.Thread(target=self._listen, args=(conn, peer), daemon=True).start()

  def _listen(self, conn, peer):
    try:
      while True:
        data = conn.recv(64)
        if not data:
          break
        if self._BYE in data:
          return  # a clean end; nothing more to watch
    except OSError:
      pass
    lost_peer(self.process_id, peer)

  def _goodbye(self):
    with self._lock:
      for conn in self._conns:
        try:
          conn.sendall(self._BYE)
        except OSError:
          pass

  def _uncaught(self, kind, value, tb):
    time.sleep(1.0)  # a peer's death reported by the lifeline explains this error better
    traceback.print_exception(kind, value, tb)
    sys.stderr.flush()
    os._exit(1)


class Watchdog:
  """Exits the process (code 3) if `beat()` is not called for `timeout_s` seconds.

  Used only in multi-process runs, where a dead peer otherwise blocks the
  next collective forever. os._exit: a hung collective cannot be interrupted.
  """

  def __init__(self, timeout_s: float, what="a training step"):
    self.timeout_s = float(timeout_s)
    self.what = what
    self._last = time.monotonic()
    self._allowance = 1
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def beat(self, steps: int = 1):
    """Progress now; the next beat is due within `steps` x timeout_s (a host
    about to wait for `steps` queued steps gives each the usual time)."""
    self._last = time.monotonic()
    self._allowance = max(1, int(steps))

  def _run(self):
    while not self._stop.wait(min(1.0, self.timeout_s / 4)):
      if time.monotonic() - self._last > self.timeout_s * self._allowance:
        print(f"error: process {jax.process_index()} made no progress on {self.what} for "
              f"{self.timeout_s:.0f} s; another process has probably died. Exiting.",
              file=sys.stderr, flush=True)
        os._exit(LOST_PEER_EXIT)

  def stop(self):
    self._stop.set()
