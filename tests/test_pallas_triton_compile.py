"""The Pallas GPU kernels, compiled offline for sm_90 by the pip `triton` package (no GPU
needed), fit an H100's shared memory. The pinned triton wheel is a test dependency on Linux
x86_64 (pyproject's test extra) and is imported plainly there; elsewhere (no wheel) these are
skipped. See benchmarks/triton_compile_check.py for the venv recipe and the full table."""
import importlib.util
import os
import platform
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "triton_compile_check", os.path.join(ROOT, "benchmarks", "triton_compile_check.py"))
tcc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tcc   # dataclasses look their module up while it loads
_spec.loader.exec_module(tcc)

# Exactly the marker of pyproject's `triton==3.9.0; sys_platform == 'linux' and
# platform_machine == 'x86_64'`: where the wheel exists, a missing triton is an error.
_HAS_WHEEL = sys.platform == "linux" and platform.machine() == "x86_64"


def _need_triton():
  if not _HAS_WHEEL:
    pytest.skip(f"no triton wheel for {sys.platform}/{platform.machine()} (Linux x86_64 only)")
  import triton  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


_LOG = """ptxas info    : Compiling entry function 'delta_rule_bwd_gpu' for 'sm_90a'
ptxas info    : Function properties for delta_rule_bwd_gpu
    3976 bytes stack frame, 5012 bytes spill stores, 5904 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 3976 bytes cumulative stack size
"""


def test_ptxas_log_numbers():
  assert tcc._ptxas_numbers(_LOG) == dict(regs=255, stack_bytes=3976, spill_stores=5012,
                                          spill_loads=5904)
  with pytest.raises(RuntimeError, match="ptxas log"):
    tcc._ptxas_numbers("ptxas info    : Compiling entry function 'f' for 'sm_90a'\n")


def _check(kernel, gated, dtype, segments=False):
  _need_triton()
  # The current pallas_gpu.TUNING at the production head size the kernel takes for dtype.
  (case,) = [c for c in tcc.cases(False, (dtype,), segments)
             if c.kernel == kernel and c.gated == gated]
  os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
  res = tcc.compile_ir(tcc.triton_ir(case), warps=case.warps, stages=case.stages, cc=90)
  assert res["num_warps"] == case.warps
  # Over 227 KB the launch fails on an H100: a hard requirement.
  assert res["shared_bytes"] <= tcc.SMEM_LIMIT[90], (
      f"{case}: needs {res['shared_bytes']} B shared memory > {tcc.SMEM_LIMIT[90]} B on sm_90;"
      " change pallas_gpu.TUNING (see benchmarks/triton_compile_check.py --sweep)")
  # Spills cost speed, not correctness: report them.
  if res["spill_stores"] or res["spill_loads"]:
    warnings.warn(f"{case}: {res['regs']} registers, {res['spill_stores']} B spill stores, "
                  f"{res['spill_loads']} B spill loads")


# The float32 backward kernels (~25 s of ptxas each) run with -m slow; bf16, the paper's
# compute dtype, and every forward stay in the default run.
_SM90_CASES = [  # K=V=128 bf16, 64 float32
    pytest.param(kernel, gated, dtype, id=f"{kernel}-{gated}-{dtype}",
                 marks=[pytest.mark.slow] if (kernel, dtype) == ("bwd", "float32") else [])
    for kernel in ("fwd", "bwd") for gated in (False, True) for dtype in ("bfloat16", "float32")]


@pytest.mark.parametrize("kernel,gated,dtype", _SM90_CASES)
def test_default_tuning_fits_sm90(kernel, gated, dtype):
  _check(kernel, gated, dtype)


@pytest.mark.parametrize("kernel", [pytest.param("fwd", marks=pytest.mark.slow), "bwd"])
def test_packed_document_kernels_fit_sm90(kernel):
  """segment_ids add the reset flags and a few C x C masks; gated bf16 is the largest kernel
  that compiles in seconds (the float32 ones take minutes: benchmarks/triton_compile_check.py
  --segments)."""
  _check(kernel, True, "bfloat16", segments=True)


def test_float32_inputs_use_3xtf32_dots_not_ieee():
  """IEEE float32 dots compile to unrolled FMAs (minutes of ptxas, heavy spills)."""
  _need_triton()
  (case,) = [c for c in tcc.cases(False, ("float32",)) if c.kernel == "bwd" and not c.gated]
  ttir = tcc.triton_ir(case)
  assert "tf32x3" in ttir and "ieee" not in ttir
