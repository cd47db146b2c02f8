"""Pallas GPU kernels compiled offline for sm_90: shared memory, registers, spills.

Runs on a CPU-only machine, so a kernel that cannot launch (over 227 KB of shared memory on an
H100) or spills heavily shows up before a GPU session finds out the hard way.

    python benchmarks/triton_compile_check.py [--sweep] [--out DIR] [--cc 90] [--jobs 2]

Needs the pip `triton` package (it ships ptxas), e.g. in a venv that sees the system jax:
    python3 -m venv --system-site-packages /tmp/venv_triton
    /tmp/venv_triton/bin/pip install triton
    /tmp/venv_triton/bin/python benchmarks/triton_compile_check.py

How: jax's Pallas Triton lowering builds a Triton-dialect (ttir) module on CPU; we take its
text and run pip triton's own pipeline on it (ttir -> ttgir -> llir -> ptx -> cubin with
ptxas -v) for GPUTarget("cuda", cc, 32). Shared memory is triton's metadata.shared (what the
launch must reserve); registers and spills are from the ptxas log. On the GPU, jax compiles
the same module with the Triton that XLA/jaxlib bundles, a different commit, so numbers can
differ somewhat; a kernel over the limit here is a kernel to look at. (Checked: pip triton
3.9.0 and 3.5.1 both take jaxlib 0.10.2's module text and give the same shared memory.)

Shapes: C = 64, K = V = 128 (the production head size); B, T, H do not change the kernel.
Default: the current pallas_gpu.TUNING, fwd and bwd, plain and gated, bf16 and fp32 inputs.
--segments: the same kernels with packed documents (segment_ids).
--sweep: block_v 32/64/128 x warps 4/8 x bf16_dots 0/1 (bf16_dots only for bf16 inputs).
A bf16 kernel compiles in 5-30 s; a float32 one (IEEE dots become unrolled FMAs) in 1-8 minutes.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import io
import itertools
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import results  # noqa: E402

# Per-block shared memory a kernel can opt into, by compute capability (sm_90: 227 KB of 228).
SMEM_LIMIT = {90: 232448, 89: 101376, 86: 101376, 80: 166912, 100: 232448}
_DEVICE_KIND = {90: "NVIDIA H100", 80: "NVIDIA A100", 100: "NVIDIA B200"}
B, T, H, K, V, C = 1, 128, 2, 128, 128, 64


@dataclasses.dataclass(frozen=True)
class Case:
  kernel: str        # "fwd" | "bwd"
  gated: bool
  dtype: str         # "bfloat16" | "float32"
  block_v: int
  warps: int
  stages: int
  bf16_dots: int
  d: int = K         # K = V
  segments: bool = False   # packed documents (reset flags [B, T]: segment_ids)


class _Captured(Exception):
  """Stops the jax lowering once the Triton module text is in hand."""


def triton_ir(case: Case, cc: int = 90) -> str:
  """The ttir text jax's Pallas Triton lowering makes for `case` (CPU-only)."""
  import jax
  import jax.numpy as jnp
  from jax._src.pallas.triton import pallas_call_registration as pcr
  from pallas_kernels import pallas_gpu

  texts = []
  lower = getattr(pcr.lowering, "lower_jaxpr_to_triton_module", None)
  if lower is None:
    raise RuntimeError(f"jax {jax.__version__} has no pallas triton lowering."
                       "lower_jaxpr_to_triton_module to take the Triton module from; "
                       "update triton_ir() for this jax version.")

  def grab(*a, **kw):
    texts.append(lower(*a, **kw).module.operation.get_asm(enable_debug_info=False))
    raise _Captured  # jax >= 0.11 would go on to compile it with a GPU-only handler

  K = V = case.d
  dt = jnp.dtype(case.dtype)
  x = lambda *s: jax.ShapeDtypeStruct(s, dt)
  f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  N = T // C
  q, k, v, beta = x(B, T, H, K), x(B, T, H, K), x(B, T, H, V), x(B, T, H)
  g = x(B, T, H) if case.gated else None
  kw = dict(scale=K ** -0.5, chunk_size=C, block_v=case.block_v, num_warps=case.warps,
            num_stages=case.stages)
  kernel_fn = pallas_gpu.fwd if case.kernel == "fwd" else pallas_gpu.bwd
  if case.kernel == "fwd":
    args = (q, k, v, beta, g, f(B, H, K, V))
  else:
    args = (q, k, v, beta, g, f(B, N, H, K, V), x(B, T, H, V), f(B, H, K, V),
            f(B, N, H, K, V))
  fn = lambda *a: kernel_fn(*a, **kw)
  if case.segments:   # reset flags [B, T], traced like the rest
    fn, args = (lambda *a: kernel_fn(*a[:-1], reset=a[-1], **kw)), args + (f(B, T),)
  old = dict(pallas_gpu.TUNING)
  pallas_gpu.TUNING["bf16_dots"] = case.bf16_dots
  pcr.lowering.lower_jaxpr_to_triton_module = grab
  try:
    with pallas_gpu.abstract_gpu(device_kind=_DEVICE_KIND.get(cc, "NVIDIA H100")):
      jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
  except _Captured:
    pass
  except Exception:   # jax may wrap errors raised inside a lowering rule
    if not texts:
      raise
  finally:
    pcr.lowering.lower_jaxpr_to_triton_module = lower
    pallas_gpu.TUNING.clear()
    pallas_gpu.TUNING.update(old)
  if len(texts) != 1:
    raise RuntimeError(f"expected one Triton module for {case}, got {len(texts)}")
  return texts[0]


def _ptxas_numbers(log: str) -> dict:
  regs = re.findall(r"Used (\d+) registers", log)
  spill = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                     log)
  if not regs or not spill:
    raise RuntimeError(f"no register/spill line in the ptxas log:\n{log}")
  stack, st, ld = map(int, spill[-1])
  return dict(regs=int(regs[-1]), stack_bytes=stack, spill_stores=st, spill_loads=ld)


def compile_ir(ttir: str, *, warps: int, stages: int, cc: int = 90) -> dict:
  """Compiles ttir text with pip triton for cuda sm_<cc>: shared bytes, regs, spills."""
  import triton
  from triton import knobs
  from triton.backends.compiler import GPUTarget
  knobs.compilation.always_compile = True   # a cache hit would skip ptxas and its log
  knobs.nvidia.dump_ptxas_log = True        # printed to stdout: captured below
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "kernel.ttir")   # triton.compile takes IR by file suffix
    with open(path, "w") as fh:
      fh.write(ttir)
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
      kern = triton.compile(path, target=GPUTarget("cuda", cc, 32),
                            options=dict(num_warps=warps, num_stages=stages))
    secs = time.perf_counter() - t0
  md = kern.metadata
  res = dict(shared_bytes=int(md.shared), num_warps=int(md.num_warps),
             num_stages=int(md.num_stages), compile_s=round(secs, 1))
  res.update(_ptxas_numbers(out.getvalue()))
  return res


def check(case: Case, cc: int = 90) -> dict:
  """One row: the case, its compile numbers, and whether it fits the shared-memory limit."""
  row = dataclasses.asdict(case)
  try:
    row.update(compile_ir(triton_ir(case, cc), warps=case.warps, stages=case.stages, cc=cc))
    row["fits_smem"] = row["shared_bytes"] <= SMEM_LIMIT.get(cc, SMEM_LIMIT[90])
    row["error"] = ""
  except Exception as e:  # one failing variant should not hide the rest of the table
    row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
  return row


def cases(sweep: bool, dtypes=("bfloat16", "float32"), segments=False) -> list[Case]:
  from pallas_kernels import pallas_gpu
  tu = pallas_gpu.TUNING
  out = []
  for kernel, gated, dtype in itertools.product(("fwd", "bwd"), (False, True), dtypes):
    stages = tu[f"{kernel}_stages"]
    if not sweep:
      bf16_dots = tu["bf16_dots"] if dtype == "bfloat16" else 0
      d = 64 if dtype == "float32" else K   # the GPU kernel takes float32 up to 64 only
      out.append(Case(kernel, gated, dtype, min(tu[f"{kernel}_block_v"], d),
                      tu[f"{kernel}_warps"], stages, bf16_dots, d, segments))
      continue
    for bv, w, bd in itertools.product((32, 64, 128), (4, 8), (0, 1)):
      if bd and dtype != "bfloat16":
        continue   # bf16_dots only changes bf16-input kernels
      out.append(Case(kernel, gated, dtype, bv, w, stages, bd, segments=segments))
  return out


COLS = ["kernel", "gated", "dtype", "d", "segments", "block_v", "warps", "stages", "bf16_dots", "shared_bytes",
        "fits_smem", "regs", "spill_stores", "spill_loads", "stack_bytes", "compile_s", "error"]


def markdown(rows, cc) -> str:
  lim = SMEM_LIMIT.get(cc, SMEM_LIMIT[90])
  lines = [f"Triton compile for sm_{cc} (shared-memory limit {lim} B = {lim // 1024} KB/block)",
           "", "| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
  for r in rows:
    lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLS) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sweep", action="store_true", help="block_v x warps x bf16_dots variants")
  p.add_argument("--out", default="", help="folder for triton_compile.{json,md}")
  p.add_argument("--cc", type=int, default=90, help="compute capability, e.g. 90 for H100")
  p.add_argument("--jobs", type=int, default=1, help="parallel compiles (processes)")
  p.add_argument("--segments", action="store_true",
                 help="the packed-document variants (segment_ids: reset flags read per chunk)")
  p.add_argument("--dtypes", default="",
                 help="input dtypes, comma-separated (default bfloat16,float32; bfloat16 with "
                      "--sweep: each float32 kernel takes ptxas 5-8 minutes on a CPU core)")
  a = p.parse_args(argv)
  try:
    import triton
  except ImportError as e:
    sys.exit(f"triton_compile_check: cannot import triton ({e}). Install the pip `triton` "
             "package in a venv that sees this jax: python3 -m venv --system-site-packages "
             "/tmp/venv_triton && /tmp/venv_triton/bin/pip install triton")
  os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # triton's default; silences a warning
  dtypes = a.dtypes or ("bfloat16" if a.sweep else "bfloat16,float32")
  dtypes = tuple(d.strip() for d in dtypes.split(","))
  unknown = set(dtypes) - {"bfloat16", "float32"}
  if unknown:
    sys.exit(f"--dtypes: unknown {sorted(unknown)}; use bfloat16 and/or float32")
  todo = cases(a.sweep, dtypes, a.segments)
  print(f"triton {triton.__version__}: {len(todo)} kernels for sm_{a.cc}", flush=True)
  if a.jobs > 1:
    import multiprocessing   # spawn: forking a process that runs jax threads can deadlock
    with concurrent.futures.ProcessPoolExecutor(
        a.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
      rows = list(ex.map(check, todo, [a.cc] * len(todo)))
  else:
    rows = [check(c, a.cc) for c in todo]
  md = markdown(rows, a.cc)
  print(md)
  if a.out:
    results.write(a.out, "triton_compile_sweep" if a.sweep else "triton_compile",
                  dict(triton=triton.__version__, cc=a.cc, rows=rows), md)
  bad = [r for r in rows if r["error"] or not r["fits_smem"]]
  if bad:
    print(f"{len(bad)} kernel(s) fail to compile or exceed shared memory", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
