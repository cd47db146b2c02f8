"""Gated DeltaNet-1.3B x ttt, paper scale: test-time training: 3 ReFINE steps (binary reward,
lambda_rl 0.4) on each batch of 16K-token test prompts, then greedy answers.

  python -m refine_jax.main --config=configs/paper/gated_deltanet_1b3_ttt.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/gated_deltanet_1b3_ttt
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/gated_deltanet_1b3_ttt.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.39B params):
  peak HBM 43.0 / 95 GiB per chip (45%), fits; compile 118 s on a 2-core CPU host;
  173 TFLOP per chip per step (matmuls), 65,536 tokens per step;
  step 0.9 s at 40% of bf16 peak (0.4 s at 100%), 69,369 tokens/s at 40%.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("gated_deltanet_1b3", "ttt")
