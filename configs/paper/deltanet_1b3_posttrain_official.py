"""DeltaNet-1.3B x posttrain, paper scale, with the official ReFINE code's optimiser details:
AdamW b2 = 0.999, weight decay 0.01 on every parameter, no lr warm-up (configs/paper/common.py
official_optimizer says why our default presets differ). Everything else, and so the memory,
FLOPs and step time measured for configs/paper/deltanet_1b3_posttrain.py, is the same.

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_posttrain_official.py \
      --config.init_checkpoint=hf://fla-hub/delta_net-1.3B-100B --workdir=runs/dn13_posttrain_official
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_posttrain_official.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params; separate inner/outer AdamW states):
  peak HBM 38.2 / 95 GiB per chip (40%), fits; compile 1111 s on a loaded 2-core CPU host;
  10,547 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 57.5 s at 40% of bf16 peak (23.0 s at 100%), 36,506 tokens/s at 40%.
  vs the NTP step of the same model and batch: FLOPs x2.00, peak memory x2.25.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "posttrain", official=True)
