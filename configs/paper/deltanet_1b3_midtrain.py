"""DeltaNet-1.3B x midtrain, paper scale: ReFINE mid-training on 16K-token long text (c=8
positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch).

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_midtrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/deltanet_1b3_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_midtrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params; 2026-12-06, PPO updates capturing only their positions):
  peak HBM 23.1 / 95 GiB per chip (24%), fits; compile 82 s on a 2-core CPU host;
  6,684 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 36.4 s at 40% of bf16 peak (14.6 s at 100%), 57,609 tokens/s at 40%.
  vs the NTP step of the same model and batch: FLOPs x1.270, peak memory x1.343 (NTP: 17.2 GiB,
  compile 35 s). Before the PPO updates captured only their positions, the same step (the
  official preset's shapes) peaked at 39.3 GiB (x2.02 at the last NTP measurement).
  --config.refine.capture=selected (collect also captures only the positions, after a
  selection pass): 23.8 GiB (x1.385), FLOPs x1.535: no gain at 16K.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "midtrain")
