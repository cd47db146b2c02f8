"""DeltaNet-1.3B x midtrain, paper scale: ReFINE mid-training on 16K-token long text (c=8
positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch).

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_midtrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/deltanet_1b3_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_midtrain.py

refine.capture=strided: rollout collection keeps every 8th chunk-boundary state and each
layer's input (bf16), and recomputes the features of the 512-token window before a selected
position; the PPO updates feed their stored rollouts layer by layer from each layer's own
cache (no cache of every layer is held under the gradient).

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params; 2026-12-06):
  peak HBM 19.8 / 95 GiB per chip (21%), fits; compile 263 s on a 2-core CPU host shared with
  other compiles and tests;
  6,774 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 36.9 s at 40% of bf16 peak (14.8 s at 100%), 56,837 tokens/s at 40%.
  vs the NTP step of the same model and batch (17.2 GiB, 5,265 TFLOP): FLOPs x1.287, peak
  memory x1.152. Before (refine.capture=all, PPO updates feeding from cache_at's caches):
  23.1 GiB, x1.343 at FLOPs x1.270; before this stop's first change 39.3 GiB (x2.02).
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "midtrain", capture="strided")
