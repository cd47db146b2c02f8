"""DeltaNet-1.3B x midtrain at 64K tokens: the paper's ReFINE mid-training (c=8 positions, k=5,
cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch, 128 sequences per step) on
sequences 4x the paper's 16K, one sequence per chip per microbatch on a v5p-8.

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_midtrain_64k.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/deltanet_1b3_midtrain_64k
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_midtrain_64k.py

refine.capture=selected: rollout collection first picks the positions with a forward pass that
keeps no states, then captures only those positions' pieces (one boundary state and one chunk
per position and layer); the PPO updates capture only the stored positions.

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params, 2026-12-06):
  peak HBM 52.6 / 95 GiB per chip (55%), fits; compile 114 s on a 2-core CPU host;
  32,273 TFLOP per chip per step (matmuls), 8,388,608 tokens per step;
  step 175.8 s at 40% of bf16 peak (70.3 s at 100%), 47,723 tokens/s at 40%.
  vs the NTP step of the same model and batch (48.1 GiB, 21,058 TFLOP): FLOPs x1.53, peak
  memory x1.09. With refine.capture=all (one pass keeping every chunk's state): 77.7 GiB (82%,
  fits, x1.62) at FLOPs x1.27, 26,675 TFLOP: the faster choice while it fits.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "midtrain", seq_len=65536, capture="selected")
