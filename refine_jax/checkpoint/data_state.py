"""Orbax item for a data iterator's state: one JSON file per process.

Grain iterators return their state as a dict (DatasetIterator) or JSON bytes (DataLoader). The
state is taken in the training thread at the checkpointed step and written here, so an async save
never reads an iterator that has moved on. Each process writes its own file: hosts read different
shards of the data.
"""

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


def _filename(directory):
  return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def snapshot(iterator):
  """A JSON-able copy of `iterator.get_state()` (dict or bytes)."""
  state = iterator.get_state()
  if isinstance(state, (bytes, bytearray)):
    return {"kind": "bytes", "value": bytes(state).decode()}
  return {"kind": "json", "value": json.loads(json.dumps(state))}


def apply(iterator, snap):
  """Inverse of `snapshot`: set the iterator back to the saved position."""
  value = snap["value"]
  iterator.set_state(value.encode() if snap["kind"] == "bytes" else value)


class DataStateHandler(ocp.CheckpointHandler):
  """Writes/reads the per-process JSON file."""

  def save(self, directory, args):
    directory.mkdir(parents=True, exist_ok=True)
    _filename(directory).write_text(json.dumps(args.state))

  def restore(self, directory, args=None):
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
