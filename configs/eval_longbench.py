"""QA eval from a local jsonl (RULER QA / LongBench layout: context, input, answers).

  python -m refine_jax.eval --config=configs/eval_longbench.py --config.checkpoint=RUN \
      --config.eval.qa_path=/data/longbench/hotpotqa.jsonl

Scores: qa (substring match of any reference) and qa_f1 (LongBench token F1), with contexts
cut in the middle to each context length.
"""

import os
import sys

try:
  from configs import eval_ruler
except ImportError:  # loaded by path from outside the repo root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import eval_ruler


def get_config():
  c = eval_ruler.get_config()
  c.eval.tasks = "qa,qa_f1"
  c.eval.context_lengths = "1024,2048,4096"
  c.eval.num_samples = 50
  c.eval.max_new_tokens = 32
  return c
