"""DeltaNet-1.3B x midtrain, paper scale, with the official ReFINE code's optimiser details:
AdamW b2 = 0.999, weight decay 0.01 on every parameter, no lr warm-up (configs/paper/common.py
official_optimizer says why our default presets differ). Everything else, and so the memory,
FLOPs and step time measured for configs/paper/deltanet_1b3_midtrain.py, is the same.

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_midtrain_official.py \
      --config.init_checkpoint=hf://fla-hub/delta_net-1.3B-100B --workdir=runs/dn13_midtrain_official
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_midtrain_official.py

Its figures are deltanet_1b3_midtrain's, as benchmarks/scale_check.py measures it (same shapes
and refine.capture=strided): peak HBM 19.8 GiB per chip, FLOPs x1.287 and memory x1.152 of
the NTP step. The float32 LM head
(model.logits_dtype, the default) costs 1.1 GiB per chip over --config.model.logits_dtype=model
(measured on an earlier tree, at 39.3 vs 38.2 GiB).
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "midtrain", official=True, capture="strided")
