"""LaCT-760M x posttrain, paper scale: nested post-training: ReFINE (hybrid reward) on each
16K-token prompt, then SFT on its answer, two updates per batch.

  python -m refine_jax.main --config=configs/paper/lact_760m_posttrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/lact_760m_posttrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/lact_760m_posttrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x2x2, 0.80B params; inner and outer updates with separate AdamW states):
  peak HBM 60.3 / 95 GiB per chip (63%), fits; compile 145 s on a 2-core CPU host;
  11,539 TFLOP per chip per step (matmuls; 9,313 with every lax.cond's cheapest branch),
  2,097,152 tokens per step; step 62.8 s at 40% of bf16 peak (25.1 s at 100%), 33,368 tokens/s
  at 40%. (With one shared AdamW state it was 58.9 GiB: the inner state adds 1.4 GiB per chip.)
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("lact_760m", "posttrain")
