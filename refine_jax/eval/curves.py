"""<run dir>/eval/training_curves.png: the curves that move in a run, from metrics.jsonl.

Every training stage writes it at its end (train/loop.py); midtrain rewrites it once its
midtrain_summary.json holds the greedy next-sequence match before / after ReFINE.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from refine_jax import paths as path_io
from refine_jax.eval.report import number_card, pyplot, save_png

TRAINING_CURVES_PNG = "training_curves.png"


def _panels(rows: Sequence[Mapping], summary: Mapping | None):
  """[(title, [(metric key, label)])] of what moves in this run: ReFINE runs (reward logged)
  plot the NTP loss alone (their `loss` adds lambda_rl * rl_loss, ~0 at ppo_epochs=1 where
  GRPO's ratio is exactly 1), the rollout reward, PPO's clip fraction and the RL terms' share
  of the gradient; NTP runs plot their loss. Held-out perplexity when evaluated."""
  has = lambda k: any(isinstance(r.get(k), (int, float)) for r in rows)
  if not has("reward_mean"):
    panels = [("training loss (NTP)", [("loss", "loss")])]
  else:
    panels = [("NTP loss", [("ntp_loss", "ntp_loss")]),
              ("rollout reward (mean ± std over rollouts)", [("reward_mean", "reward_mean")])]
    if has("clip_frac"):
      panels.append(("PPO clip fraction", [("clip_frac", "clip_frac")]))
    if has("grad_share"):
      panels.append(("RL share of the gradient |g_RL| / (|g_RL| + |g_NTP|)",
                     [("grad_share", "grad_share")]))
  if has("eval_ppl"):
    panels.append(("held-out perplexity", [("eval_ppl", "eval_ppl")]))
  if summary and "next_sequence_match" in summary:
    panels.append(("greedy next-sequence match", []))
  return panels


def plot_training_curves(rows: Sequence[Mapping], path: str, title: str = "training",
                         summary: Mapping | None = None) -> str | None:
  """The curves that move in a run (_panels) vs step from metrics.jsonl rows; a metric logged
  once is a number, not an axis. summary: midtrain_summary.json, whose greedy next-sequence
  match before / after ReFINE becomes a panel. None when there is nothing to plot."""
  rows = [r for r in rows if "step" in r]
  if not rows:
    return None
  plt = pyplot()

  def series(key):
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]

  panels = _panels(rows, summary)
  cols = min(3, len(panels))
  nrows = -(-len(panels) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.3 * nrows), squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.remove()
  for ax, (name, keys) in zip(axes.flat, panels):
    if not keys:  # next-sequence match: before / after ReFINE
      before = summary.get("next_sequence_match_before")
      items = ([("before ReFINE", float(before))] if isinstance(before, (int, float)) else [])
      number_card(ax, name, items + [("after ReFINE", float(summary["next_sequence_match"]))])
      continue
    key, label = keys[0]
    xs, ys = series(key)
    if len(xs) == 1:
      number_card(ax, name, [(f"{label} at step {xs[0]}", ys[0])])
      continue
    if len(set(ys)) == 1:  # e.g. clip_frac 0 when each batch makes one (on-policy) update
      number_card(ax, name, [(f"{label} at every step ({xs[0]}-{xs[-1]})", ys[0])])
      continue
    ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, ms=3, label=label)
    if key == "reward_mean":
      _, sd = series("reward_std")
      if len(sd) == len(ys):
        ax.fill_between(xs, np.subtract(ys, sd), np.add(ys, sd), alpha=0.2, label="± std")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return path


def write_training_curves(workdir: str) -> str | None:
  """<workdir>/eval/training_curves.png from <workdir>/metrics.jsonl (local or gs://), with
  <workdir>/midtrain_summary.json's next-sequence match when there is one."""
  rows = path_io.read_jsonl(path_io.join(workdir, "metrics.jsonl"))
  summary_path = path_io.join(workdir, "midtrain_summary.json")
  summary = json.loads(path_io.read_text(summary_path)) if path_io.exists(summary_path) else None
  out = path_io.join(workdir, "eval")
  path_io.makedirs(out)
  name = "/".join(path_io.norm(workdir).rstrip("/").split("/")[-3:])  # e.g. arm/seed0/stage0
  return plot_training_curves(rows, path_io.join(out, TRAINING_CURVES_PNG), title=name,
                              summary=summary)
