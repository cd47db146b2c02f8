"""Chunked delta-rule kernels: forward and forward+backward time, in one run.

    python benchmarks/kernel_bench.py [--out DIR] [--T 2048,8192,32768] [--heads 128]
                                      [--variants delta,gated] [--impls pallas_gpu,xla_chunked,fla]

On a GPU it compares our Pallas/Triton kernel, the XLA chunked path and, when installed,
flash-linear-attention's Triton chunk_delta_rule / chunk_gated_delta_rule (torch), at
B*H = 128 heads, K = V = 128, bf16. On a CPU it runs tiny sizes of the interpret and XLA paths
(a smoke run; the times mean nothing there).

TFLOP/s use one nominal count for every implementation, the matmul work of the chunked
WY/UT algorithm with C = 64: per token and head 2C(3K + 2V) + 6KV forward, and 3x that for
forward+backward. "peak" is a measured bf16 matmul (8192^3) on the same device, so
frac_peak = achieved / measured-peak.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import results  # noqa: E402
# JAX would take 75% of GPU memory at its first op, leaving FLA (torch) too little at T=32k.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pallas_kernels  # noqa: E402


def nominal_flops(B, T, H, K, V, C=64):
  return B * T * H * (2 * C * (3 * K + 2 * V) + 6 * K * V)


def _time(fn, iters, sync):
  fn()
  sync(fn())  # warm-up, compile
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    sync(fn())
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def _jax_sync(x):
  jax.block_until_ready(x)


def matmul_peak(iters):
  n = 8192 if jax.default_backend() != "cpu" else 512
  a = jnp.ones((n, n), jnp.bfloat16)
  f = jax.jit(lambda a: a @ a)
  t = _time(lambda: f(a), iters, _jax_sync)
  return 2 * n ** 3 / t / 1e12


def _inputs(B, T, H, K, V, gated, dtype, key):
  ks = jax.random.split(key, 6)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q = unit(jax.random.normal(ks[0], (B, T, H, K))).astype(dtype)
  k = unit(jax.random.normal(ks[1], (B, T, H, K))).astype(dtype)
  v = jax.random.normal(ks[2], (B, T, H, V)).astype(dtype)
  beta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, T, H))).astype(dtype)
  g = (jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, T, H)) + 4.0).astype(dtype)
       if gated else None)
  do = jax.random.normal(ks[5], (B, T, H, V)).astype(dtype)
  return q, k, v, beta, g, do


def bench_jax(backend, B, T, H, K, V, gated, dtype, iters, chunk_size):
  q, k, v, beta, g, do = _inputs(B, T, H, K, V, gated, dtype, jax.random.PRNGKey(0))

  def run(q, k, v, beta, g):
    if gated:
      return pallas_kernels.gated_delta_rule(q, k, v, g, beta, chunk_size=chunk_size,
                                             backend=backend)
    return pallas_kernels.delta_rule(q, k, v, beta, chunk_size=chunk_size, backend=backend)

  fwd = jax.jit(lambda *a: run(*a)[0])
  argn = (0, 1, 2, 3, 4) if gated else (0, 1, 2, 3)

  def loss(q, k, v, beta, g):
    return jnp.sum(run(q, k, v, beta, g)[0].astype(jnp.float32) * do.astype(jnp.float32))

  fb = jax.jit(jax.grad(loss, argnums=argn))
  t_f = _time(lambda: fwd(q, k, v, beta, g), iters, _jax_sync)
  t_fb = _time(lambda: fb(q, k, v, beta, g), iters, _jax_sync)
  return t_f, t_fb


def bench_fla(B, T, H, K, V, gated, iters):
  import torch
  if gated:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as op
  else:
    from fla.ops.delta_rule import chunk_delta_rule as op
  dev, dt = "cuda", torch.bfloat16
  torch.manual_seed(0)
  unit = lambda x: torch.nn.functional.normalize(x, dim=-1)
  q = unit(torch.randn(B, T, H, K, device=dev)).to(dt).requires_grad_()
  k = unit(torch.randn(B, T, H, K, device=dev)).to(dt).requires_grad_()
  v = torch.randn(B, T, H, V, device=dev, dtype=dt).requires_grad_()
  beta = torch.rand(B, T, H, device=dev, dtype=dt).sigmoid().requires_grad_()
  g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev) + 4).to(dt).requires_grad_()
  do = torch.randn(B, T, H, V, device=dev, dtype=dt)

  def run():
    if gated:
      return op(q, k, v, g, beta, scale=K ** -0.5)[0]
    return op(q, k, v, beta, scale=K ** -0.5)[0]

  def fwd():
    with torch.no_grad():
      return run()

  def fb():
    o = run()
    return torch.autograd.grad(o, (q, k, v, beta) + ((g,) if gated else ()), do)

  sync = lambda _: torch.cuda.synchronize()
  return _time(fwd, iters, sync), _time(fb, iters, sync)


def main(argv=None):
  on_cpu = jax.default_backend() == "cpu"
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default=os.environ.get("OUT", "runs/kernel_bench"))
  p.add_argument("--T", default="64,128" if on_cpu else "2048,8192,32768")
  p.add_argument("--heads", type=int, default=2 if on_cpu else 128, help="B * H")
  p.add_argument("--H", type=int, default=2 if on_cpu else 16, help="heads per sequence")
  p.add_argument("--d", type=int, default=16 if on_cpu else 128, help="K = V")
  p.add_argument("--chunk_size", type=int, default=16 if on_cpu else 64)
  p.add_argument("--variants", default="delta,gated")
  p.add_argument("--impls", default="interpret,xla_chunked" if on_cpu
                 else "pallas_gpu,xla_chunked,fla")
  p.add_argument("--iters", type=int, default=2 if on_cpu else 5)
  p.add_argument("--dtype", default="float32" if on_cpu else "bfloat16")
  p.add_argument("--tune", default="",
                 help="pallas_gpu launch settings, e.g. bwd_block_v=128,bwd_warps=8 (see TUNING)")
  p.add_argument("--tag", default="", help="suffix of the output file names")
  a = p.parse_args(argv)
  if a.tune:
    from pallas_kernels import pallas_gpu
    for kv in a.tune.split(","):
      name, val = kv.split("=")
      if name not in pallas_gpu.TUNING:
        raise SystemExit(f"--tune: unknown {name!r}; known: {sorted(pallas_gpu.TUNING)}")
      pallas_gpu.TUNING[name] = int(val)
  os.makedirs(a.out, exist_ok=True)
  dtype = jnp.dtype(a.dtype)
  H = min(a.H, a.heads)
  B = a.heads // H
  K = V = a.d
  peak = matmul_peak(a.iters)
  dev = str(jax.devices()[0].device_kind)
  print(f"device {dev}: measured bf16 matmul peak {peak:.1f} TFLOP/s", flush=True)
  rows = []
  for T in [int(t) for t in a.T.split(",")]:   # longest last: a timeout loses least
    flops = nominal_flops(B, T, H, K, V)
    for variant in a.variants.split(","):
      gated = variant == "gated"
      for impl in a.impls.split(","):
        row = dict(variant=variant, impl=impl, B=B, T=T, H=H, K=K, V=V, dtype=a.dtype,
                   tune=a.tune)
        try:
          if impl == "fla":
            t_f, t_fb = bench_fla(B, T, H, K, V, gated, a.iters)
          else:
            t_f, t_fb = bench_jax(impl, B, T, H, K, V, gated, dtype, a.iters, a.chunk_size)
          row.update(fwd_ms=t_f * 1e3, fwdbwd_ms=t_fb * 1e3,
                     fwd_tflops=flops / t_f / 1e12, fwdbwd_tflops=3 * flops / t_fb / 1e12)
          row.update(fwd_frac_peak=row["fwd_tflops"] / peak,
                     fwdbwd_frac_peak=row["fwdbwd_tflops"] / peak)
        except Exception as e:  # noqa: BLE001 — one failing impl must not lose the others
          row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
  lines = [f"device: {dev}; bf16 matmul peak {peak:.1f} TFLOP/s; B*H={a.heads}, K=V={K}, "
           f"{a.dtype}; nominal FLOPs (see kernel_bench.py)", "",
           "| variant | T | impl | fwd ms | fwd TFLOP/s | fwd %peak | fwd+bwd ms | "
           "fwd+bwd TFLOP/s | fwd+bwd %peak |", "|" + "---|" * 9]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['variant']} | {r['T']} | {r['impl']} | error: {r['error'][:80]} |"
                   " | | | | |")
      continue
    lines.append(f"| {r['variant']} | {r['T']} | {r['impl']} | {r['fwd_ms']:.2f} | "
                 f"{r['fwd_tflops']:.1f} | {100 * r['fwd_frac_peak']:.1f} | "
                 f"{r['fwdbwd_ms']:.2f} | {r['fwdbwd_tflops']:.1f} | "
                 f"{100 * r['fwdbwd_frac_peak']:.1f} |")
  table = "\n".join(lines)
  print(table)
  results.write(a.out, f"kernel_bench{a.tag}",
                dict(device=dev, matmul_peak_tflops=peak, rows=rows), table)
  return rows


if __name__ == "__main__":
  main()
