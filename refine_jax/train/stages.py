"""Stage registry: `config.stage` -> its module, whose run(config, workdir) trains, step_spec(config)
says what its jitted step is (spec.StepSpec) and, where it has one, validate(config) checks its
config section."""

from refine_jax.train import midtrain, posttrain, pretrain, ttt
from refine_jax.train.spec import StepSpec

STAGES = {"pretrain": pretrain, "midtrain": midtrain, "posttrain": posttrain, "ttt": ttt}


def stage_module(name):
  """The module of stage `name` (its run, step_spec and, where it has one, validate)."""
  if name not in STAGES:
    raise ValueError(f"stage={name!r} is unknown; use one of {sorted(STAGES)} (set `stage` in "
                     "the config file or pass --config.stage=NAME).")
  return STAGES[name]


def get_stage(name):
  """The `run(config, workdir)` callable of stage `name`."""
  return stage_module(name).run


def step_spec(config) -> StepSpec:
  """The StepSpec of `config.stage` (each stage module's step_spec(config))."""
  return stage_module(config.stage).step_spec(config)
