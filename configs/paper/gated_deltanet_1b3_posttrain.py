"""Gated DeltaNet-1.3B x posttrain, paper scale: nested post-training: ReFINE (hybrid reward) on
each 16K-token prompt, then SFT on its answer, two updates per batch.

  python -m refine_jax.main --config=configs/paper/gated_deltanet_1b3_posttrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/gated_deltanet_1b3_posttrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/gated_deltanet_1b3_posttrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.39B params; inner and outer updates with separate AdamW states):
  peak HBM 49.5 / 95 GiB per chip (52%), fits; compile 115 s on a 2-core CPU host;
  11,087 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 60.4 s at 40% of bf16 peak (24.2 s at 100%), 34,728 tokens/s at 40%.
  (With one shared AdamW state it was 46.7 GiB: the inner state's mu + nu add 2.8 GiB per chip.)
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("gated_deltanet_1b3", "posttrain")
