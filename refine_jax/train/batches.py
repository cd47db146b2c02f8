"""Where a stage's batches come from and how they land on the mesh: the train stream and the
held-out batches of the data pipeline (per data.host_split), and numpy batches made global
jax arrays sharded over (data, fsdp)."""

import math

import jax
import numpy as np

from refine_jax import parallel
from refine_jax.data import pipeline


def host_split(config) -> str:
  """How processes share the train stream (data.host_split): "global" = every process reads the
  whole stream and keeps the rows its devices hold, so a step's global batch is the same for
  any process count; "documents" = each process reads 1/P of the documents and packs its own
  rows (less host work on big pods; the stream then depends on the process count)."""
  split = str(config.data.host_split)
  if split not in ("global", "documents"):
    raise ValueError(f"data.host_split={split!r}: use 'global' (the same batches for any "
                     "process count) or 'documents' (each process reads its own documents).")
  return split


def default_train_iter(config):
  if host_split(config) == "global":
    return pipeline.make_train_iterator(config)
  return pipeline.make_train_iterator(config, shard_index=jax.process_index(),
                                      shard_count=jax.process_count())


def default_eval_batches(config, num_batches):
  """The held-out batches, whole (global) on every process: eval is small, and a score that
  does not depend on the process count is worth the duplicate reads."""
  return pipeline.make_eval_batches(config, num_batches)


def global_batch(batch, sharding, *, per_process=False):
  """Numpy batch -> global jax arrays sharded over (data, fsdp).

  batch holds the whole global batch (the same on every process; each process copies only the
  rows its devices hold), or with per_process=True this process's rows (data.host_split =
  "documents")."""
  arrays = {k: np.asarray(v) for k, v in batch.items() if np.asarray(v).ndim >= 1}
  dp = math.prod(sharding.mesh.shape[a] for a in parallel.BATCH_AXES)
  procs = jax.process_count() if per_process else 1
  for k, v in arrays.items():
    if (v.shape[0] * procs) % dp:
      raise ValueError(f"batch entry {k!r} has {v.shape[0] * procs} rows, not divisible over "
                       f"mesh.data*mesh.fsdp={dp}; make train.batch_size (and "
                       "data.eval_batch_size) multiples of it.")
  if per_process:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in arrays.items()}
