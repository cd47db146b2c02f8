"""Gated DeltaNet-7B x midtrain, paper recipe at 7B: ReFINE mid-training on 16K-token long text
(c=8 positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch, 128
sequences per step) on a v5p-64 slice (32 chips), one sequence per chip per microbatch.

  python -m refine_jax.main --config=configs/paper/gated_deltanet_7b_midtrain.py \\
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/gated_deltanet_7b_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/gated_deltanet_7b_midtrain.py

MEASURED
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("gated_deltanet_7b", "midtrain", topology="v5p-64", chips=32,
                       capture="selected")
