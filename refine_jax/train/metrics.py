"""Metrics sinks: metrics.jsonl (append + flush per line), TensorBoard, and text samples.

On resume, lines for steps after the restored checkpoint (they will be re-run) and any torn last
line from a crash are dropped by an atomic rewrite, so the file stays one line per step.
"""

import json
import math
import os

import jax
import numpy as np
from absl import logging


def _clean(v):
  if isinstance(v, (np.ndarray, np.generic, jax.Array)):
    v = np.asarray(v).item() if np.asarray(v).size == 1 else np.asarray(v).tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return None  # JSON has no NaN/inf; null marks it
  return v


def read_metrics(path):
  """Parsed lines of a metrics.jsonl, skipping a torn/corrupt line."""
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("skipping unreadable line in %s", path)
  return rows


class MetricsWriter:
  """Writes on process 0 only; `resume_step` drops lines with step > resume_step."""

  def __init__(self, workdir, *, resume_step=0, tensorboard=True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")
    os.replace(tmp, self.path)
    self._file = open(self.path, "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(logdir=workdir)
      except ImportError:
        logging.warning("tensorboardX not installed; TensorBoard events are skipped")

  def write(self, step, metrics):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _clean(v) for k, v in metrics.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))

  def text(self, step, tag, text):
    if self.enabled and self._tb is not None:
      self._tb.add_text(tag, text, int(step))

  def flush(self):
    if self.enabled and self._tb is not None:
      self._tb.flush()

  def close(self):
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
