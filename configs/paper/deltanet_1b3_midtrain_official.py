"""DeltaNet-1.3B x midtrain, paper scale, with the official ReFINE code's optimiser details:
AdamW b2 = 0.999, weight decay 0.01 on every parameter, no lr warm-up (configs/paper/common.py
official_optimizer says why our default presets differ). Everything else, and so the memory,
FLOPs and step time measured for configs/paper/deltanet_1b3_midtrain.py, is the same.

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_midtrain_official.py \
      --config.init_checkpoint=hf://fla-hub/delta_net-1.3B-100B --workdir=runs/dn13_midtrain_official
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_midtrain_official.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params):
  peak HBM 39.3 / 95 GiB per chip (41%), fits; compile 774 s on a loaded 2-core CPU host;
  6,684 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 36.4 s at 40% of bf16 peak (14.6 s at 100%), 57,609 tokens/s at 40%.
  The float32 LM head (model.logits_dtype, the default) costs 1.1 GiB per chip: 38.2 GiB with
  --config.model.logits_dtype=model, same tree (an earlier tree measured 34.3 GiB).
  vs the NTP step of the same model and batch (measured at 34.3 GiB): FLOPs x1.27, peak
  memory x2.02.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "midtrain", official=True)
