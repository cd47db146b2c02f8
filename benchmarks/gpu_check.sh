#!/usr/bin/env bash
# One prepared check of the Pallas delta-rule kernels on a lent GPU machine (~8 minutes).
#
# The GPU machine has Python 3.12, JAX 0.11 (CUDA 13), flax, optax, orbax, chex, torch and
# triton, but no network and none of grain, ml_collections, jax-triton, flash-linear-attention.
# Before the run, on the development machine (which reaches PyPI), put the missing wheels in
# .whl/ (git-ignored) and carry that folder:
#
#   mkdir -p .whl && python3 -m pip download --dest .whl --no-deps \
#       --python-version 3.12 --only-binary=:all: \
#       fla-core==0.6.0 einops grain ml-collections jax-triton \
#       pytest iniconfig pluggy packaging pygments
#   (pytest and its deps in case the machine lacks them; fla-core is flash-linear-attention's
#    op package, fla.ops.*delta_rule, needing only einops besides torch/triton. grain has binary deps: add
#    array-record, dm-tree, etc. with --no-deps only if a test that imports grain runs.)
#
# Then, through the device tool: run(command="bash benchmarks/gpu_check.sh",
#   carry=[".whl"], timeout_s=540). Results come back under $OUT:
#   env.txt, tests.txt (pytest on the GPU: the Triton kernels for real, not interpreted),
#   kernel_bench.{json,md} (pallas_gpu vs xla_chunked vs FLA, fwd and fwd+bwd),
#   decode_bench.{json,md} (fused one-token decode kernel vs XLA vs FLA fused_recurrent).
# A second call, `bash benchmarks/gpu_check.sh tune` (~5 minutes), sweeps the launch
# settings in pallas_gpu.TUNING at T = 8192 instead: kernel_bench_tune_*.md.
set -u
export PYTHONUNBUFFERED=1   # keep partial output if a step hits its timeout
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # FLA (torch) shares the card with JAX
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, sys; print(sys.version); print('jax', jax.__version__, jax.devices())"
  python3 -c "import fla; print('fla', fla.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "${1:-check}" = "tune" ]; then
  # Launch-setting sweep of our kernel at one size, one setting changed at a time.
  timeout 60 python3 benchmarks/kernel_bench.py --out "$OUT" --T 8192 --variants gated \
      --impls pallas_gpu --iters 3 --tag _tune_default 2>&1 | tail -1
  # (all fit sm_90 shared memory: benchmarks/triton_compile_check.py --sweep)
  for tune in fwd_warps=8 fwd_block_v=128 bwd_block_v=128 fwd_block_v=32 bwd_block_v=32 \
      bwd_warps=4; do
    timeout 45 python3 benchmarks/kernel_bench.py --out "$OUT" --T 8192 --variants gated \
        --impls pallas_gpu --iters 3 --tune "$tune" --tag "_tune_${tune/=/}" 2>&1 | tail -1
  done
  echo "gpu_check tune done: results in $OUT"
  exit 0
fi

# 1) Correctness on the GPU: the GPU kernels run for real (fp32 < 1e-4, bf16 < 1e-2 vs the
#    naive recurrence, outputs/states/all gradients), incl. C=64, K=V=128 device shapes.
timeout 180 python3 -m pytest tests/test_pallas_kernels.py tests/test_pallas_math.py \
    tests/test_pallas_lowering.py tests/test_pallas_fused_recurrent.py -v -p no:cacheprovider \
    --durations=10 2>&1 | tee "$OUT/tests.txt" | tail -25

# 2) The benchmark: B*H = 128 heads, T = 2048, 8192, 32768, K = V = 128, bf16.
timeout 240 python3 benchmarks/kernel_bench.py --out "$OUT" --iters 3 2>&1 \
    | tee "$OUT/bench.txt" | tail -20

# 3) The fused decode step (memory bound: GB/s vs a measured copy), B*H = 128..1024.
timeout 60 python3 benchmarks/decode_bench.py --out "$OUT" 2>&1 | tee "$OUT/decode.txt" | tail -16
echo "gpu_check done: results in $OUT"
