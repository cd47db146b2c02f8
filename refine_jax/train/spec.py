"""StepSpec: the one step protocol. Every stage's step_spec(config) returns one; the stage
registry (stages.py) imports the stage modules, so this lives apart from it."""

from typing import Any, Callable, NamedTuple

import numpy as np


class StepSpec(NamedTuple):
  """A stage's train step, as run_training runs it and the ahead-of-time scale check compiles it.

  make_step(graphdef, tx, microbatches) -> step(params, opt_state, rest, batch, rng) ->
  (params, opt_state, metrics): the whole step (its updates, each accumulating its gradient
  over `microbatches`, update.accumulate); the loop jits it with explicit shardings."""
  make_step: Callable
  updates_per_step: int           # optimiser updates one step makes (lr schedule follows steps;
                                  # a StepSpec with its own tx has accounted for them in it)
  batch: dict                     # global batch: name -> (shape, numpy dtype)
  tx: Any = None                  # optimiser; None: optim.make_optimizer(config.train, ...)


def lm_batch(batch_size, seq_len, *extra_masks, segments=True):
  """The global batch spec of the LM data pipeline (+ float32 [B, T] masks, e.g. prompt_mask);
  segments=False: without segment_ids (data.reset_at_documents=False)."""
  bt = (int(batch_size), int(seq_len))
  spec = {"inputs": (bt, np.int32), "targets": (bt, np.int32), "loss_mask": (bt, np.float32)}
  if segments:
    spec["segment_ids"] = (bt, np.int32)
  spec.update({m: (bt, np.float32) for m in extra_masks})
  return spec
