"""Gated DeltaNet-1.3B x midtrain at 64K tokens: the paper's ReFINE mid-training (c=8
positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch, 128 sequences
per step) on sequences 4x the paper's 16K, one sequence per chip per microbatch on a v5p-8.

  python -m refine_jax.main --config=configs/paper/gated_deltanet_1b3_midtrain_64k.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/gated_deltanet_1b3_midtrain_64k
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/gated_deltanet_1b3_midtrain_64k.py

refine.capture=strided: rollout collection keeps every 8th chunk-boundary state and each
layer's input (bf16) and recomputes the 512-token window before a selected position; the PPO
updates feed their rollouts layer by layer from each layer's own cache. (capture=all would
keep 64K/64 = 1024 chunk states of 3 MiB per layer.)

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.39B params, 2026-12-06):
  peak HBM 49.8 / 95 GiB per chip (52%), fits; compile 233 s on a 2-core CPU host shared with
  other compiles and tests;
  28,056 TFLOP per chip per step (matmuls), 8,388,608 tokens per step;
  step 152.8 s at 40% of bf16 peak (61.1 s at 100%), 54,895 tokens/s at 40%.
  vs the NTP step of the same model and batch (45.2 GiB, 22,133 TFLOP): FLOPs x1.268, peak
  memory x1.102. Before: refine.capture=selected 70.8 GiB (x1.57) at FLOPs x1.53.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("gated_deltanet_1b3", "midtrain", seq_len=65536, capture="strided")
