"""Cost of document resets (segment_ids) on an NTP training step, one run on this machine.

  python benchmarks/reset_bench.py [--small] [--archs deltanet,lact] [--out DIR]

value_and_grad of the next-token loss of an LM (default hidden 256, 4 layers, T=1024, B=4)
on the same packed rows, with segment_ids (every mixer resets at each document start) vs
without (documents run into each other). Prints the step times (medians of --repeats runs after
a warm-up, the two alternating; compilation excluded) and their ratio. `--small` is a quick
run. LaCT's packed path runs three fast-weight applies per chunk instead of one
(models/fast_weights.fw_scan_docs).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results, timing  # noqa: E402
from refine_jax.models import build_model# noqa: E402
from refine_jax.config import default_model_config


def packed_batch(B, T, vocab, mean_doc, seed=0):
  """Rows of documents with random lengths (~exponential, mean `mean_doc`), as the data
  pipeline makes them: inputs, targets, loss_mask (0 across a boundary), segment_ids."""
  rng = np.random.default_rng(seed)
  x = rng.integers(1, vocab, (B, T + 1)).astype(np.int32)
  seg = np.zeros((B, T + 1), np.int32)
  for b in range(B):
    s, i = 0, 1
    while s < T + 1:
      n = max(2, int(rng.exponential(mean_doc)))
      seg[b, s:s + n] = i
      s, i = s + n, i + 1
  return dict(inputs=x[:, :-1], targets=x[:, 1:], segment_ids=seg[:, :-1],
              loss_mask=(seg[:, 1:] == seg[:, :-1]).astype(np.float32))


def ntp_loss(model, batch, segment_ids):
  logits = model(batch["inputs"], segment_ids=segment_ids).logits
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
  m = batch["loss_mask"]
  return -jnp.sum(logp * m) / jnp.maximum(jnp.sum(m), 1.0)


def bench_arch(arch, args):
  cfg = default_model_config()
  cfg.arch, cfg.vocab_size, cfg.hidden = arch, args.vocab, args.hidden
  cfg.layers, cfg.heads, cfg.chunk_size = args.layers, args.heads, args.chunk
  cfg.dtype = "float32"
  if arch == "lact":
    cfg.lact.chunk, cfg.lact.window = args.lact_chunk, args.lact_chunk
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  batch = {k: jnp.asarray(v) for k, v in
           packed_batch(args.batch, args.seq, args.vocab, args.mean_doc).items()}

  def step(with_segments):
    def loss(p, b):
      return ntp_loss(nnx.merge(graphdef, p), b, b["segment_ids"] if with_segments else None)
    f = jax.jit(jax.value_and_grad(loss))
    return lambda: f(params, batch)

  walls, cpus = timing.interleaved_medians([step(False), step(True)], (), args.repeats)
  base, seg = zip(walls, cpus)
  docs = int(np.sum(np.asarray(batch["segment_ids"])[:, 1:] != np.asarray(batch["segment_ids"])[:, :-1])
             + args.batch)
  return dict(arch=arch, docs=docs, none_wall_s=base[0], none_cpu_s=base[1],
              seg_wall_s=seg[0], seg_cpu_s=seg[1],
              ratio_wall=seg[0] / base[0], ratio_cpu=seg[1] / base[1])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--small", action="store_true", help="quick run: hidden 64, 2 layers, T=256")
  ap.add_argument("--archs", default="deltanet,lact")
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--vocab", type=int, default=512)
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--chunk", type=int, default=64, help="DeltaNet chunk_size")
  ap.add_argument("--lact-chunk", type=int, default=256, help="LaCT chunk = window")
  ap.add_argument("--mean-doc", type=float, default=300.0, help="mean document length")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default=None, help="also write <out>/reset_bench.{json,md}")
  args = ap.parse_args(argv)
  if args.small:
    args.hidden, args.layers, args.heads, args.seq, args.batch = 64, 2, 2, 256, 2
    args.lact_chunk, args.mean_doc, args.repeats = 64, 80.0, 7
  rows = [bench_arch(a, args) for a in args.archs.split(",") if a]
  lines = [f"NTP step (value_and_grad), hidden {args.hidden}, {args.layers} layers, "
           f"T={args.seq}, B={args.batch}, {jax.default_backend()}; medians of {args.repeats}",
           "| arch | documents | no segment_ids (ms) | segment_ids (ms) | ratio wall | ratio cpu |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['arch']} | {r['docs']} | {r['none_wall_s'] * 1e3:.1f} | "
                 f"{r['seg_wall_s'] * 1e3:.1f} | {r['ratio_wall']:.2f}x | {r['ratio_cpu']:.2f}x |")
  table = "\n".join(lines)
  print(table)
  if args.out:
    results.write(args.out, "reset_bench", dict(args=vars(args), rows=rows), table)


if __name__ == "__main__":
  main()
