"""LaCT-760M x midtrain at 64K tokens: the paper's ReFINE mid-training (c=8 positions, k=5,
cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch, 128 sequences per step) on
sequences 4x the paper's 16K, one sequence per pair of chips (mesh.tensor=2) per microbatch
on a v5p-8.

  python -m refine_jax.main --config=configs/paper/lact_760m_midtrain_64k.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/lact_760m_midtrain_64k
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/lact_760m_midtrain_64k.py

refine.capture stays "all": LaCT layers capture their whole sliding window and fast-weight
states either way (only DeltaNet / Gated DeltaNet layers capture per position or strided).
The PPO updates feed their rollouts layer by layer from each layer's own cache.

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x2x2, 0.80B params, 2026-12-06):
  peak HBM 59.5 / 95 GiB per chip (63%), fits; compile 206 s on a 2-core CPU host shared with
  other compiles and tests;
  27,571 TFLOP per chip per step (matmuls; 1.261x NTP with every lax.cond's cheapest branch),
  8,388,608 tokens per step; step 150.2 s at 40% of bf16 peak (60.1 s at 100%), 55,861
  tokens/s at 40%.
  vs the NTP step of the same model and batch (55.2 GiB, 20,026 TFLOP): FLOPs x1.38, peak
  memory x1.08. Before the PPO updates fed rollouts layer by layer: 82.9 GiB (x1.50).
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("lact_760m", "midtrain", seq_len=65536)
