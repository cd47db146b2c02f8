"""Interleaved timing for the one-run ratio benchmarks."""
import statistics
import time

import jax


def interleaved_medians(fns, args=(), reps=5):
  """(median wall seconds, median process-CPU seconds) per jitted fn, after one warm-up call
  (compilation) each. The fns run round-robin within every repetition, so load from other
  processes on a shared CPU hits them alike; CPU seconds are given too because wall time on a
  busy machine swings by 2-3x between runs."""
  for f in fns:
    jax.block_until_ready(f(*args))
  wall, cpu = [[] for _ in fns], [[] for _ in fns]
  for _ in range(reps):
    for i, f in enumerate(fns):
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(f(*args))
      wall[i].append(time.perf_counter() - t0)
      cpu[i].append(time.process_time() - c0)
  return [statistics.median(t) for t in wall], [statistics.median(t) for t in cpu]
