"""DeltaNet-1.3B x midtrain at 64K tokens: the paper's ReFINE mid-training (c=8 positions, k=5,
cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch, 128 sequences per step) on
sequences 4x the paper's 16K, one sequence per chip per microbatch on a v5p-8.

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_midtrain_64k.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/deltanet_1b3_midtrain_64k
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_midtrain_64k.py

refine.capture=strided: rollout collection keeps every 8th chunk-boundary state and each
layer's input (bf16) and recomputes the 512-token window before a selected position; the PPO
updates feed their rollouts layer by layer from each layer's own cache.

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params, 2026-12-06):
  peak HBM 49.2 / 95 GiB per chip (52%), fits; compile 249 s on a 2-core CPU host shared with
  other compiles and tests;
  26,766 TFLOP per chip per step (matmuls), 8,388,608 tokens per step;
  step 145.8 s at 40% of bf16 peak (58.3 s at 100%), 57,541 tokens/s at 40%.
  vs the NTP step of the same model and batch (48.1 GiB, 21,058 TFLOP): FLOPs x1.271, peak
  memory x1.024. Before: refine.capture=selected 52.6 GiB (x1.09) at FLOPs x1.53; =all
  77.7 GiB (x1.62) at FLOPs x1.27.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "midtrain", seq_len=65536, capture="strided")
