"""The Pallas TPU kernels compile with the real Mosaic compiler (libtpu, ahead of time for a
compile-only v5e device; no TPU needed). Skipped where libtpu is not usable; see
benchmarks/tpu_compile_check.py for the venv recipe and the table over TPU generations."""
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "tpu_compile_check", os.path.join(ROOT, "benchmarks", "tpu_compile_check.py"))
tcc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tcc   # dataclasses look their module up while it loads
_spec.loader.exec_module(tcc)

GEN = "v5e"   # the common generation; 16 MiB default scoped VMEM, the tightest with v5p/v4


def _need_libtpu():
  reason = tcc.libtpu_reason()
  if reason:
    pytest.skip(reason)


def test_parse_bytes_and_error_summary():
  assert tcc.parse_bytes("16.00M") == 16 << 20
  assert tcc.parse_bytes("736.0K") == 736 << 10
  assert tcc.parse_bytes("512") == 512
  with pytest.raises(ValueError, match="byte size"):
    tcc.parse_bytes("lots")
  err = RuntimeError(
      "RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom:\nRan out of memory ... Scoped "
      "allocation with size 38.26M and limit 16.00M exceeded scoped vmem limit by 22.26M.\n"
      'at location: loc("get"("/x/pallas_kernels/pallas_tpu.py":110:19 to :40))')
  s = tcc.summarize_error(err)
  assert "E1001" in s and "size 38.26M and limit 16.00M" in s
  assert "pallas_kernels/pallas_tpu.py:110" in s


def test_default_cases_cover_the_kernels():
  cs = tcc.cases(sweep=False)
  got = {(c.kernel, c.gated, c.dtype, c.t) for c in cs}
  assert len(got) == len(cs) == 16 and all(c.default and c.d == 128 for c in cs)
  assert {c.t for c in cs if c.kernel == "decode"} == {1, 5}
  assert not any(c.default for c in tcc.cases(sweep=True)[len(cs):])


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("kernel", ["fwd", "bwd", "decode"])
def test_default_kernels_compile_for_v5e(kernel, dtype):
  _need_libtpu()
  rows = [tcc.check(c, GEN, measure_vmem=False) for c in tcc.cases(sweep=False)
          if c.kernel == kernel and c.dtype == dtype]
  bad = [f"{r['kernel']} gated={r['gated']} t={r['t']}: {r['error']}" for r in rows if not r["ok"]]
  assert not bad, f"Mosaic rejects kernels for {GEN}:\n" + "\n".join(bad)
  for r in rows:   # arguments really are laid out for the TPU (bytes in HBM, > 0)
    assert r["hbm_args"] > 0 and r["code"] > 0


def test_vmem_limits_read_from_libtpu():
  _need_libtpu()
  phys, limit = tcc.vmem_sizes(GEN)
  assert (phys, limit) == (128 << 20, 16 << 20)   # v5e: 128 MiB VMEM, 16 MiB scoped default


def test_vmem_bisection_brackets_the_hand_count():
  """Forward, float32, K = V = 128, C = 64: the double-buffered blocks alone are
  q, k, v, o (C x 128) 32 KiB each, beta (2 x 64 -> 8 x 128 tile) 4 KiB, state in / out /
  chunk state (128 x 128) 64 KiB each: 2 x 324 KiB, plus the 64 KiB state scratch = 712 KiB.
  Mosaic adds its own scratch for the chunk's values, so the minimum lies above that, and the
  kernel must fail just below the bisected minimum."""
  _need_libtpu()
  case = tcc.Case("fwd", False, "float32")
  lo = tcc.vmem_min(case, GEN, 16 << 20)
  assert 712 << 10 <= lo <= 4 << 20
  assert tcc._compiles(case, GEN, lo)
  assert not tcc._compiles(case, GEN, lo - tcc.VMEM_STEP)


def test_over_the_vmem_limit_is_reported():
  """The check can fail: K = V = 1024 float32 backward needs ~40 MiB of blocks."""
  _need_libtpu()
  r = tcc.check(tcc.Case("bwd", True, "float32", d=1024, default=False), GEN, measure_vmem=False)
  assert not r["ok"] and "vmem" in r["error"].lower()


def test_long_sequences_need_no_more_vmem():
  """beta/g stream in 8-chunk row blocks: the backward at T = 2^18 (which overflowed v5e's
  16 MiB scoped VMEM when a head's rows stayed resident) compiles with the VMEM of T = 128."""
  _need_libtpu()
  short = tcc.check(tcc.Case("bwd", True, "float32", t=128, default=False), GEN)
  long = tcc.check(tcc.Case("bwd", True, "float32", t=1 << 18, default=False), GEN)
  assert short["ok"] and long["ok"], (short["error"], long["error"])
  assert long["vmem_min"] <= short["vmem_min"] + 2 * tcc.VMEM_STEP
