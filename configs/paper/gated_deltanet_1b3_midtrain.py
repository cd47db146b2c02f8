"""Gated DeltaNet-1.3B x midtrain, paper scale: ReFINE mid-training on 16K-token long text (c=8
positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch).

  python -m refine_jax.main --config=configs/paper/gated_deltanet_1b3_midtrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/gated_deltanet_1b3_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/gated_deltanet_1b3_midtrain.py

refine.capture=strided: rollout collection keeps every 8th chunk-boundary state and each
layer's input (bf16), and recomputes the features of the 512-token window before a selected
position; the PPO updates feed their stored rollouts layer by layer from each layer's own
cache (no cache of every layer is held under the gradient).

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.39B params; 2026-12-06):
  peak HBM 19.1 / 95 GiB per chip (20%), fits; compile 412 s on a 2-core CPU host shared with
  other compiles and tests (118 s alone for the previous version of this step);
  7,099 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 38.7 s at 40% of bf16 peak (15.5 s at 100%), 54,242 tokens/s at 40%.
  vs the NTP step of the same model and batch (17.8 GiB, 5,533 TFLOP): FLOPs x1.283, peak
  memory x1.075. Before: refine.capture=all 35.8 GiB (x2.01; GDN's states are 4x DeltaNet's),
  =selected 27.4 GiB (x1.54) at FLOPs x1.53; strided with the PPO updates still feeding from
  cache_at's caches 27.4 GiB, with those fed in one call instead of token by token 25.2 GiB.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("gated_deltanet_1b3", "midtrain", capture="strided")
