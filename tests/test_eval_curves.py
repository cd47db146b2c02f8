"""Every training run dir gets eval/training_curves.png (loss, reward, held-out perplexity)."""

import os

import pytest
from flax import nnx

from refine_jax.eval import report
from refine_jax.train import loop, losses, metrics

import tiny


def test_tiny_run_writes_training_curves_png(tmp_path):
  cfg = tiny.tiny_config(steps=4, every=4)
  cfg.train.eval_every, cfg.checkpoint.async_save = 2, False
  it = tiny.SyntheticIterator(4, 8)
  evals = [next(tiny.SyntheticIterator(4, 8, seed=9))]
  loop.run_training(cfg, str(tmp_path), losses.ntp_loss, eval_batches=evals,
                    model_fn=lambda: tiny.TinyLM(rngs=nnx.Rngs(0)), train_iter=it)
  png = tmp_path / "eval" / report.TRAINING_CURVES_PNG
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and "eval_ppl" in rows[1]


def test_curve_panels_follow_the_metrics(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  seen = {}
  real = report._save
  report._save = lambda fig, path: seen.setdefault(path, [a.get_title() for a in fig.axes])
  try:
    rows = [{"step": s, "loss": 2.0 / s, "ntp_loss": 1.9 / s, "reward_mean": 0.1 * s,
             "reward_std": 0.05, **({"eval_ppl": 9.0 - s} if s % 2 == 0 else {})}
            for s in range(1, 7)]
    report.plot_training_curves(rows, os.path.join(tmp_path, "a.png"))
    report.plot_training_curves([{"step": 1, "loss": 1.0}], os.path.join(tmp_path, "b.png"))
    assert report.plot_training_curves([], os.path.join(tmp_path, "c.png")) is None
  finally:
    report._save = real
  assert seen[os.path.join(tmp_path, "a.png")] == ["loss", "reward", "held-out perplexity"]
  assert seen[os.path.join(tmp_path, "b.png")] == ["loss"]
