"""LaCT-760M x ttt, paper scale: test-time training: 3 ReFINE steps (binary reward, lambda_rl 0.4)
on each batch of 16K-token test prompts, then greedy answers.

  python -m refine_jax.main --config=configs/paper/lact_760m_ttt.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/lact_760m_ttt
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/lact_760m_ttt.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x2x2, 0.80B params):
  peak HBM 61.6 / 95 GiB per chip (65%), fits; compile 416 s on a 2-core CPU host;
  101 TFLOP per chip per step (matmuls), 32,768 tokens per step;
  step 0.5 s at 40% of bf16 peak (0.2 s at 100%), 59,779 tokens/s at 40%.
"""

import os
import sys

try:
  from configs import ttt
  from configs.paper import common
except ImportError:  # loaded by path from outside the repo root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__)))))
  from configs import ttt
  from configs.paper import common


def get_config():
  # LaCT's rollout caches hold a whole partial chunk (2048 tokens) per row and layer: with
  # one sequence per chip they need 109 GiB; heads split over 2 chips (mesh.tensor=2) halve it.
  # LaCT's rollout caches hold a whole partial chunk (2048 tokens) per row and layer: with
  # one sequence per chip they need 109 GiB; heads split over 2 chips (mesh.tensor=2) halve it.
  c = ttt.get_config()
  c.ttt.warmup_steps = 0         # adapt real weights: set init_checkpoint
  c.ttt.batch_size = 2           # one 16K prompt per 2-chip tensor-parallel group
  c.ttt.bucket = common.SEQ_LEN
  c.ttt.lr = 1e-6
  c.ttt.weight_decay = 0.01
  common.paper_optimizer(c)
  common.scale(c, topology="v5p-8", chips=4, batch=2, microbatches=1, tensor=2)
  common.lact_760m(c)
  common.user_data(c)
  return c
