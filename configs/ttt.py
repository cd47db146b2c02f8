"""Test-time training: per test batch, a copy of the weights takes a few ReFINE steps on the
unlabeled prompts ("binary" reward, lambda_rl 0.4), answers greedily and is discarded.

  python -m refine_jax.main --config=configs/ttt.py [--workdir=runs/ttt-deltanet]

With no init_checkpoint it first runs a short NTP warm-up on the embedded corpus in
<workdir>/warmup (a tiny DeltaNet), so it works on a fresh machine. Give your weights with
--config.init_checkpoint=runs/posttrain-deltanet (or a bundle, an HF/FLA dir, a hub id
hf://owner/name: its model.* and tokenizer come with it).
Variants: --config.ttt.mode=sft (NTP-only TTT baseline), --config.ttt.carry_over=True (keep
adapting across batches), --config.ttt.steps=N. Writes eval/no_adaptation/ (same checkpoint,
no TTT), eval/results.json (with TTT) and eval/comparison.md. Your own test set:
--config.ttt.data_path=test.jsonl (prompt/answer or context/input/answers; parquet too).
Differs from the paper, for a laptop CPU: a tiny model, short prompts, ttt.lr 3e-4 (paper:
1e-6 at 1.3B; a tiny model needs more to move in 3 steps) and our AdamW details (b2 0.95, decay on
matrices only; the official ones in configs/paper/deltanet_1b3_ttt_official.py). The TTT step
(binary reward, lambda_rl 0.4, weights reset per batch) is the paper's.
"""

from refine_jax import config as base


def get_config():
  c = base.base_config()
  c.stage = "ttt"
  base.tiny_deltanet(c)
  c.data.seq_len = 512
  # 10% RULER-style NIAH / variable-tracking samples mixed into the corpus (opt-in, default
  # 0): the stage eval asks those questions, so the model must have seen their format.
  c.data.synthetic_weight = 0.1
  # train.* is used by the warm-up only.
  c.train.batch_size = 8
  c.train.weight_decay = 0.01
  c.train.eval_batches = 1
  c.checkpoint.every_steps = 100

  # refine.*: the TTT update (paper: binary reward, lambda_rl 0.4).
  c.refine.reward = "binary"
  c.refine.lambda_rl = 0.4
  c.refine.log_rollouts_every = 0

  # ttt.*: the defaults (3 updates per batch of 4 prompts, weights reset per batch).

  c.eval.tasks = "niah_single,variable_tracking"
  c.eval.context_lengths = "416,464"
  c.eval.num_samples = 8
  c.eval.num_needles = 2
  c.eval.teacher_forced = False
  c.eval.progress = False
  return c
