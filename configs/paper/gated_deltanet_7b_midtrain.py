"""Gated DeltaNet-7B x midtrain, paper recipe at 7B: ReFINE mid-training on 16K-token long text
(c=8 positions, k=5, cosine reward, lambda_rl 0.2, 4 PPO minibatch updates per batch, 128
sequences per step) on a v5p-64 slice (32 chips), one sequence per chip per microbatch.

  python -m refine_jax.main --config=configs/paper/gated_deltanet_7b_midtrain.py \\
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/gated_deltanet_7b_midtrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/gated_deltanet_7b_midtrain.py

refine.capture=strided (every 8th chunk state and the layer inputs; see
gated_deltanet_1b3_midtrain.py). Sizes: gated_deltanet_7b in common.py.

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-64 = 32 chips, mesh data x
  fsdp x tensor = 1x32x1, 6.74B params; 2026-12-06):
  peak HBM 31.9 / 95 GiB per chip (34%), fits; compile 106 s on an otherwise idle 2-core CPU
  host (312 s while a test run shared it);
  4,275 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 23.3 s at 40% of bf16 peak (9.3 s at 100%), 90,075 tokens/s at 40%.
  vs the NTP step of the same model and batch (25.3 GiB, 3,339 TFLOP): FLOPs x1.280, peak
  memory x1.262. With refine.capture=selected: 36.9 GiB (x1.46) at FLOPs x1.53.
8xH100 estimate (not measured): the same step on 8 devices (FSDP over 8, 4 microbatches per
update: --topology=v5p-16 --config.train.microbatches=4) needs 50.3 GiB per device, 63% of an
H100's 80 GiB, and 17,099 TFLOP per device per step: 43 s per step at 40% of the H100's
989 TFLOP/s bf16 peak, about 48,500 tokens/s for the node.
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("gated_deltanet_7b", "midtrain", topology="v5p-64", chips=32,
                       capture="strided")
