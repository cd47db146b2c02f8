"""Mid-training with ReFINE on the embedded corpus: a tiny DeltaNet, no downloads.

  python -m refine_jax.main --config=configs/midtrain.py [--workdir=runs/midtrain-deltanet]

On a fresh machine (no init_checkpoint) it runs a 200-step NTP warm-up in <workdir>/warmup,
then 60 ReFINE steps (c=8 positions per sequence, k=5-token rollouts, cosine reward, GRPO with
lambda_rl=0.2 + NTP) at seq_len 256, then the eval suite (refine_jax.eval) into <workdir>/eval.
Measured on an idle 2-core CPU: 1m44s wall; warm-up loss 5.59 (= ln 259) -> ~1.8, held-out
loss 1.68; after ReFINE held-out loss 1.57 (ppl 4.8), cosine reward of the rollouts ~0.37-0.41
(std ~0.2 within groups), ReFINE step 0.29 s; eval: teacher-forced answer accuracy NIAH 13.9,
variable tracking 9.7 (exact match is 0 at this size). rollouts.jsonl shows sampled continuations vs the truth;
midtrain_summary.json the before/after numbers.
Start from your own weights with --config.init_checkpoint=runs/pretrain-deltanet (a run dir, an
Orbax checkpoint, a bundle, an HF/FLA dir or a hub id hf://owner/name[@revision]; its model.*
and tokenizer come with it). Paper scale (1.3B, 16K tokens, batch 128, sized for a slice and
checked by the TPU compiler): configs/paper/deltanet_1b3_midtrain.py and its siblings.
Differs from the paper, for a laptop CPU: a 0.6M-parameter model (paper: 1.3B), seq_len 256
and batch 8 (16K, 128), lr 1e-3 (1e-6: a tiny model barely moves at that rate), a 5-step lr
warm-up and AdamW b2 0.95 with decay on matrices only (the official code: b2 0.999, decay on
all parameters, no warm-up: configs/paper/*_official.py), one update per batch (the paper
presets make 4 PPO minibatch updates). The ReFINE step itself (c=8, k=5, cosine reward,
lambda_rl 0.2, lambda_ntp 1, clip 0.2 / dual clip 3, GRPO per sequence for n=1) is the paper's.
"""

from refine_jax import config as base


def get_config():
  c = base.base_config()
  c.stage = "midtrain"
  base.tiny_deltanet(c)
  c.data.seq_len = 256
  # 10% RULER-style NIAH / variable-tracking samples mixed into the corpus (opt-in, default
  # 0): the stage eval asks those questions, so the model must have seen their format.
  c.data.synthetic_weight = 0.1
  c.train.batch_size = 8
  c.train.steps = 60           # ReFINE steps (after the warm-up)
  c.train.lr = 1e-3            # paper: 1e-6 at 1.3B; a tiny CPU model needs far more
  c.train.warmup_steps = 5
  c.train.schedule = "constant"
  c.train.weight_decay = 0.01
  c.train.eval_every = 30
  c.train.eval_batches = 2
  c.checkpoint.every_steps = 30

  # refine.*: the paper's mid-training defaults (refine_jax/config.py documents each field);
  # override e.g. --config.refine.reward=hybrid --config.refine.num_chunks=16.
  c.refine.log_rollouts_every = 20
  c.refine.log_grad_share = True  # grad_share in metrics.jsonl and the training curves
  # midtrain.* (200-step NTP warm-up from scratch, summary, eval) and eval.* (the light
  # end-of-stage suite) keep their defaults.
  return c
