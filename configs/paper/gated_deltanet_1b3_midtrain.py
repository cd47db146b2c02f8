"""Gated DeltaNet-1.3B x midtrain, paper scale: ReFINE mid-training on 16K-token long text (c=8
positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch).

  python -m refine_jax.main --config=configs/paper/gated_deltanet_1b3_midtrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/gated_deltanet_1b3_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/gated_deltanet_1b3_midtrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.39B params; 2026-12-06, PPO updates capturing only their positions):
  peak HBM 35.8 / 95 GiB per chip (38%), fits; compile 118 s on a 2-core CPU host;
  7,009 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 38.2 s at 40% of bf16 peak (15.3 s at 100%), 54,935 tokens/s at 40%.
  vs the NTP step of the same model and batch: FLOPs x1.27, peak memory x2.01 (NTP: 17.8 GiB,
  compile 43 s); before the PPO updates captured only their positions: 54.1 GiB, x3.18.
  The rest is rollout collection's full capture (GDN's states are 4x DeltaNet's: head_dim 256,
  value heads x2). --config.refine.capture=selected (a selection pass, then a capture of the
  positions only): 27.4 GiB (x1.54) at FLOPs x1.53 (8,462 TFLOP).
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("gated_deltanet_1b3", "midtrain")
