"""RULER-style eval of a saved model: NIAH (4 variants), variable tracking and MQAR
(multi-query associative recall, scored on one forward pass) at several context lengths, plus
held-out perplexity.

  python -m refine_jax.eval --config=configs/eval_ruler.py --config.checkpoint=RUN_OR_CKPT \
      [--config.eval.context_lengths=1024,2048,4096] [--config.eval.num_samples=50]

checkpoint: anything refine_jax.load_pretrained takes (run dir, Orbax checkpoint, bundle,
HF/FLA dir). Results go to <run dir>/eval/eval_ruler/ (results.json, results.md, PNGs,
predictions.jsonl) unless out_dir is set; the training-time eval in <run dir>/eval/ stays. With the byte tokenizer the NIAH prompts need >= 768 tokens (multiquery); shorter cells
are skipped with a warning.
"""

from refine_jax import config as base

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # run dir / Orbax checkpoint / bundle / HF dir (required)
  c.out_dir = ""     # default: <run dir>/eval/<config name>, or ./eval_<ckpt>/<config name>
  c.overwrite = False  # replace the results already in out_dir (refused otherwise)
  c.eval = base.default_eval_config()
  c.eval.tasks = ("niah_single,niah_multikey,niah_multivalue,niah_multiquery,"
                  "variable_tracking,mqar,perplexity")
  c.eval.context_lengths = "1024,2048"
  c.eval.num_samples = 8
  c.eval.teacher_forced = False
  return c
