"""Every training run dir gets eval/training_curves.png: the curves that move (NTP loss; for
ReFINE runs reward, clip fraction, RL gradient share and next-sequence match), a metric
logged once as a number."""

import os

import pytest
from flax import nnx

from refine_jax.eval import curves
from refine_jax.train import loop, losses, metrics, update

import tiny


def test_tiny_run_writes_training_curves_png(tmp_path):
  cfg = tiny.tiny_config(steps=4, every=4)
  cfg.train.eval_every, cfg.checkpoint.async_save = 2, False
  it = tiny.SyntheticIterator(4, 8)
  evals = [next(tiny.SyntheticIterator(4, 8, seed=9))]
  loop.run_training(cfg, str(tmp_path), update.loss_spec(losses.ntp_loss), eval_batches=evals,
                    model_fn=lambda: tiny.TinyLM(rngs=nnx.Rngs(0)), train_iter=it)
  png = tmp_path / "eval" / curves.TRAINING_CURVES_PNG
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and "eval_ppl" in rows[1]


def test_curve_panels_follow_the_metrics(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  seen = {}

  def capture(fig, path):
    seen[path] = [(a.get_title(), a.axison, [t.get_text() for t in a.texts],
                   [l.get_label() for l in a.get_lines()]) for a in fig.axes]
  real = curves.save_png
  curves.save_png = capture
  try:
    refine = [{"step": s, "loss": 1.9 / s + 1e-8, "ntp_loss": 1.9 / s, "reward_mean": 0.1 * s,
               "reward_std": 0.05, "clip_frac": 0.0, "grad_share": 0.2 + 0.01 * s,
               **({"eval_ppl": 9.0} if s == 6 else {})} for s in range(1, 7)]
    curves.plot_training_curves(refine, os.path.join(tmp_path, "a.png"),
                                summary={"next_sequence_match_before": 0.25,
                                         "next_sequence_match": 0.5})
    ntp = [{"step": s, "loss": 2.0 / s, "ntp_loss": 2.0 / s, "eval_ppl": 9.0 - s}
           for s in range(1, 4)]
    curves.plot_training_curves(ntp, os.path.join(tmp_path, "b.png"))
    assert curves.plot_training_curves([], os.path.join(tmp_path, "c.png")) is None
  finally:
    curves.save_png = real
  a = seen[os.path.join(tmp_path, "a.png")]
  # ReFINE: NTP loss alone (loss ~ ntp_loss is not drawn over it), reward, clip fraction, RL
  # gradient share; a constant (clip_frac 0 at one update per batch), perplexity logged once
  # and next-sequence match are numbers, not axes.
  assert [p[0] for p in a] == [
      "NTP loss", "rollout reward (mean ± std over rollouts)", "PPO clip fraction",
      "RL share of the gradient |g_RL| / (|g_RL| + |g_NTP|)", "held-out perplexity",
      "greedy next-sequence match"]
  assert a[0][3] == ["ntp_loss"]
  assert [p[1] for p in a] == [True, True, False, True, False, False]
  assert a[2][2] == ["0", "clip_frac at every step (1-6)"]
  assert a[4][2] == ["9", "eval_ppl at step 6"]
  assert a[5][2] == ["0.25", "before ReFINE", "0.5", "after ReFINE"]
  b = seen[os.path.join(tmp_path, "b.png")]
  assert [(p[0], p[1]) for p in b] == [("training loss (NTP)", True),
                                       ("held-out perplexity", True)]
