"""One temporary folder per request, under one root the app owns.

Every file a request writes (uploads copied in, the clip, its JSON, plots)
goes into its own folder; the newest `keep` folders stay (the page serves
their files), older ones are removed when a new one is made, and the root
goes when the app exits.
"""

import collections
import os
import shutil
import tempfile
import threading


class RequestFolders:

  def __init__(self, root: str, keep: int = 32):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}.")
    self.root = os.path.abspath(root)
    self.keep = keep
    self._made = collections.deque()  # in the order made (timestamps can tie)
    self._lock = threading.Lock()
    os.makedirs(self.root, exist_ok=True)

  def new(self, kind: str = "request") -> str:
    """A fresh, empty folder (absolute path); removes the oldest beyond `keep`."""
    with self._lock:
      folder = tempfile.mkdtemp(prefix=f"{kind}-", dir=self.root)
      self._made.append(folder)
      while len(self._made) > self.keep:
        shutil.rmtree(self._made.popleft(), ignore_errors=True)
      return folder
