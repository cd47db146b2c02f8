"""Stage registry: `config.stage` -> "module:function" with signature run(config, workdir).

Entries are imported lazily so a stage whose module is missing or broken only fails when chosen.
"""

import importlib
from typing import Any, Callable, NamedTuple

STAGES = {
    "pretrain": "refine_jax.train.pretrain:run",
    "midtrain": "refine_jax.train.midtrain:run",
    "posttrain": "refine_jax.train.posttrain:run",
    "ttt": "refine_jax.train.ttt:run",
}


def stage_module(name):
  """The module of stage `name` (its run, step_spec and, where it has one, validate)."""
  get_stage(name)  # one clear error for an unknown or broken stage
  return importlib.import_module(STAGES[name].split(":")[0])


def get_stage(name):
  """The `run(config, workdir)` callable of stage `name`."""
  if name not in STAGES:
    raise ValueError(f"stage={name!r} is unknown; use one of {sorted(STAGES)} (set `stage` in "
                     "the config file or pass --config.stage=NAME).")
  module_name, fn_name = STAGES[name].split(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise ValueError(f"stage {name!r} is registered as {STAGES[name]} but module {module_name} "
                       "does not exist (not implemented yet?).") from e
    raise
  fn = getattr(module, fn_name, None)
  if not callable(fn):
    raise ValueError(f"stage {name!r}: {module_name} has no callable {fn_name}(config, workdir).")
  return fn


class StepSpec(NamedTuple):
  """What a stage's jitted train step is made of (loop.build_step + loop.jit_step), so the
  ahead-of-time scale check compiles exactly the step the stage runs."""
  loss_fn: Callable
  step_builder: Callable | None   # None: loop.make_train_step(loss_fn, microbatches)
  updates_per_step: int           # optimiser updates one step makes (lr schedule follows steps;
                                  # a StepSpec with its own tx has accounted for them in it)
  batch: dict                     # global batch: name -> (shape, numpy dtype)
  tx: Any = None                  # optimiser; None: optim.make_optimizer(config.train, ...)


def lm_batch(batch_size, seq_len, *extra_masks):
  """The global batch spec of the LM data pipeline (+ float32 [B, T] masks, e.g. prompt_mask)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  bt = (int(batch_size), int(seq_len))
  spec = {"inputs": (bt, np.int32), "targets": (bt, np.int32), "loss_mask": (bt, np.float32),
          "segment_ids": (bt, np.int32)}
  spec.update({m: (bt, np.float32) for m in extra_masks})
  return spec


def step_spec(config) -> StepSpec:
  """The StepSpec of `config.stage` (each stage module's step_spec(config))."""
  return stage_module(config.stage).step_spec(config)
