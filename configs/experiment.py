"""SFT-mid vs ReFINE-mid on the synthetic recall stream: 3 seeds x 3 arms from one gated base.

  python -m refine_jax.experiments --config=configs/experiment.py [--workdir=runs/experiment]

(measured result: filled in below once measured)
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
  c.title = "Recall: SFT-mid vs ReFINE-mid (cosine, binary)"
  # Start point: a run dir / checkpoint (no gate), or "" = pretrain one (gated) in <workdir>.
  c.checkpoint = ""
  c.pretrain_config = "configs/recall.py"
  # train.steps here is the gate's ceiling: the base stops at the first in-band check.
  c.pretrain_overrides = "stage=pretrain train.steps=1500 train.eval_every=100"
  # Headroom gate: held-out value-token accuracy of the base (data.recall.eval_seed rows, the
  # development set) must land in [lo, hi] percent, checked every check_every steps.
  c.gate = ml_collections.ConfigDict()
  c.gate.enabled = True
  c.gate.metric = "recall_tf"
  c.gate.lo = 20.0
  c.gate.hi = 70.0
  c.gate.check_every = 25
  c.gate.num_samples = 64
  c.seeds = "0,1,2"
  c.steps = 100                   # optimiser steps of every stage of every arm (0 = config's)
  c.overrides = ""                # applied to every stage of every arm, e.g. "train.lr=3e-4"
  c.arms = ml_collections.ConfigDict()
  # NTP on the same rows with ReFINE's update count (train.ntp_epochs x ntp_minibatches).
  c.arms.sft_mid = "configs/recall.py stage=pretrain train.ntp_epochs=2"
  c.arms.refine_cos = "configs/recall.py refine.reward=cosine"
  c.arms.refine_bin = "configs/recall.py refine.reward=binary"
  c.arm_order = "sft_mid,refine_cos,refine_bin"  # arms to run, in table row order
  c.reference = "sft_mid"         # paired differences: arm - reference, per seed
  c.allow_unmatched = False       # arms must share batch, steps and optimiser updates
  c.selection_samples = 64        # held-out rows for the selection-on-values diagnostic; 0 = off
  c.compilation_cache = True      # persistent XLA cache in <workdir>/.jax_cache (seeds reuse it)
  c.eval_base = True              # also evaluate the starting checkpoint (row "base")
  c.eval = runner.default_eval_config()
  c.eval.tasks = "recall"
  c.eval.context_lengths = "128,256,512"  # the training length, 2x, 4x
  c.eval.num_samples = 64
  c.eval.batch_size = 16
  c.eval.base_seed = 0            # reported rows; the gate uses data.recall.eval_seed (1)
  c.eval.progress = False
  return c
