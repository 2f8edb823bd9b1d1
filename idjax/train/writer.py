"""Metrics to WORKDIR/metrics.jsonl (one object per logged step) and to
TensorBoard event files in WORKDIR/events. Only process 0 writes."""

import json
import os

import jax
import numpy as np


class MetricsWriter:

  def __init__(self, workdir, enabled=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # only the writing process needs it
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "events"))

  def write(self, step: int, metrics: dict) -> None:
    """metrics: name -> scalar (python, numpy or jax)."""
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **values}, sort_keys=True) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(name, value, int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
