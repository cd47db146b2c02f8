"""Nested post-training (ReFINE on the prompt, then SFT on the answer): a tiny DeltaNet on
synthetic long-context QA, no downloads.

  python -m refine_jax.main --config=configs/posttrain.py [--workdir=runs/posttrain-deltanet]

Variants: --config.posttrain.mode=nested_refine (default) | nested_sft (inner NTP only) | sft
(plain SFT, no inner update). On a fresh machine (no init_checkpoint) it runs a short NTP
warm-up on the embedded corpus in <workdir>/warmup first. Default data: RULER-style NIAH and
variable-tracking questions of 384..478 prompt tokens from the "train" seed stream; held-out
accuracy (the "eval" stream) of the starting weights and of the result goes to
eval/no_adaptation/ and eval/results.json, side by side in eval/comparison.md.
Your own data: --config.posttrain.data_path=pairs.jsonl (fields prompt/answer, or
context/input/answers as RULER QA / LongBench; .parquet too), --config.posttrain.eval_path=...
Start from your weights with --config.init_checkpoint=runs/midtrain-deltanet.
Differs from the paper, for a laptop CPU: a tiny model, seq_len 512, batch 8, lr 1e-3 (paper:
1e-6 at 1.3B), a 5-step warm-up and our AdamW details (the official ones: b2 0.999, decay on
all parameters, no warm-up: configs/paper/deltanet_1b3_posttrain_official.py), synthetic QA
instead of the paper's data. The step (inner ReFINE on the prompt with the hybrid reward, then
SFT on the answer, separate optimiser states) follows the paper.
"""

from refine_jax import config as base


def get_config():
  c = base.base_config()
  c.stage = "posttrain"
  base.tiny_deltanet(c)
  c.data.seq_len = 512
  # 10% RULER-style NIAH / variable-tracking samples mixed into the corpus (opt-in, default
  # 0): the stage eval asks those questions, so the model must have seen their format.
  c.data.synthetic_weight = 0.1
  c.train.batch_size = 8
  c.train.steps = 40
  c.train.lr = 1e-3            # paper: 1e-6 at 1.3B; a tiny CPU model needs far more
  c.train.warmup_steps = 5
  c.train.schedule = "constant"
  c.train.weight_decay = 0.01
  c.train.eval_every = 20
  c.train.eval_batches = 1
  c.checkpoint.every_steps = 20

  # refine.*: the inner ReFINE update on the prompt ("hybrid" reward for post-training).
  c.refine.reward = "hybrid"
  c.refine.lambda_rl = 0.2
  c.refine.log_rollouts_every = 0

  # posttrain.*: the nested step on synthetic NIAH / variable-tracking prompts (defaults).

  # eval.*: held-out accuracy cells (refine_jax.eval.runner fields).
  c.eval.tasks = "niah_single,variable_tracking"
  c.eval.context_lengths = "416,464"
  c.eval.num_samples = 8
  c.eval.num_needles = 2
  c.eval.teacher_forced = False
  c.eval.progress = False
  return c
