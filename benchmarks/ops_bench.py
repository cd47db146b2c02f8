"""xla_chunked vs xla_recurrent: jitted forward + backward wall time of the delta rule.

    python benchmarks/ops_bench.py [--T 1024,4096] [--B 1] [--H 4] [--d 64]
        [--chunk_sizes 64,16] [--gated]

Prints one row per T: median seconds of each backend (after a warm-up call, timed
round-robin), also as process CPU seconds, and the speedup of each chunk size over the
token scan.
The issue's target is chunked >= 10x faster than the token scan at T = 4096.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from benchmarks import timing


def _inputs(B, T, H, d, gated):
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  q = jax.random.normal(ks[0], (B, T, H, d))
  k = jax.random.normal(ks[1], (B, T, H, d))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  v = jax.random.normal(ks[2], (B, T, H, d))
  beta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, T, H)))
  g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, T, H)) + 3.0) if gated else None
  return q, k, v, beta, g


def _fwd_bwd(backend, chunk_size, gated):
  def loss(q, k, v, beta, g=None):
    if gated:
      o, S = pk.gated_delta_rule(q, k, v, g, beta, chunk_size=chunk_size, backend=backend)
    else:
      o, S = pk.delta_rule(q, k, v, beta, chunk_size=chunk_size, backend=backend)
    return jnp.sum(o * o) + jnp.sum(S)

  argnums = (0, 1, 2, 3, 4) if gated else (0, 1, 2, 3)
  return jax.jit(jax.value_and_grad(loss, argnums=argnums))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--T", default="1024,4096", help="comma-separated sequence lengths")
  p.add_argument("--B", type=int, default=1)
  p.add_argument("--H", type=int, default=4)
  p.add_argument("--d", type=int, default=64, help="head dim (K = V)")
  p.add_argument("--chunk_sizes", default="64,16", help="comma-separated; 64 is the default")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--gated", action="store_true")
  a = p.parse_args(argv)

  op = "gated_delta_rule" if a.gated else "delta_rule"
  chunks = [int(c) for c in a.chunk_sizes.split(",")]
  print(f"{op} fwd+bwd, jitted, median of {a.reps} (interleaved) | "
        f"device={jax.devices()[0].platform} B={a.B} H={a.H} K=V={a.d}")
  head = f"{'T':>6} {'recurrent s':>12} {'(cpu s)':>8}"
  for c in chunks:
    head += f" {f'chunked C={c} s':>16} {'(cpu s)':>8} {'speedup':>8} {'(cpu)':>6}"
  print(head)
  for T in (int(t) for t in a.T.split(",")):
    args = _inputs(a.B, T, a.H, a.d, a.gated)
    if not a.gated:
      args = args[:4]
    fns = [_fwd_bwd("xla_recurrent", 64, a.gated)] + [
        _fwd_bwd("xla_chunked", c, a.gated) for c in chunks]
    (w_rec, *w_chk), (c_rec, *c_chk) = timing.interleaved_medians(fns, args, a.reps)
    row = f"{T:>6} {w_rec:>12.4f} {c_rec:>8.3f}"
    for w, c in zip(w_chk, c_chk):
      row += f" {w:>16.4f} {c:>8.3f} {w_rec / w:>7.1f}x {c_rec / c:>5.1f}x"
    print(row, flush=True)

if __name__ == "__main__":
  main()
