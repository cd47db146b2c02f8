"""Pallas TPU (Mosaic) kernels compiled ahead of time for real TPU generations, on a CPU host.

No TPU needed: libtpu builds compile-only TPU devices from a topology name
(jax.experimental.topologies.get_topology_desc), and jit(...).lower(...).compile() on
arguments placed on such a device runs XLA:TPU and the full Mosaic pipeline (down to LLO).
So a kernel that the interpreter and the MLIR lowering accept but the real compiler rejects
(unprovable alignment, unsupported layouts, over the scoped VMEM limit) shows up here.

    python benchmarks/tpu_compile_check.py [--gens v5e,v6e] [--sweep] [--no-vmem] [--out DIR]

Needs libtpu, e.g. in a venv that sees the system jax (keep jax/jaxlib unchanged; jax
0.10.2 pins libtpu 0.0.42.*, see `pip show jax`'s `tpu` extra):
    python3 -m venv --system-site-packages /tmp/venv_tpu
    /tmp/venv_tpu/bin/pip install "libtpu==0.0.42.*"
    /tmp/venv_tpu/bin/python benchmarks/tpu_compile_check.py

Shapes: C = 64, K = V = 128 (the production head size), default block_v; B, T, H do not change
a kernel's blocks (except T through the resident beta/g rows, see --sweep). The decode kernel
(fused_recurrent._tpu_call) runs with an initial state and aliasing, as the models call it.
XLA's memory-space assignment is off (COMPILER_OPTIONS), so operands stay in HBM as at model
sizes and the kernel's own VMEM block buffers are what is checked.
Columns: hbm_* from compiled.memory_analysis() (arguments / outputs / temporaries in HBM,
code size); vmem_min: the smallest vmem_limit_bytes under which Mosaic still compiles the
kernel (bisected to 64 KiB; Mosaic reports no usage number itself); vmem_limit: the scoped
VMEM a kernel gets by default, vmem_phys: the VMEM size (both read from libtpu's errors for
probe kernels).
--sweep adds K = V in 64..1024 and T up to 2^18 (the bounds pallas_entry.unsupported_reason
allowed), forward and backward, gated, without the VMEM bisection.
Time on one CPU core: ~2 minutes for the default table over five generations (most of it the
bisection; --no-vmem ~30 s), ~8 minutes with --sweep.
Exit status: 0 all default-config kernels compile, 1 one does not, 2 libtpu unusable here.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import results  # noqa: E402
# libtpu takes a machine-wide lock file, so a second process (a pytest-xdist worker, a run of
# this script) would fail to start it. Compile-only devices own no chips: sharing is safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# Generation -> smallest topology libtpu 0.0.42 accepts for it (one host's chips); the kernels
# are compiled for one device of it.
GENERATIONS = {"v5e": "v5e:2x2", "v6e": "v6e:2x2", "v5p": "v5p:2x2x1", "v4": "v4:2x2x1",
               "v7x": "tpu7x:2x2x1"}
DEFAULT_GENS = ("v5e", "v6e", "v5p", "v4", "v7x")
B, T, H, K, C = 1, 128, 2, 128, 64
VMEM_STEP = 64 * 1024
# XLA's memory-space assignment would move a tiny test program's operands into VMEM (even a
# 64 MiB decode state on a 128 MiB v5e), sparing the kernel its HBM<->VMEM block buffers. In a
# model at real sizes they stay in HBM: compile that case, the one that needs the most VMEM.
COMPILER_OPTIONS = {"xla_msa_enable": False}


@dataclasses.dataclass(frozen=True)
class Case:
  kernel: str        # "fwd" | "bwd" (pallas_tpu) | "decode" (fused_recurrent._tpu_call)
  gated: bool
  dtype: str         # "bfloat16" | "float32"
  t: int = T
  d: int = K         # K = V
  block_v: int | None = None   # fwd/bwd: pallas_tpu's block_v (None: V)
  default: bool = True   # a default-config kernel: a failure makes the exit status 1


def libtpu_reason() -> str | None:
  """None if libtpu can make compile-only TPU devices here, else why not (one line)."""
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    return (f"cannot import libtpu ({e}); install the libtpu wheel jax pins into a venv that "
            "sees this jax: python3 -m venv --system-site-packages /tmp/venv_tpu && "
            "/tmp/venv_tpu/bin/pip install \"libtpu==0.0.42.*\" (for jax 0.10.2)")
  try:
    _device("v5e")
  except Exception as e:  # libtpu present but refuses (version skew, no topology support)
    return f"libtpu cannot build a compile-only v5e topology: {type(e).__name__}: {e}"
  return None


@functools.lru_cache(maxsize=None)
def _device(gen: str):
  from jax.experimental import topologies
  if gen not in GENERATIONS:
    raise ValueError(f"unknown TPU generation {gen!r}; use one of {sorted(GENERATIONS)}")
  return topologies.get_topology_desc(GENERATIONS[gen], "tpu").devices[0]


def _fn_args(case: Case, device):
  """The function to jit and its abstract arguments, committed to `device`."""
  import jax
  import jax.numpy as jnp
  from pallas_kernels import fused_recurrent, pallas_tpu
  sh = jax.sharding.SingleDeviceSharding(device)
  dt = jnp.dtype(case.dtype)
  x = lambda *s: jax.ShapeDtypeStruct(s, dt, sharding=sh)
  f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh)
  Tn, D = case.t, case.d
  q, v, beta = x(B, Tn, H, D), x(B, Tn, H, D), x(B, Tn, H)
  g = x(B, Tn, H) if case.gated else None
  kw = dict(scale=D ** -0.5)
  if case.kernel == "decode":
    fn = lambda *a: fused_recurrent._tpu_call(*a, interpret=False, alias=True, **kw)
    return fn, (q, q, v, beta, g, f(B, H, D, D))
  N = Tn // C
  if case.kernel == "fwd":
    fn = lambda *a: pallas_tpu.fwd(*a, chunk_size=C, block_v=case.block_v, **kw)
    return fn, (q, q, v, beta, g, f(B, H, D, D))
  fn = lambda *a: pallas_tpu.bwd(*a, chunk_size=C, block_v=case.block_v, **kw)
  return fn, (q, q, v, beta, g, f(B, N, H, D, D), v, f(B, H, D, D), f(B, N, H, D, D))


@contextlib.contextmanager
def _vmem_limit(limit):
  """Every pltpu.CompilerParams made inside gets vmem_limit_bytes=limit (None: unchanged)."""
  from jax.experimental.pallas import tpu as pltpu
  orig = pltpu.CompilerParams
  if limit is not None:
    pltpu.CompilerParams = functools.partial(orig, vmem_limit_bytes=int(limit))
  try:
    yield
  finally:
    pltpu.CompilerParams = orig


def compile_case(case: Case, gen: str, vmem_limit=None):
  """The compiled executable for one TPU device of generation `gen` (raises on failure)."""
  import jax
  fn, args = _fn_args(case, _device(gen))
  with _vmem_limit(vmem_limit):
    return jax.jit(fn).trace(*args).lower().compile(compiler_options=COMPILER_OPTIONS)


_UNIT = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(s: str) -> int:
  """'16.00M' / '736.0K' / '512' (XLA's human sizes) -> bytes."""
  m = re.fullmatch(r"([0-9.]+)\s*([KMGB]?)i?B?", s.strip())
  if not m:
    raise ValueError(f"not a byte size: {s!r}")
  return round(float(m.group(1)) * _UNIT[m.group(2)])


def summarize_error(e: Exception) -> str:
  """One line: the Mosaic/XLA error code and message, the allocation that overflowed, and the
  kernel source line, from jax's multi-line exception text."""
  msg = str(e)
  first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
  if e.__cause__ is not None:   # jax re-raises Mosaic errors; the cause has the location
    msg += "\n" + str(e.__cause__)
  first = first.replace("INTERNAL: Mosaic failed to compile TPU kernel: ", "")
  parts = [f"{type(e).__name__}: {first[:200]}"]
  m = re.search(r"Scoped allocation with size \S+ and limit \S+", msg)
  if m:
    parts.append(m.group(0))
  m = re.search(r'"[^"]*?(pallas_kernels/[\w]+\.py)":(\d+)', msg)
  if m:
    parts.append(f"at {m.group(1)}:{m.group(2)}")
  return " | ".join(parts)


def _compiles(case, gen, limit) -> bool:
  try:
    compile_case(case, gen, limit)
    return True
  except Exception as e:
    if "vmem" not in str(e).lower():   # only VMEM failures depend on the limit
      raise
    return False


def vmem_min(case: Case, gen: str, hi: int, step: int = VMEM_STEP) -> int:
  """Smallest multiple of `step` <= hi as vmem_limit_bytes under which `case` compiles
  (the caller knows it compiles at hi)."""
  lo, hi = 0, -(-hi // step)   # in steps: fails at lo (nothing fits in 0), compiles at hi
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if _compiles(case, gen, mid * step) else (mid, hi)
  return hi * step


def _probe(gen: str, nbytes: int, scratch: bool):
  """Compiles a copy kernel for `gen` that needs `nbytes` of VMEM: as one scratch buffer, or
  (not scratch) as double-buffered input and output blocks. None or the error text."""
  import jax
  import jax.numpy as jnp
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import tpu as pltpu
  rows = nbytes // 512 if scratch else nbytes // 4 // 512   # float32 rows of 128 lanes

  def kernel(x_ref, o_ref, *s_ref):
    o_ref[...] = x_ref[...]

  shape = (8, 128) if scratch else (2 * rows, 128)   # two grid steps: blocks double-buffered
  spec = pl.BlockSpec(shape if scratch else (rows, 128), lambda i: (0 if scratch else i, 0))
  fn = lambda x: pl.pallas_call(
      kernel, grid=(1 if scratch else 2,), in_specs=[spec], out_specs=spec,
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      scratch_shapes=[pltpu.VMEM((rows, 128), jnp.float32)] if scratch else [])(x)
  x = jax.ShapeDtypeStruct(shape, jnp.float32,
                           sharding=jax.sharding.SingleDeviceSharding(_device(gen)))
  try:
    jax.jit(fn).trace(x).lower().compile(compiler_options=COMPILER_OPTIONS)
  except Exception as e:
    return str(e)
  return None


@functools.lru_cache(maxsize=None)
def vmem_sizes(gen: str) -> tuple[int, int]:
  """(physical VMEM, scoped VMEM limit a kernel gets when it sets none) in bytes, read from
  the errors of probe kernels. (Scratch buffers are allocated by XLA, up to physical VMEM;
  the limit applies to Mosaic's own block buffers.)"""
  err = _probe(gen, 1 << 30, scratch=True) or ""
  m = re.search(r"would exceed memory \(size=(\d+)\)", err)
  if not m:
    raise RuntimeError(f"{gen}: no VMEM size in the 1 GiB probe's error: {err[:500]}")
  phys = int(m.group(1))
  for nbytes in (phys // 2, phys - (1 << 20)):
    err = _probe(gen, nbytes, scratch=False)
    if err is not None:
      m = re.search(r"Scoped allocation with size \S+ and limit (\S+)", err)
      if not m:
        raise RuntimeError(f"{gen}: no scoped VMEM limit in the probe's error: {err[:500]}")
      return phys, parse_bytes(m.group(1))
  return phys, phys


def check(case: Case, gen: str, measure_vmem: bool = True) -> dict:
  """One row: the case, whether it compiles for `gen`, the error or its memory numbers."""
  row = dict(gen=gen, **dataclasses.asdict(case))
  t0 = time.perf_counter()
  try:
    m = compile_case(case, gen).memory_analysis()
    row.update(ok=True, error="", compile_s=round(time.perf_counter() - t0, 2),
               hbm_args=m.argument_size_in_bytes, hbm_out=m.output_size_in_bytes,
               hbm_temp=m.temp_size_in_bytes, code=m.generated_code_size_in_bytes)
  except Exception as e:  # one failing kernel should not hide the rest of the table
    row.update(ok=False, error=summarize_error(e), compile_s=round(time.perf_counter() - t0, 2))
    return row
  if measure_vmem:
    row["vmem_phys"], row["vmem_limit"] = vmem_sizes(gen)
    row["vmem_min"] = vmem_min(case, gen, row["vmem_limit"])
  return row


def cases(sweep: bool) -> list[Case]:
  out = []
  for kernel, gated, dtype in itertools.product(("fwd", "bwd"), (False, True),
                                                ("bfloat16", "float32")):
    out.append(Case(kernel, gated, dtype))
  for t, gated, dtype in itertools.product((1, 5), (False, True), ("bfloat16", "float32")):
    out.append(Case("decode", gated, dtype, t=t))
  if sweep:
    for kernel, dtype, d, t in itertools.product(("fwd", "bwd"), ("bfloat16", "float32"),
                                                 (64, 256, 512, 1024), (T,)):
      out.append(Case(kernel, True, dtype, t=t, d=d, default=False))
    for kernel, dtype, t in itertools.product(("fwd", "bwd"), ("bfloat16", "float32"),
                                              (1 << 14, 1 << 16, 1 << 18)):
      out.append(Case(kernel, True, dtype, t=t, default=False))
    for dtype, d, t in itertools.product(("bfloat16", "float32"), (256, 512), (1, 64)):
      out.append(Case("decode", True, dtype, t=t, d=d, default=False))
  return out


COLS = ["kernel", "gated", "dtype", "t", "d", "block_v", "ok", "vmem_min", "vmem_limit",
        "vmem_phys", "hbm_args", "hbm_out", "hbm_temp", "code", "compile_s", "error"]


def _fmt(r, c):
  v = r.get(c, "")
  if c in ("vmem_min", "vmem_limit", "vmem_phys") and v != "":
    return f"{v / 1024:.0f}K"
  return str(v)


def markdown(rows, versions) -> str:
  lines = []
  for gen in dict.fromkeys(r["gen"] for r in rows):
    lines += [f"### {gen} ({GENERATIONS[gen]}, one device) - Mosaic AOT compile, {versions}",
              "", "| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    lines += ["| " + " | ".join(_fmt(r, c) for c in COLS) + " |"
              for r in rows if r["gen"] == gen]
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--gens", default=",".join(DEFAULT_GENS),
                 help=f"TPU generations, comma-separated, from {sorted(GENERATIONS)}")
  p.add_argument("--sweep", action="store_true", help="larger K = V and T (no VMEM bisection)")
  p.add_argument("--no-vmem", action="store_true", help="skip the VMEM bisection (faster)")
  p.add_argument("--out", default="", help="folder for tpu_compile.{json,md}")
  a = p.parse_args(argv)
  gens = [g.strip() for g in a.gens.split(",") if g.strip()]
  unknown = set(gens) - set(GENERATIONS)
  if unknown:
    p.error(f"--gens: unknown {sorted(unknown)}; use some of {sorted(GENERATIONS)}")
  reason = libtpu_reason()
  if reason:
    print(f"tpu_compile_check: {reason}", file=sys.stderr)
    return 2
  import importlib.metadata as md
  import jax
  versions = f"jax {jax.__version__}, libtpu {md.version('libtpu')}"
  todo = cases(a.sweep)
  print(f"{versions}: {len(todo)} kernels x {len(gens)} generations", flush=True)
  rows = []
  for gen in gens:
    for c in todo:
      rows.append(check(c, gen, measure_vmem=c.default and not a.no_vmem))
      r = rows[-1]
      print(f"{gen} {c.kernel} gated={c.gated} {c.dtype} t={c.t} d={c.d}: "
            f"{'ok' if r['ok'] else r['error']}", flush=True)
  text = markdown(rows, versions)
  print(text)
  if a.out:
    results.write(a.out, "tpu_compile_sweep" if a.sweep else "tpu_compile",
                  dict(versions=versions, topologies={g: GENERATIONS[g] for g in gens},
                       rows=rows), text)
  bad = [r for r in rows if r["default"] and not r["ok"]]
  if bad:
    print(f"{len(bad)} default-config kernel(s) fail to compile", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
