"""Stage registry: `config.stage` -> "module:function" with signature run(config, workdir).

Entries are imported lazily so a stage whose module is missing or broken only fails when chosen.
"""

import importlib

STAGES = {
    "pretrain": "refine_jax.train.pretrain:run",
    "midtrain": "refine_jax.train.midtrain:run",
    "posttrain": "refine_jax.train.posttrain:run",
    "ttt": "refine_jax.train.ttt:run",
}


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
