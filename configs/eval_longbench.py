"""LongBench as the paper evaluates it: the ReFINE release's filtered files
(data/longbench/<dataset>_16384.parquet, 14 English datasets, prompts already in LongBench's
format), each row generated greedily with its own max_gen_tokens and scored by its dataset's
official metric.

  python -m refine_jax.eval --config=configs/eval_longbench.py --config.checkpoint=RUN \
      --config.eval.qa_path='ReFINE/data/longbench/*_16384.parquet'

One results row per dataset (narrativeqa ... repobench-p) at context length 16384 (read from
the file names); predictions.jsonl re-scores with
`python -m refine_jax.eval.score --data=... --predictions=RUN/eval/eval_longbench/predictions.jsonl`.
THUDM's own jsonl (context, input, answers, dataset, all_classes) reads too, with
--config.eval.context_lengths=16384 (the project's QA prompt around the context; LongBench's
per-dataset templates are not applied). The context length counts the model's tokens: a byte-
level model sees ~4x the tokens of the paper's tokenizer, so its long prompts are cut in the
middle. Expect near-zero scores from the tiny CPU checkpoints of this repo; the paper's 1.3B
models score in LongBench's usual range.
"""

from refine_jax import config
eval_ruler = config.config_file(__file__, "eval_ruler.py")


def get_config():
  c = eval_ruler.get_config()
  c.eval.tasks = "qa"               # each row scored by its own dataset's metric
  c.eval.qa_path = ""               # required: the LongBench parquet files (globs allowed)
  c.eval.context_lengths = "auto"   # each file at its own length (the _16384 in its name)
  c.eval.num_samples = 0            # every row
  c.eval.max_new_tokens = 0         # each row's max_gen_tokens
  c.eval.batch_size = 4
  return c
