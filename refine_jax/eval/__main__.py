"""python -m refine_jax.eval --config=configs/eval_ruler.py --config.checkpoint=RUN_OR_CKPT

Loads the model (refine_jax.load_pretrained), runs the tasks x context lengths of `eval.*`,
prints the markdown table and writes <run dir>/eval/{results.json, results.md, *.png,
predictions.jsonl} (or `out_dir`).
"""

import os
import sys

from absl import app

from ml_collections import config_flags

from refine_jax import cli, paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/eval_ruler.py",
                                          lock_config=True)


def default_out_dir(checkpoint: str) -> str:
  """<run dir>/eval when the checkpoint sits in a run dir, else ./eval_<basename>."""
  # pylint: disable-next=g-import-not-at-top  (orbax: ~2 s, kept off --help)
  from refine_jax.checkpoint.params import find_run_config
  cfg = find_run_config(checkpoint)
  if cfg is not None and paths.isdir(os.path.join(os.path.dirname(cfg), "checkpoints")):
    return os.path.join(os.path.dirname(cfg), "eval")
  return os.path.join("eval_" + os.path.basename(os.path.normpath(checkpoint)))


def evaluate_checkpoint(cfg) -> dict:
  """Library form of the command: cfg has checkpoint, out_dir and eval.*."""
  # Heavy (jax, grain, orbax: ~2 s), so imported here and not on --help.
  # pylint: disable=g-import-not-at-top
  from refine_jax.data.tokenizers import get_tokenizer
  from refine_jax.eval import report, runner
  from refine_jax.pretrained import load_pretrained
  # pylint: enable=g-import-not-at-top
  if not cfg.checkpoint:
    raise ValueError("checkpoint is empty: pass --config.checkpoint=RUN_DIR (or an Orbax "
                     "checkpoint, bundle or HF dir).")
  model, run_config = load_pretrained(cfg.checkpoint)
  tokenizer = get_tokenizer(run_config.data)
  out_dir = cfg.out_dir or default_out_dir(cfg.checkpoint)
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
  try:
    evaluate_checkpoint(cfg)
  except (ValueError, FileNotFoundError) as e:
    print(f"refine_jax.eval: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli.run(main)
