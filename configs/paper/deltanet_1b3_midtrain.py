"""DeltaNet-1.3B x midtrain, paper scale: ReFINE mid-training on 16K-token long text (c=8
positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch).

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_midtrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/deltanet_1b3_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_midtrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params):
  peak HBM 34.3 / 95 GiB per chip (36%), fits; compile 230 s on a 2-core CPU host
  (measured before the float32 LM head, float32 short-conv sums and packed-document resets:
  the same step in the official preset now peaks at 39.3 GiB, see its docstring);
  6,684 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 36.4 s at 40% of bf16 peak (14.6 s at 100%), 57,609 tokens/s at 40%.
  vs the NTP step of the same model and batch: FLOPs x1.27, peak memory x2.02 (NTP: 17.0 GiB,
  compile 46 s).
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "midtrain")
