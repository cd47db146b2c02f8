#!/usr/bin/env bash
# Correctness + speed check of the Pallas delta-rule kernels on an NVIDIA GPU (~8 minutes).
#
# On a machine with an H100/H200 (or any sm_80+ card) and network access:
#
#   pip install -U "jax[cuda12]"                # the CUDA build of JAX (match your driver)
#   pip install -e ".[test]" fla-core==0.6.0 einops   # this project + FLA's Triton ops
#   bash benchmarks/gpu_check.sh                 # results in runs/gpu_check/ (or $OUT)
#
# It writes env.txt, tests.txt (the kernel tests on the GPU: Triton kernels compiled for
# real, not interpreted), kernel_bench.{json,md} (pallas_gpu vs xla_chunked vs FLA, forward
# and forward+backward, as ratios measured in one run) and decode_bench.{json,md} (fused
# one-token decode kernel vs XLA vs FLA's fused_recurrent).
# `bash benchmarks/gpu_check.sh tune` (~5 minutes) sweeps the launch settings in
# pallas_gpu.TUNING at T = 8192 instead: kernel_bench_tune_*.md.
#
# A GPU machine without network: on a machine that reaches PyPI, download the missing wheels
# for the target Python into .whl/ (git-ignored) and copy the repository over with it; the
# script installs them from there, e.g.
#   python3 -m pip download --dest .whl --no-deps --python-version 3.12 --only-binary=:all: \
#       fla-core==0.6.0 einops grain ml-collections pytest iniconfig pluggy packaging pygments
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
