"""LaCT-760M x ttt, paper scale: test-time training: 3 ReFINE steps (binary reward, lambda_rl 0.4)
on each batch of 16K-token test prompts, then greedy answers.

  python -m refine_jax.main --config=configs/paper/lact_760m_ttt.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/lact_760m_ttt
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/lact_760m_ttt.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x2x2, 0.80B params):
  peak HBM 61.6 / 95 GiB per chip (65%), fits; compile 416 s on a 2-core CPU host;
  101 TFLOP per chip per step (matmuls), 32,768 tokens per step;
  step 0.5 s at 40% of bf16 peak (0.2 s at 100%), 59,779 tokens/s at 40%.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("lact_760m", "ttt")
