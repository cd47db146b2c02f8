"""Orbax item for a data iterator's state: one JSON file for the run, or one per process.

Grain iterators return their state as a dict (DatasetIterator) or JSON bytes (DataLoader). The
state is taken in the training thread at the checkpointed step and written here, so an async save
never reads an iterator that has moved on. When every process reads the same (global) stream,
process 0 writes `global.json` and any process count restores it, so a run can move to another
topology and see the same batches. With per-process streams (data.host_split="documents") each
process writes `process_<i>-of-<n>.json`. (grain's own Orbax handler writes only the
per-process form, so a job could not resume its stream on another process count.)
"""

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


_GLOBAL = "global.json"


def _filename(directory):
  return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def snapshot(iterator, *, per_process=False):
  """A JSON-able copy of `iterator.get_state()` (dict or bytes). per_process: the iterator
  reads this process's own shard (else the same global stream runs on every process)."""
  state = iterator.get_state()
  if isinstance(state, (bytes, bytearray)):
    snap = {"kind": "bytes", "value": bytes(state).decode()}
  else:
    snap = {"kind": "json", "value": json.loads(json.dumps(state))}
  return dict(snap, per_process=bool(per_process))


def apply(iterator, snap):
  """Inverse of `snapshot`: set the iterator back to the saved position."""
  value = snap["value"]
  iterator.set_state(value.encode() if snap["kind"] == "bytes" else value)


class DataStateHandler(ocp.CheckpointHandler):
  """Writes/reads the per-process JSON file."""

  def save(self, directory, args):
    directory.mkdir(parents=True, exist_ok=True)
    if args.state.get("per_process", True):
      _filename(directory).write_text(json.dumps(args.state))
    elif jax.process_index() == 0:  # identical on every process: written once
      (directory / _GLOBAL).write_text(json.dumps(args.state))

  def restore(self, directory, args=None):
    path = directory / _GLOBAL
    if not path.exists():
      path = _filename(directory)
    if not path.exists():
      # E.g. the run was saved with another process count: params/optimiser still resume.
      logging.warning("no data-iterator state for this process at %s; the data stream restarts",
                      path)
      return None
    return json.loads(path.read_text())

  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass
