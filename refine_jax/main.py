"""Entry point: python -m refine_jax.main --config=configs/<stage>.py [--config.a.b=v ...]
[--workdir=DIR]. Validates the config, then runs `config.stage` (see refine_jax.train.stages).
Rerunning the same command on the same workdir resumes from its latest checkpoint. DIR is a
local path or a gs://BUCKET/PATH URL (checkpoints, metrics, events and eval/ all go there)."""

import os
import sys

from absl import app, flags

from ml_collections import config_flags

from refine_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<stage>-<arch>).")


def default_workdir(config):
  return os.path.join("runs", f"{config.stage}-{config.model.arch}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides look like "
                         "--config.train.steps=100")
  if _CONFIG.value is None:
    raise app.UsageError("--config=configs/<stage>.py is required")
  # Must precede any other JAX call on multi-process launches. Imported here, as train below:
  # jax + train take ~3 s, which --help should not pay.
  # pylint: disable-next=g-import-not-at-top
  from refine_jax.parallel import maybe_initialize_distributed
  try:
    maybe_initialize_distributed(float(_CONFIG.value.mesh.dist_timeout_s))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  # pylint: disable-next=g-import-not-at-top
  from refine_jax.train import init_checkpoint, stages, validate

  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=configs/<stage>.py is required")
  try:
    # Starting weights bring their model.* and tokenizer (command-line overrides must agree).
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    config = init_checkpoint.resolve(config, overrides)
    validate.validate_config(config)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: invalid config: {e}", file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or default_workdir(config)
  try:
    validate.check_workdir(workdir)
  except (ValueError, OSError) as e:  # OSError: no bucket / credentials / network
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if not _WORKDIR.value:
    print(f"no --workdir given; using {os.path.abspath(workdir)}")
  stages.get_stage(config.stage)(config, workdir)  # cli.run turns a UserError into one line


if __name__ == "__main__":
  cli.run(main)
