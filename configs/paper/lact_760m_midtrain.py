"""LaCT-760M x midtrain, paper scale: ReFINE mid-training on 16K-token long text (c=8 positions,
k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch).

  python -m refine_jax.main --config=configs/paper/lact_760m_midtrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/lact_760m_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/lact_760m_midtrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x2x2, 0.80B params):
  peak HBM 57.8 / 95 GiB per chip (61%), fits; compile 301 s on a 2-core CPU host;
  8,194 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 44.6 s at 40% of bf16 peak (17.9 s at 100%), 46,992 tokens/s at 40%.
  vs the NTP step of the same model and batch: FLOPs x1.76, peak memory x2.76 (NTP: 20.9 GiB,
  compile 121 s).
  FLOPs count every lax.cond's costliest branch: LaCT's rollout steps carry a whole-chunk
  fast-weight update that runs only when a row's chunk fills; with the cheapest branches
  the ratio is x1.26 (5,878 TFLOP per chip per step).
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("lact_760m", "midtrain")
