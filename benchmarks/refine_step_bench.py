"""ReFINE step cost, one run on this machine (CPU by default).

  python benchmarks/refine_step_bench.py [--arch deltanet --hidden 256 --layers 4 ...]

1. ReFINE step (forward+backward of the fused loss: NTP + GRPO with c=8, k=5, n=1 rollouts)
   vs a plain NTP step, same model / batch / T=2048. Target: <= 1.3x.
2. Rollout generation at T=4096: cached per-layer states cut out of the one forward pass
   (model.cache_at + lax.scan decoder) vs re-running every selected prefix from token 0 (what
   the PyTorch reference does), same positions and key. Target: >= 5x. Printed both for the
   rollout phase alone and including the shared full forward pass.
Times are medians of --repeats runs after a warm-up (compilation excluded).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refine_jax.models import LMOutput, build_model# noqa: E402
from refine_jax.refine import rollout, selection, step  # noqa: E402
from refine_jax.config import default_model_config, default_refine_config


def _cpu_s():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def median_time(fn, repeats):
  """(wall, cpu) seconds, medians over `repeats` runs after one warm-up. Process CPU time
  (all threads) is the steadier figure on a shared machine; wall time is what a user sees."""
  jax.block_until_ready(fn())  # warm-up / compile
  walls, cpus = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), _cpu_s()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - t0)
    cpus.append(_cpu_s() - c0)
  return float(np.median(walls)), float(np.median(cpus))


def _line(name, t):
  return f"  {name:<42s} wall {t[0] * 1e3:9.1f} ms   cpu {t[1] * 1e3:9.1f} ms"


def _ratio(a, b):
  return f"wall {a[0] / b[0]:.2f}x, cpu {a[1] / b[1]:.2f}x"


def make_model(args):
  cfg = default_model_config()
  cfg.arch, cfg.vocab_size, cfg.hidden = args.arch, args.vocab, args.hidden
  cfg.layers, cfg.heads, cfg.chunk_size = args.layers, args.heads, args.chunk
  return build_model(cfg, rngs=nnx.Rngs(0))


def bench_step(model, args):
  rc = default_refine_config()
  B, T = args.batch, args.seq
  x = np.random.default_rng(0).integers(0, args.vocab, (B, T + 1)).astype(np.int32)
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((B, T), np.float32)}
  graphdef, params = nnx.split(model)

  def ntp(m, b, r):
    del r
    return step.ntp_loss(m(jnp.asarray(b["inputs"])).logits, b["targets"], b["loss_mask"]), {}

  def grad_fn(loss_fn):
    return jax.jit(lambda p, b, r: jax.grad(
        lambda q: loss_fn(nnx.merge(graphdef, q), b, r)[0])(p))

  g_ntp, g_ref = grad_fn(ntp), grad_fn(step.make_loss_fn(rc))
  rng = jax.random.key(0)
  t_ntp = median_time(lambda: g_ntp(params, batch, rng), args.repeats)
  t_ref = median_time(lambda: g_ref(params, batch, rng), args.repeats)
  print(f"[step] B={B} T={T} c={rc.num_chunks} k={rc.rollout_len} n={rc.rollouts_per_position}")
  print(_line("NTP step (fwd+bwd)", t_ntp))
  print(_line("ReFINE step (fwd+bwd)", t_ref))
  print(f"  ratio ReFINE / NTP: {_ratio(t_ref, t_ntp)}   (target <= 1.3x)")


def bench_rollouts(model, args):
  rc = default_refine_config()
  B, T, k, n = args.batch, args.rollout_seq, rc.rollout_len, rc.rollouts_per_position
  x = jnp.asarray(np.random.default_rng(1).integers(0, args.vocab, (B, T)).astype(np.int32))
  graphdef, params = nnx.split(model)
  rng = jax.random.key(1)
  kw = dict(n=n, length=k, max_len=T + k, temperature=rc.temperature)

  # Positions from the real selection on the model's entropy (same for both paths).
  logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x).logits)(params, x)
  pos, _, _ = selection.select_positions(
      rng, selection.token_entropy(logits), num_chunks=rc.num_chunks, rollout_len=k,
      margin=rc.margin)
  del logits

  @jax.jit
  def forward(p, x):
    out = nnx.merge(graphdef, p)(x, capture=True)
    return out.logits, out.captured

  @jax.jit
  def cached(p, logits, captured, pos, r):
    m = nnx.merge(graphdef, p)
    out = LMOutput(logits=logits, hidden_states=None, cache=None, captured=captured)
    return rollout.rollouts_from_capture(m, out, pos, r, **kw)[0]

  @jax.jit
  def cached_total(p, x, pos, r):
    m = nnx.merge(graphdef, p)
    return rollout.rollouts_from_capture(m, m(x, capture=True), pos, r, **kw)[0]

  @jax.jit
  def forward_plain(p, x):
    return nnx.merge(graphdef, p)(x).logits

  logits, captured = forward(params, x)
  t_cached = median_time(lambda: cached(params, logits, captured, pos, rng), args.repeats)
  t_cached_total = median_time(lambda: cached_total(params, x, pos, rng), args.repeats)
  t_fwd = median_time(lambda: forward_plain(params, x), args.repeats)
  t_re = median_time(lambda: rollout.rollout_reprefill(model, x, pos, rng, **kw),
                     max(1, args.repeats // 2))
  same = np.array_equal(np.asarray(cached(params, logits, captured, pos, rng).tokens_Gk),
                        np.asarray(rollout.rollout_reprefill(model, x, pos, rng, **kw).tokens_Gk))
  print(f"[rollouts] B={B} T={T} c={rc.num_chunks} k={k} n={n} "
        f"(positions {np.asarray(pos).tolist()})")
  fwd_re = (t_fwd[0] + t_re[0], t_fwd[1] + t_re[1])
  print(_line("cached states (cache_at + scan decode)", t_cached))
  print(_line("re-prefill every prefix + scan decode", t_re))
  print(f"  ratio re-prefill / cached: {_ratio(t_re, t_cached)}   (target >= 5x)")
  print(_line("full forward (capture) + cached rollouts", t_cached_total))
  print(_line("full forward + re-prefill rollouts", fwd_re))
  print(f"  ratio incl. the shared forward: {_ratio(fwd_re, t_cached_total)}")
  print(f"  same tokens from both paths: {same}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--arch", default="deltanet")
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--vocab", type=int, default=259)
  ap.add_argument("--chunk", type=int, default=64)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--seq", type=int, default=2048)
  ap.add_argument("--rollout_seq", type=int, default=4096)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--skip_step", action="store_true")
  ap.add_argument("--skip_rollouts", action="store_true")
  args = ap.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
        f"model {args.arch} hidden={args.hidden} layers={args.layers} heads={args.heads} "
        f"vocab={args.vocab} chunk={args.chunk}")
  model = make_model(args)
  if not args.skip_step:
    bench_step(model, args)
  if not args.skip_rollouts:
    bench_rollouts(model, args)


if __name__ == "__main__":
  main()
