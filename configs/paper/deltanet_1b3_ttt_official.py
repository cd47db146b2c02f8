"""DeltaNet-1.3B x ttt, paper scale, with the official ReFINE code's optimiser details:
AdamW b2 = 0.999, weight decay 0.01 on every parameter, no lr warm-up (configs/paper/common.py
official_optimizer says why our default presets differ). Everything else, and so the memory,
FLOPs and step time measured for configs/paper/deltanet_1b3_ttt.py, is the same.

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_ttt_official.py \
      --config.init_checkpoint=hf://fla-hub/delta_net-1.3B-100B --workdir=runs/dn13_ttt_official
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_ttt_official.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params; one 16K-token prompt per chip per adaptation step):
  peak HBM 31.4 / 95 GiB per chip (33%), fits; compile 100 s on a 2-core CPU host;
  165 TFLOP per chip per step (matmuls), 65,536 tokens per step; step 0.90 s at 40% of bf16
  peak (0.36 s at 100%). vs the NTP step: FLOPs x1.003, peak memory x2.18.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "ttt", official=True)
