"""RULER QA (SQuAD and HotpotQA) as the paper evaluates it: the ReFINE release's test files
(data/ruler/ruler_{squadqa,hotpotqa}_<model>_{4096,8192,16384}_200_test.parquet; prompts
ready to feed), each row generated greedily with its own max_answer_length and scored as
RULER does (case-insensitive substring match of any answer in the first line).

  python -m refine_jax.eval --config=configs/eval_ruler_qa.py --config.checkpoint=RUN \
      --config.eval.qa_path='ReFINE/data/ruler/ruler_*_delta_net_*_200_test.parquet'

(`lact` in place of `delta_net` for LaCT checkpoints: the release builds each file with that
model family's tokenizer.) One results row per task (ruler_squadqa, ruler_hotpotqa), one column
per context length read from each row's max_seq_length; 200 rows per cell. The `_1600_train`
files are post-training data (configs/posttrain.py, posttrain.data_path).
"""

from refine_jax import config
eval_ruler = config.config_file(__file__, "eval_ruler.py")


def get_config():
  c = eval_ruler.get_config()
  c.eval.tasks = "qa"               # each row scored by its own task (ruler_squadqa / _hotpotqa)
  c.eval.qa_path = ""               # required: the RULER QA test parquet files (globs allowed)
  c.eval.context_lengths = "auto"   # each row at its own max_seq_length
  c.eval.num_samples = 0            # every row
  c.eval.max_new_tokens = 0         # each row's max_answer_length
  c.eval.batch_size = 4
  return c
