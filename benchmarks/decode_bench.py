"""Decode step of the (gated) delta rule: fused Pallas kernel vs the XLA einsum path (vs FLA).

    python benchmarks/decode_bench.py [--out DIR] [--rows 128,256,512,1024] [--T 1,5]
                                      [--impls pallas,xla,fla] [--variants delta,gated]
    python benchmarks/decode_bench.py --small        # CPU smoke run (interpreters), seconds

Forward only, bf16 q/k/v/beta/g, float32 state [rows, K, V] (rows = B*H, H = 16), K = V = 128.
T = 1 is one decode step; T = 5 one call continuing 5 tokens (the state stays on chip).
Each timed call runs `--steps` calls in a jitted lax.scan that carries the state (as a
rollout does; optimization_barrier keeps steps from fusing), so host dispatch is amortised;
the time reported is per call. The step is memory bound, so the figure of merit is state
GB/s = (state bytes read + written) / time, and %copy = that over the GB/s of a plain
`state + 1` on the same array in the same scan (the achievable copy bandwidth).
vs_xla = XLA time / impl time, measured in the same run. FLA's fused_recurrent_* (torch,
if importable) runs `--steps` calls in a CUDA graph (or a plain loop if capture fails).
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from pallas_kernels import fused_recurrent as fr  # noqa: E402
from pallas_kernels import ops, reference  # noqa: E402


def _time(fn, iters):
  jax.block_until_ready(fn())   # compile + warm-up
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def _inputs(B, T, H, K, V, gated, dtype, key):
  ks = jax.random.split(key, 6)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q = unit(jax.random.normal(ks[0], (B, T, H, K))).astype(dtype)
  k = unit(jax.random.normal(ks[1], (B, T, H, K))).astype(dtype)
  v = jax.random.normal(ks[2], (B, T, H, V)).astype(dtype)
  beta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, T, H))).astype(dtype)
  g = (jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, T, H)) + 4.0).astype(dtype)
       if gated else None)
  S = jax.random.normal(ks[5], (B, H, K, V), jnp.float32) * 0.1
  return q, k, v, beta, g, S


def _scan_timer(step, S, xs, steps, iters):
  """Per-call seconds of `step(S, xs) -> (S, out)` run `steps` times in one jitted scan that
  stacks the (small) outputs, so none is dead code; S is donated."""
  def many(S, xs):
    def body(S, _):
      return jax.lax.optimization_barrier(step(S, xs))
    return jax.lax.scan(body, S, None, length=steps)

  f = jax.jit(many, donate_argnums=0)
  box = [S.copy()]

  def run():
    box[0], ys = f(box[0], xs)
    return box[0], ys
  return _time(run, iters) / steps


def bench_jax(backend, q, k, v, beta, g, S, steps, iters):
  """backend "xla": the XLA token recurrence (what the models run off GPU/TPU); a Pallas
  backend name: the fused kernel for any T (the models take it for T == 1)."""
  def step(S, xs):
    q, k, v, beta, g = xs
    if backend == "xla":
      o, S = reference.recurrent(q, k, v, beta, g, initial_state=S)
    else:
      target, interpret = ops._PALLAS[backend]
      o, S = fr.fused_recurrent(q, k, v, beta, g, S, scale=q.shape[-1] ** -0.5,
                                target=target, interpret=interpret)
    return S, o
  return _scan_timer(step, S, (q, k, v, beta, g), steps, iters)


def bench_copy(S, steps, iters):
  return _scan_timer(lambda S, _: (S + 1.0, None), S, (), steps, iters)


def bench_fla(B, T, H, K, V, gated, steps, iters):
  import torch
  if gated:
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as op
  else:
    from fla.ops.delta_rule import fused_recurrent_delta_rule as op
  dev, dt = "cuda", torch.bfloat16
  torch.manual_seed(0)
  unit = lambda x: torch.nn.functional.normalize(x, dim=-1)
  q = unit(torch.randn(B, T, H, K, device=dev)).to(dt)
  k = unit(torch.randn(B, T, H, K, device=dev)).to(dt)
  v = torch.randn(B, T, H, V, device=dev, dtype=dt)
  beta = torch.randn(B, T, H, device=dev).sigmoid().to(dt)
  g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev) + 4).to(dt)
  S0 = torch.randn(B, H, K, V, device=dev, dtype=torch.float32) * 0.1

  def many():
    S = S0
    for _ in range(steps):
      kw = dict(g=g) if gated else {}
      _, S = op(q, k, v, beta=beta, scale=K ** -0.5, initial_state=S,
                output_final_state=True, **kw)
    return S

  with torch.no_grad():
    many()
    torch.cuda.synchronize()
    mode = "loop"
    run = many
    try:   # a CUDA graph removes the per-launch host overhead, as the JAX scan does
      graph = torch.cuda.CUDAGraph()
      with torch.cuda.graph(graph):
        many()
      run, mode = graph.replay, "cuda_graph"
    except Exception:  # noqa: BLE001
      pass
    run()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
      t0 = time.perf_counter()
      run()
      torch.cuda.synchronize()
      ts.append(time.perf_counter() - t0)
  return float(np.median(ts)) / steps, mode


def main(argv=None):
  on_cpu = jax.default_backend() == "cpu"
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default=os.environ.get("OUT", "runs/decode_bench"))
  p.add_argument("--small", action="store_true", help="tiny CPU smoke run (interpreters)")
  p.add_argument("--rows", default=None, help="B*H values, e.g. 128,256,512,1024")
  p.add_argument("--H", type=int, default=16, help="heads per sequence")
  p.add_argument("--d", type=int, default=None, help="K = V")
  p.add_argument("--T", default="1,5")
  p.add_argument("--variants", default="delta,gated")
  p.add_argument("--impls", default=None, help="pallas (this platform's kernel), xla, fla, "
                 "or any fused_recurrent backend name")
  p.add_argument("--steps", type=int, default=None, help="calls per timed scan")
  p.add_argument("--iters", type=int, default=None)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--tune", default="", help="fused_recurrent.TUNING, e.g. gpu_block_v=16")
  p.add_argument("--tag", default="", help="suffix of the output file names")
  a = p.parse_args(argv)
  small = a.small or on_cpu
  rows_s = a.rows or ("4" if small else "128,256,512,1024")
  d = a.d or (16 if small else 128)
  impls = (a.impls or ("interpret_gpu,xla" if small else "pallas,xla,fla")).split(",")
  steps = a.steps or (2 if small else 50)
  iters = a.iters or (1 if small else 10)
  H = 2 if small else a.H
  for kv in filter(None, a.tune.split(",")):
    name, val = kv.split("=")
    if name not in fr.TUNING:
      raise SystemExit(f"--tune: unknown {name!r}; known: {sorted(fr.TUNING)}")
    fr.TUNING[name] = int(val)
  pallas = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(
      "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else jax.default_backend())
  os.makedirs(a.out, exist_ok=True)
  dtype = jnp.dtype(a.dtype)
  K = V = d
  dev = str(jax.devices()[0].device_kind)
  print(f"device {dev}; K=V={K}, {a.dtype} inputs, f32 state, {steps} calls per scan",
        flush=True)
  rows = []
  for R in [int(r) for r in rows_s.split(",")]:
    Hs = min(H, R)
    B = R // Hs
    state_bytes = 2 * B * Hs * K * V * 4   # read + written once per call
    _, _, _, _, _, S = _inputs(B, 1, Hs, K, V, False, dtype, jax.random.PRNGKey(0))
    t_copy = bench_copy(S, steps, iters)
    copy_gbs = state_bytes / t_copy / 1e9
    print(json.dumps(dict(rows=R, copy_us=t_copy * 1e6, copy_gbs=copy_gbs)), flush=True)
    for T in [int(t) for t in a.T.split(",")]:
      for variant in a.variants.split(","):
        gated = variant == "gated"
        xs = _inputs(B, T, Hs, K, V, gated, dtype, jax.random.PRNGKey(1))
        t_xla = None
        for impl in impls:
          row = dict(variant=variant, T=T, rows=R, B=B, H=Hs, K=K, V=V, impl=impl,
                     dtype=a.dtype, copy_gbs=copy_gbs, tune=a.tune)
          try:
            if impl == "fla":
              t, row["fla_timing"] = bench_fla(B, T, Hs, K, V, gated, steps, iters)
            else:
              backend = pallas if impl == "pallas" else impl
              if backend is None:
                raise RuntimeError("impl 'pallas' needs a GPU or TPU")
              row["backend"] = backend
              t = bench_jax(backend, *xs, steps, iters)
            if impl == "xla":
              t_xla = t
            row.update(us=t * 1e6, gbs=state_bytes / t / 1e9)
            row["frac_copy"] = row["gbs"] / copy_gbs
          except Exception as e:  # noqa: BLE001 — one failing impl must not lose the others
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
          rows.append(row)
          print(json.dumps(row), flush=True)
        for r in rows:   # speedups against the XLA path of the same case
          if (r["variant"], r["T"], r["rows"]) == (variant, T, R) and t_xla and "us" in r:
            r["vs_xla"] = t_xla * 1e6 / r["us"]
  lines = [f"device: {dev}; K=V={K}, {a.dtype} inputs, f32 state; time per call (T tokens) "
           f"from a scan of {steps} calls; GB/s = state bytes read+written / time; "
           "%copy = GB/s over `state + 1` on the same array; vs_xla = XLA time / time", "",
           "| variant | T | B*H | impl | us/call | state GB/s | %copy | vs_xla |",
           "|" + "---|" * 8]
  for r in rows:
    head = f"| {r['variant']} | {r['T']} | {r['rows']} | {r['impl']} |"
    if "error" in r:
      lines.append(f"{head} error: {r['error'][:80]} | | | |")
      continue
    vs = f"{r['vs_xla']:.2f}x" if "vs_xla" in r else ""
    lines.append(f"{head} {r['us']:.1f} | {r['gbs']:.3g} | {100 * r['frac_copy']:.0f} | "
                 f"{vs} |")
  table = "\n".join(lines)
  print(table)
  results.write(a.out, f"decode_bench{a.tag}", dict(device=dev, steps=steps, rows=rows), table)
  return rows


if __name__ == "__main__":
  main()
