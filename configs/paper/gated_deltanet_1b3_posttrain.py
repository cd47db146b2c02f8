"""Gated DeltaNet-1.3B x posttrain, paper scale: nested post-training: ReFINE (hybrid reward) on
each 16K-token prompt, then SFT on its answer, two updates per batch.

  python -m refine_jax.main --config=configs/paper/gated_deltanet_1b3_posttrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/gated_deltanet_1b3_posttrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/gated_deltanet_1b3_posttrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.39B params):
  peak HBM 46.7 / 95 GiB per chip (49%), fits; compile 177 s on a 2-core CPU host;
  11,085 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 60.4 s at 40% of bf16 peak (24.1 s at 100%), 34,736 tokens/s at 40%.
  Measured while the inner and outer updates shared one AdamW state; separate states (now)
  add one more mu + nu, 8 B per parameter over the FSDP chips: +2.6 GiB per chip (DeltaNet-1.3B
  measured 34.7 -> 38.2 GiB).
"""

import os
import sys

try:
  from configs.paper import common
except ImportError:  # loaded by path from outside the repo root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__)))))
  from configs.paper import common


def get_config():
  return common.preset("gated_deltanet_1b3", "posttrain")
