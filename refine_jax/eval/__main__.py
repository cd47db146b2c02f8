"""python -m refine_jax.eval --config=configs/eval_ruler.py --config.checkpoint=RUN_OR_CKPT

Loads the model (refine_jax.load_pretrained), runs the tasks x context lengths of `eval.*`,
prints the markdown table and writes results.json, results.md, *.png and predictions.jsonl to
<run dir>/eval/<config name>/ (e.g. eval/eval_ruler/; ./eval_<checkpoint>/<config name>/ for a
checkpoint outside a run dir), or to `out_dir`. Each eval config keeps its own directory, so
the training-time eval in <run dir>/eval/ and other configs' results are never touched; a
directory that already holds results is refused unless overwrite=True.
"""

import os
import sys

from absl import app, flags

from ml_collections import config_flags

from refine_jax import cli, paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/eval_ruler.py",
                                          lock_config=True)


def default_out_dir(checkpoint: str, name: str) -> str:
  """<run dir>/eval/<name> when the checkpoint sits in a run dir, else ./eval_<basename>/<name>."""
  # pylint: disable-next=g-import-not-at-top  (orbax: ~2 s, kept off --help)
  from refine_jax.checkpoint.params import find_run_config
  cfg = find_run_config(checkpoint)
  if cfg is not None and paths.isdir(os.path.join(os.path.dirname(cfg), "checkpoints")):
    return os.path.join(os.path.dirname(cfg), "eval", name)
  return os.path.join("eval_" + os.path.basename(os.path.normpath(checkpoint)), name)


def evaluate_checkpoint(cfg, name: str = "eval") -> dict:
  """Library form of the command: cfg has checkpoint, out_dir, overwrite and eval.*; `name`
  (the config file's name on the command line) picks the default output directory."""
  # Heavy (jax, grain, orbax: ~2 s), so imported here and not on --help.
  # pylint: disable=g-import-not-at-top
  from refine_jax.data.tokenizers import get_tokenizer
  from refine_jax.eval import report, runner
  from refine_jax.pretrained import load_pretrained
  # pylint: enable=g-import-not-at-top
  if not cfg.checkpoint:
    raise ValueError("checkpoint is empty: pass --config.checkpoint=RUN_DIR (or an Orbax "
                     "checkpoint, bundle or HF dir).")
  out_dir = cfg.out_dir or default_out_dir(cfg.checkpoint, name)
  if not cfg.overwrite and paths.exists(paths.join(out_dir, report.RESULTS_JSON)):
    raise ValueError(f"{paths.norm(out_dir)} already holds an eval's results; pass "
                     "--config.overwrite=True to replace them or --config.out_dir=DIR to keep "
                     "both.")
  model, run_config = load_pretrained(cfg.checkpoint)
  tokenizer = get_tokenizer(run_config.data)
  results = runner.run_eval(model, tokenizer, cfg.eval, out_dir, config=run_config,
                            title=os.path.basename(os.path.normpath(cfg.checkpoint)))
  print(report.markdown_table(results))
  print(f"wrote {paths.norm(out_dir)}")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.field=value")
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config=configs/eval_ruler.py is required")
  name = os.path.splitext(os.path.basename(config_flags.get_config_filename(
      flags.FLAGS["config"])))[0]
  try:
    evaluate_checkpoint(cfg, name)
  except (ValueError, FileNotFoundError) as e:
    print(f"refine_jax.eval: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli.run(main)
