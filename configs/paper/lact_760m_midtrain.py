"""LaCT-760M x midtrain, paper scale: ReFINE mid-training on 16K-token long text (c=8 positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch).

  python -m refine_jax.main --config=configs/paper/lact_760m_midtrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/lact_760m_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/lact_760m_midtrain.py

MEASURED
"""

import os
import sys

try:
  from configs import midtrain
  from configs.paper import common
except ImportError:  # loaded by path from outside the repo root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__)))))
  from configs import midtrain
  from configs.paper import common


def get_config():
  # LaCT's rollout caches hold a whole partial chunk (2048 tokens) per row and layer: with
  # one sequence per chip they need 109 GiB; heads split over 2 chips (mesh.tensor=2) halve it.
  c = midtrain.get_config()
  c.refine.ppo_minibatches = 4   # several minibatch updates per batch, as the official code
  c.refine.log_rollouts_every = 100
  c.midtrain.warmup_steps = 0    # start from real weights: set init_checkpoint
  c.midtrain.summary_eval = False
  c.train.steps = 1000
  common.paper_optimizer(c)
  common.scale(c, topology="v5p-8", chips=4, microbatches=16, tensor=2)
  common.lact_760m(c)
  common.user_data(c)
  return c
