"""NTP vs ReFINE mid-training from one NTP checkpoint, 3 seeds, equal steps (tiny CPU default).

  python -m refine_jax.experiments --config=configs/experiment.py \
      [--config.checkpoint=runs/pretrain-deltanet] [--workdir=runs/experiment]

Arms (see refine_jax/experiments.py for the spec syntax): sft_mid runs the midtrain config's
data and optimiser with the NTP-only loop; refine_mid runs ReFINE (GRPO next-sequence reward +
NTP). Post-training and TTT arms chain stage configs (a final configs/ttt.py stage trains
nothing: that arm answers with test-time training); they are declared below and run when
named in arm_order, e.g.
  --config.arm_order=sft_mid,refine_mid,sft_mid_post,refine_mid_post,refine_full
Scale every knob by override: --config.steps, --config.overrides="model.hidden=1024 ...",
--config.eval.context_lengths=4096,8192,16384, --config.pretrain_overrides="train.steps=5000".
"""

import os
import sys

try:
  from refine_jax.eval import runner
except ImportError:  # loaded by path from outside the repo root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from refine_jax.eval import runner

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.title = "NTP (SFT-mid) vs ReFINE-mid"
  # NTP-pretrained start point: a run dir or Orbax checkpoint; "" = pretrain one first.
  c.checkpoint = ""
  c.pretrain_config = "configs/pretrain.py"
  c.pretrain_overrides = ""       # e.g. "train.steps=1000 data.seq_len=256"
  c.seeds = "0,1,2"
  c.steps = 60                    # optimiser steps of every stage of every arm (0 = config's)
  c.overrides = ""                # applied to every stage of every arm, e.g. "train.lr=3e-4"
  c.arms = ml_collections.ConfigDict()
  c.arms.sft_mid = "configs/midtrain.py stage=pretrain"
  c.arms.refine_mid = "configs/midtrain.py"
  # Nested post-training (ReFINE on the prompt + SFT on the answer) / SFT-only post-training.
  c.arms.sft_mid_post = ("configs/midtrain.py stage=pretrain | "
                         "configs/posttrain.py posttrain.mode=sft")
  c.arms.refine_mid_post = "configs/midtrain.py | configs/posttrain.py"
  # ReFINE mid + post + ReFINE-TTT (the paper's full pipeline).
  c.arms.refine_full = "configs/midtrain.py | configs/posttrain.py | configs/ttt.py"
  c.arm_order = "sft_mid,refine_mid"  # arms to run, in table row order ("" = all, alphabetical)
  c.compilation_cache = True      # persistent XLA cache in <workdir>/.jax_cache (seeds reuse it)
  c.eval_base = True              # also evaluate the starting checkpoint (row "base")
  c.eval = runner.default_eval_config()
  c.eval.tasks = "niah_single,variable_tracking,perplexity"
  c.eval.context_lengths = "512,1024"
  c.eval.num_samples = 8
  c.eval.progress = False
  c.eval.teacher_forced = True    # <task>_tf answer-token accuracy: informative at tiny scale
  return c
