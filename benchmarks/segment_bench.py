"""Cost of packed-document support (segment_ids) in the XLA chunked delta rule, one run.

    python benchmarks/segment_bench.py [--small] [--B 2] [--T 2048] [--H 4] [--d 64]
        [--chunk_size 64] [--reps 11] [--out DIR]

Times jitted forward + backward (value_and_grad w.r.t. q, k, v, beta, g, initial_state) of
backend="xla_chunked" on the same inputs with segment_ids (documents of random lengths,
trailing padding) and without, plain DeltaNet and gated. Prints median wall and process-CPU
seconds (after a warm-up call, timed round-robin so load from other processes hits both
alike) and the ratio with / without. `--small` is a quick run (T = 256, one head).
The interpreted Pallas kernels are not timed (the interpreter's speed says nothing about
the device kernels).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pallas_kernels as pk  # noqa: E402
from benchmarks import results, timing  # noqa: E402


def _inputs(B, T, H, d, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  x = dict(q=unit(r(B, T, H, d)), k=unit(r(B, T, H, d)), v=r(B, T, H, d),
           beta=jax.nn.sigmoid(r(B, T, H)), g=-jax.nn.softplus(r(B, T, H) - 2.0),
           s0=0.1 * r(B, H, d, d))
  # Documents of random lengths (mean ~T/8), the last few tokens padding (id 0).
  seg = np.zeros((B, T), np.int32)
  for b in range(B):
    t, i = 0, 1
    while t < T - 8:
      n = int(rng.integers(1, T // 4))
      seg[b, t:min(t + n, T - 8)] = i
      t, i = t + n, i + 1
  return x, jnp.asarray(seg)


def _fwd_bwd(gated, chunk_size, with_segments):
  def loss(x, seg):
    kw = dict(segment_ids=seg) if with_segments else {}
    o, S, _ = pk.delta_rule_scan(x["q"], x["k"], x["v"], x["beta"], x["g"] if gated else None,
                                 initial_state=x["s0"], chunk_size=chunk_size,
                                 backend="xla_chunked", **kw)
    return jnp.sum(o * o) + jnp.sum(S)
  return jax.jit(jax.value_and_grad(loss))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--small", action="store_true", help="quick run: T=256, H=1, 20 repetitions")
  p.add_argument("--B", type=int, default=2)
  p.add_argument("--T", type=int, default=2048)
  p.add_argument("--H", type=int, default=4)
  p.add_argument("--d", type=int, default=64, help="K = V")
  p.add_argument("--chunk_size", type=int, default=64)
  p.add_argument("--reps", type=int, default=11)
  p.add_argument("--out", default="", help="folder for segment_bench.{json,md}")
  a = p.parse_args(argv)
  if a.small:
    a.T, a.H, a.reps = 256, 1, 20
  x, seg = _inputs(a.B, a.T, a.H, a.d)
  docs = int(sum(len(np.unique(np.asarray(s))) for s in seg))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; B={a.B} T={a.T} H={a.H} "
        f"K=V={a.d} C={a.chunk_size}; {docs} documents (incl. padding); "
        f"median of {a.reps}", flush=True)
  lines = ["| variant | without s | with segment_ids s | ratio (wall) | ratio (CPU) |",
           "|---|---|---|---|---|"]
  rows = []
  for gated in (False, True):
    fns = [_fwd_bwd(gated, a.chunk_size, False), _fwd_bwd(gated, a.chunk_size, True)]
    wall, cpu = timing.interleaved_medians(fns, (x, seg), a.reps)
    name = "gated" if gated else "plain"
    rows.append(dict(variant=name, wall_s=wall, cpu_s=cpu, ratio_wall=wall[1] / wall[0],
                     ratio_cpu=cpu[1] / cpu[0]))
    lines.append(f"| {name} fwd+bwd | {wall[0]:.4f} | {wall[1]:.4f} | "
                 f"{wall[1] / wall[0]:.3f} | {cpu[1] / cpu[0]:.3f} |")
    print(lines[-1], flush=True)
  table = "\n".join(lines)
  print("\n" + table)
  if a.out:
    results.write(a.out, "segment_bench", dict(args=vars(a), rows=rows), table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
