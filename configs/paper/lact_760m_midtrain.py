"""LaCT-760M x midtrain, paper scale: ReFINE mid-training on 16K-token long text (c=8 positions,
k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch).

  python -m refine_jax.main --config=configs/paper/lact_760m_midtrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/lact_760m_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/lact_760m_midtrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 0.80B params; 2026-12-06):
  peak HBM 54.8 / 95 GiB per chip (58%), fits; compile 302 s on a 2-core CPU host shared with
  other compiles and tests;
  8,639 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 47.1 s at 40% of bf16 peak (18.8 s at 100%), 44,572 tokens/s at 40%.
  vs the NTP step of the same model and batch (25.4 GiB, 5,007 TFLOP): FLOPs x1.73, peak
  memory x2.15. Before the PPO updates fed their rollouts layer by layer it needed mesh.tensor=2
  (57.8 GiB per chip at 1x2x2, x2.76; 109 GiB at tensor=1). The rest of the excess is rollout
  collection: LaCT captures everything and its decode scan carries each row's 2048-token
  partial chunk.
  FLOPs count every lax.cond's costliest branch: LaCT's rollout steps carry a whole-chunk
  fast-weight update that runs only when a row's chunk fills; with the cheapest branches
  the ratio is x1.26 (6,323 TFLOP per chip per step).
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("lact_760m", "midtrain", tensor=1)
