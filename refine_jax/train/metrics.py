"""Metrics sinks: metrics.jsonl, TensorBoard, and text samples; local paths or gs:// URLs.

On resume, lines for steps after the restored checkpoint (they will be re-run) and any torn last
line from a crash are dropped by an atomic rewrite, so the file stays one line per step.

Locally each row is appended and flushed at once. On gs:// an object cannot be appended to, so
rows are buffered and `flush()` appends them with one GCS compose (paths.append_bytes: only the
new bytes travel, and a kill never loses rows already in the object). The loop flushes before
every checkpoint save, so each checkpointed step's row is in the bucket before the checkpoint can
exist; otherwise rows go up at most every `flush_secs`.
"""

import json
import math
import time

import jax
import numpy as np
from absl import logging

from refine_jax import paths

try:
  from tensorboardX import SummaryWriter, record_writer
except ImportError:  # events are optional: summary_writer() then returns None
  SummaryWriter = record_writer = None


def _clean(v):
  if isinstance(v, (np.ndarray, np.generic, jax.Array)):
    v = np.asarray(v).item() if np.asarray(v).size == 1 else np.asarray(v).tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return None  # JSON has no NaN/inf; null marks it
  return v


read_metrics = paths.read_jsonl  # the name train code and tests use


class _EventsFile:
  """tensorboardX record-writer target on gs://: buffers records, appends them per flush."""

  def __init__(self, path):
    self.path, self._buf = path, bytearray()

  def write(self, data):
    self._buf += data

  def flush(self):
    if self._buf:
      data, self._buf = bytes(self._buf), bytearray()
      paths.append_bytes(self.path, data)

  def close(self):
    self.flush()


class _EventsFactory:
  def open(self, path):
    return _EventsFile(path)

  def directory_check(self, path):
    pass  # object stores have no directories


def summary_writer(logdir):
  """A tensorboardX SummaryWriter for `logdir`, or None without tensorboardX. For gs:// the
  event files go through refine_jax.paths (one compose per flush) rather than tensorboardX's own
  GCS writer, which re-uploads the whole file at every flush through a second client."""
  if SummaryWriter is None:
    logging.warning("tensorboardX not installed; TensorBoard events are skipped")
    return None
  if paths.is_remote(logdir):
    record_writer.register_writer_factory(paths.scheme(logdir), _EventsFactory())
  else:
    paths.makedirs(logdir)
  return SummaryWriter(logdir=paths.norm(logdir))


class MetricsWriter:
  """Writes on process 0 only; `resume_step` drops lines with step > resume_step."""

  def __init__(self, workdir, *, resume_step=0, tensorboard=True, flush_secs=30.0):
    self.enabled = jax.process_index() == 0
    self.path = paths.join(workdir, "metrics.jsonl")
    self._remote = paths.is_remote(self.path)
    self._tb, self._file, self._pending = None, None, []
    self._flush_secs, self._last_flush = float(flush_secs), time.monotonic()
    if not self.enabled:
      return
    rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
    paths.write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
    if not self._remote:
      self._file = open(self.path, "a")
    if tensorboard:
      self._tb = summary_writer(workdir)

  def write(self, step, metrics):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _clean(v) for k, v in metrics.items()})
    if self._file is not None:
      self._file.write(json.dumps(row) + "\n")
      self._file.flush()
    else:
      self._pending.append(json.dumps(row) + "\n")
      if time.monotonic() - self._last_flush >= self._flush_secs:
        self._flush_rows()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))

  def _flush_rows(self):
    if self._pending:
      text, self._pending = "".join(self._pending), []
      paths.append_text(self.path, text)
    self._last_flush = time.monotonic()

  def text(self, step, tag, text):
    if self.enabled and self._tb is not None:
      self._tb.add_text(tag, text, int(step))

  def flush(self):
    """Rows (and events) written so far are durable once this returns."""
    if not self.enabled:
      return
    self._flush_rows()
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if not self.enabled:
      return
    self._flush_rows()
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
