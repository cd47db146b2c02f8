"""DeltaNet-1.3B x posttrain, paper scale: nested post-training: ReFINE (hybrid reward) on each
16K-token prompt, then SFT on its answer, two updates per batch.

  python -m refine_jax.main --config=configs/paper/deltanet_1b3_posttrain.py \
      --config.init_checkpoint=CONVERTED_WEIGHTS --workdir=runs/deltanet_1b3_posttrain
Check it before renting the slice (CPU host, libtpu):
  python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_posttrain.py

Measured by benchmarks/scale_check.py (libtpu 0.0.42.1, AOT for v5p-8 = 4 chips, mesh data x fsdp
  x tensor = 1x4x1, 1.37B params; separate inner/outer AdamW states):
  peak HBM 38.2 / 95 GiB per chip (40%), fits (34.7 GiB when the two updates shared one AdamW
  state); 10,547 TFLOP per chip per step (matmuls), 2,097,152 tokens per step;
  step 57.5 s at 40% of bf16 peak (23.0 s at 100%), 36,506 tokens/s at 40%
  (measured on deltanet_1b3_posttrain_official.py: the same shapes).
"""

from refine_jax import config
common = config.config_file(__file__, "common.py")


def get_config():
  return common.preset("deltanet_1b3", "posttrain")
