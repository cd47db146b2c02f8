"""python -m refine_jax.experiments --config=configs/experiment.py [--workdir=DIR]"""

import os

from absl import flags
from ml_collections import config_flags

from refine_jax import cli
from refine_jax.experiments.run import run_experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/experiment.py",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "default runs/experiment")


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}; use --config.field=value")
  exp = _CONFIG.value
  if exp is None:
    raise SystemExit("--config=configs/experiment.py is required")
  run_experiment(exp, _WORKDIR.value or os.path.join("runs", "experiment"))


if __name__ == "__main__":
  cli.run(main)
