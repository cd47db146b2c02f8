"""Orbax CheckpointManager wrapper: params + optimiser + data-iterator state, safe resume.

On disk, `<run>/checkpoints/<step>/` holds items `params` (nnx pure dict), `opt_state` (optax
state as nested dict by path), `data` (per-process iterator JSON) and `meta` (step, stage).
Orbax writes each step into a temporary directory and renames it when complete, so a kill -9
during a save leaves the previous steps untouched. A finalised step that fails to restore
(truncated/deleted files) is moved to `<run>/checkpoints.corrupt/` with a warning and the
previous step is used. On gs:// Orbax marks a finished step with a commit_success.txt object
instead of the rename; the directory is a URL there (refine_jax.paths), never made absolute.
"""

import dataclasses
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging
from etils import epath

from refine_jax import paths
from refine_jax.errors import UserError
from refine_jax.checkpoint import data_state, trees


@dataclasses.dataclass
class Restored:
  step: int
  params: Any
  opt_state: Any
  data: Any  # data_state snapshot or None
  meta: dict


class Checkpointer:
  """Saves every `every_steps` (decided by the caller) and keeps the last `keep` steps."""

  def __init__(self, directory, *, keep=3, async_save=True):
    self.directory = paths.as_path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step, params, opt_state, data=None, meta=None):
    """Starts a (possibly async) save of step `step`; `data` is a data_state.snapshot."""
    items = dict(
        params=ocp.args.StandardSave(trees.params_to_pure(params)),
        opt_state=ocp.args.StandardSave(trees.tree_to_nested(opt_state)),
        meta=ocp.args.JsonSave(dict(meta or {}, step=int(step))),
    )
    if data is not None:
      items["data"] = data_state.DataStateSave(data)
    self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

  def restore_latest(self, abstract_params, abstract_opt_state):
    """Newest step that restores cleanly (shardings from the abstract trees), or None."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    bad, first_error = [], None
    for step in steps:
      try:
        restored = self._restore(step, abstract_params, abstract_opt_state)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint step %d in %s failed to restore (%s: %s); trying the one "
                        "before.", step, self.directory, type(e).__name__, str(e)[:300])
        bad.append(step)
        first_error = first_error or e
        continue
      if bad:
        # An older step restored with the same target, so the newer ones are damaged files, not
        # a config mismatch: move them aside so the next saves of those step numbers can proceed.
        self._quarantine(bad)
        logging.warning("resumed from checkpoint step %d; damaged newer steps %s moved to %s",
                        step, bad, self._quarantine_dir())
      return restored
    if first_error is not None:
      # Every step failing with the same target is a config change (model or optimiser layout,
      # e.g. a run saved by an older version), not damage: nothing is moved aside.
      raise UserError(f"no checkpoint in {self.directory} could be restored (steps {steps}); "
                      f"the newest failed with: {' '.join(str(first_error).split())[:400]}. If "
                      "the model or optimiser config changed (or an older refine_jax wrote the "
                      "run), use a new --workdir, with init_checkpoint=<this run> to start from "
                      "its weights.") from first_error
    return None

  def params_shape_mismatch(self, abstract_params):
    """First difference between the newest step's stored params and `abstract_params`
    ("name: stored (259, 32), model (259, 64)"), "" if they match or nothing can be read (a
    damaged step is then left to restore_latest). Read from Orbax's metadata, before a restore
    whose failure would only say "shape not compatible" from deep inside Orbax."""
    steps = self.all_steps()
    if not steps:
      return ""
    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # Orbax warns about an optional metadata file
    try:
      meta = ocp.StandardCheckpointer().metadata(self.directory / str(steps[-1]) / "params")
      stored = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                jax.tree_util.tree_leaves_with_path(getattr(meta, "item_metadata", meta))}
    except Exception:  # pylint: disable=broad-except
      return ""
    finally:
      logging.set_verbosity(level)
    want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
            jax.tree_util.tree_leaves_with_path(trees.params_to_pure(abstract_params))}
    for name in sorted(set(stored) & set(want)):
      if stored[name] != want[name]:
        return f"{name}: stored {stored[name]}, model {want[name]}"
    # Names on both sides that the other lacks: another architecture. Names missing on the
    # stored side only: a damaged step, left to restore_latest's fallback.
    extra, missing = sorted(set(stored) - set(want)), sorted(set(want) - set(stored))
    if extra and missing:
      return f"stored {extra[0]} (not in the model), model {missing[0]} (not stored)"
    return ""

  def _restore(self, step, abstract_params, abstract_opt_state):
    item_names = set(self._item_names(step))
    args = dict(
        params=ocp.args.StandardRestore(trees.params_to_pure(abstract_params)),
        opt_state=ocp.args.StandardRestore(trees.tree_to_nested(abstract_opt_state)),
        meta=ocp.args.JsonRestore(),
    )
    if "data" in item_names:
      args["data"] = data_state.DataStateRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**args))
    return Restored(
        step=int(step),
        params=trees.params_from_pure(abstract_params, out["params"]),
        opt_state=trees.tree_from_nested(abstract_opt_state, out["opt_state"]),
        data=out["data"] if "data" in item_names else None,
        meta=dict(out["meta"]))

  def _item_names(self, step):
    path = self.directory / str(step)
    return [n for n in paths.listdir(path) if paths.isdir(path / n)]

  def _quarantine_dir(self):
    return epath.Path(os.fspath(self.directory) + ".corrupt")

  def _quarantine(self, steps):
    if jax.process_index() == 0:
      dest = self._quarantine_dir()
      for step in steps:
        src = self.directory / str(step)
        if paths.exists(src):
          paths.move_tree(src, dest / f"{step}-{int(time.time())}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("refine_jax_checkpoint_quarantine")
    self._manager.reload()

  def wait(self):
    """Blocks until the pending async save is on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
