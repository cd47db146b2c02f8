"""Eval reports: results.json, markdown tables, PNG plots, and mean ± std over seeds.

A `results` dict is {task: {context_len: score}}. In results.json the context lengths are
JSON object keys, i.e. strings; `load_results` turns them back into ints.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

from refine_jax import paths as path_io

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SCORES_PNG = "scores.png"
PERPLEXITY_PNG = "perplexity.png"
NLL_PNG = "nll.png"
NLL_TASKS = ("recall_nll", "recall_value_nll")
LOWER_IS_BETTER = ("perplexity",) + NLL_TASKS
_MARKERS = "osD^v<>ph*"


def lengths_of(results: Mapping) -> list[int]:
  return sorted({int(n) for row in results.values() for n in row})


def _digits(task: str) -> int:
  if task in NLL_TASKS:
    return 3  # nats per token
  return 2 if task in LOWER_IS_BETTER else 1  # perplexity moves in the second decimal


def _ylabel(task: str) -> str:
  if task in NLL_TASKS:
    return "NLL (nats/token)"
  return "perplexity" if task == "perplexity" else "score (%)"


def _y_range(ax, values, lower_is_better: bool):
  """Scores on 0..100; losses from 0 up: the axis never zooms into seed noise."""
  if not lower_is_better:
    ax.set_ylim(-3, 103)
    return
  top = max([float(v) for v in values if v is not None and math.isfinite(float(v))] or [1.0])
  ax.set_ylim(0, top * 1.15)


def _length_axis(ax, lengths):
  """log2 x axis with every context length labelled."""
  ax.set_xscale("log", base=2)
  ax.set_xticks(lengths)
  ax.set_xticklabels([str(n) for n in lengths])
  ax.minorticks_off()


def _fmt(x: float, digits: int = 1) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def average(row: Mapping) -> float:
  vals = [float(v) for v in row.values()]
  return float(np.mean(vals)) if vals else float("nan")


TF_NOTE = ("<task>_tf: teacher-forced accuracy, the percent of answer tokens the model's "
           "argmax gets right given the prompt and the true answer so far")


def _label(task: str) -> str:
  return f"{task} (teacher-forced)" if task.endswith("_tf") else task


def markdown_table(results: Mapping, title: str | None = None) -> str:
  """Tasks as rows, context lengths as columns, plus the row average (and what _tf means when
  such rows are there)."""
  lengths = lengths_of(results)
  lines = [f"### {title}", ""] if title else []
  lines.append("| task | " + " | ".join(str(n) for n in lengths) + " | avg |")
  lines.append("|---" * (len(lengths) + 2) + "|")
  for task, row in results.items():
    row = {int(k): v for k, v in row.items()}
    d = _digits(task)
    cells = [_fmt(row.get(n, float("nan")), d) for n in lengths]
    lines.append(f"| {task} | " + " | ".join(cells) + f" | {_fmt(average(row), d)} |")
  if any(t.endswith("_tf") for t in results):
    lines += ["", f"{TF_NOTE}."]
  return "\n".join(lines) + "\n"


def pyplot():
  """matplotlib.pyplot on the Agg backend, imported on first plot: importing report must
  neither pay matplotlib's import nor switch the backend of a notebook that imports it."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _plot(series: Mapping[str, Mapping], path: str, ylabel: str, title: str,
          errors: Mapping[str, Mapping] | None = None):
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  if len({int(k) for row in series.values() for k in row}) == 1:  # one length: numbers
    number_card(ax, title, [(f"{_label(name)} at {int(k)} tokens", float(v))
                            for name, row in series.items() for k, v in row.items()])
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return
  all_x, all_y = set(), []
  for j, (name, row) in enumerate(series.items()):
    xs = sorted(int(k) for k in row)
    ys = [float(row[x] if x in row else row[str(x)]) for x in xs]
    all_x.update(xs)
    all_y += ys
    # Lines that coincide (e.g. every task at 0) stay visible: own marker, small x offset.
    shift = 2.0 ** (0.04 * (j - (len(series) - 1) / 2))
    style = dict(marker=_MARKERS[j % len(_MARKERS)], label=_label(name), alpha=0.85)
    if errors is not None and name in errors:
      err = errors[name]
      es = [float(err[x] if x in err else err[str(x)]) for x in xs]
      ax.errorbar([x * shift for x in xs], ys, yerr=es, capsize=3, **style)
    else:
      ax.plot([x * shift for x in xs], ys, **style)
  _y_range(ax, all_y, not ylabel.startswith("score"))
  _length_axis(ax, sorted(all_x))
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if any(name.endswith("_tf") for name in series):
    fig.text(0.01, 0.005, TF_NOTE, fontsize=6, color="gray")
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  save_png(fig, path)
  plt.close(fig)


def number_card(ax, title: str, items: Sequence[tuple[str, float]]):
  """A panel showing one value per line instead of an axis with a single point."""
  ax.axis("off")
  ax.set_title(title, fontsize=10)
  step = 0.8 / max(len(items), 1)
  for i, (label, v) in enumerate(items):
    y = 0.9 - step * (i + 0.5)
    ax.text(0.5, y + 0.06, f"{v:.4g}", ha="center", va="center", fontsize=18)
    ax.text(0.5, y - 0.06, label, ha="center", va="center", fontsize=8, color="gray")


def save_png(fig, path):
  """PNG into memory, then one write through refine_jax.paths (local or gs://)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  path_io.write_bytes(path, buf.getvalue())


def plot_results(results: Mapping, out_dir: str, title: str = "eval") -> list[str]:
  """scores.png (score vs context length, one line per task) and perplexity.png if present."""
  paths = []
  scores = {t: r for t, r in results.items() if t not in LOWER_IS_BETTER and r}
  if scores:
    paths.append(path_io.join(out_dir, SCORES_PNG))
    _plot(scores, paths[-1], "score (%)", title)
  ppl = {t: r for t, r in results.items() if t == "perplexity" and r}
  if ppl:
    paths.append(path_io.join(out_dir, PERPLEXITY_PNG))
    _plot(ppl, paths[-1], "perplexity", title)
  nll = {t: r for t, r in results.items() if t in NLL_TASKS and r}
  if nll:
    paths.append(path_io.join(out_dir, NLL_PNG))
    _plot(nll, paths[-1], _ylabel(NLL_TASKS[0]), title)
  return paths


def write_results(results: Mapping, out_dir: str, *, title: str = "eval",
                  plots: bool = True) -> dict[str, str]:
  """Writes results.json, results.md and the plots into out_dir; returns their paths."""
  path_io.makedirs(out_dir)
  paths = {"json": path_io.join(out_dir, RESULTS_JSON), "md": path_io.join(out_dir, RESULTS_MD)}
  data = {t: {str(int(n)): float(v) for n, v in sorted(row.items(), key=lambda kv: int(kv[0]))}
          for t, row in results.items()}
  path_io.write_text(paths["json"], json.dumps(data, indent=2))
  path_io.write_text(paths["md"], markdown_table(results, title))
  if plots:
    for p in plot_results(results, out_dir, title):
      paths[os.path.basename(p)] = p
  return paths


def load_results(path: str) -> dict:
  """{task: {int context_len: score}} from results.json (or the eval dir holding it)."""
  if path_io.isdir(path):
    path = path_io.join(path, RESULTS_JSON)
  data = json.loads(path_io.read_text(path))
  return {t: {int(n): float(v) for n, v in row.items()} for t, row in data.items()}


# ----------------------------------------------------------------------------- seeds


def aggregate(per_seed: Sequence[Mapping]) -> dict:
  """Per-seed results -> {task: {context_len | "avg": (mean, std)}}.

  std is the sample standard deviation over seeds (ddof=1; 0 for a single seed). "avg" is
  the mean over context lengths taken per seed first, so its std is the spread of the seeds'
  averages. A (task, length) cell missing from some seed is aggregated over the others.
  """
  if not per_seed:
    raise ValueError("aggregate: no per-seed results given.")
  out: dict = {}
  tasks = list(dict.fromkeys(t for r in per_seed for t in r))
  for task in tasks:
    rows = [{int(k): float(v) for k, v in r[task].items()} for r in per_seed if task in r]
    cells: dict = {}
    for n in sorted({n for row in rows for n in row}):
      cells[n] = _mean_std([row[n] for row in rows if n in row])
    cells["avg"] = _mean_std([average(row) for row in rows])
    out[task] = cells
  return out


def _mean_std(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _iv(c: Mapping, d: int, with_std: bool = False) -> str:
  if c["n"] < 2 or math.isnan(c["half"]):
    return f"{c['mean']:.{d}f}"
  std = f" ± {c['std']:.{d}f}" if with_std else ""
  return f"{c['mean']:.{d}f}{std} [{c['lo']:.{d}f}, {c['hi']:.{d}f}]"


def interval_table(ivals_by_arm: Mapping[str, Mapping], *, title: str | None = None) -> str:
  """One markdown table per task: arms as rows, context lengths as columns, `mean [lo, hi]`
  (the t-interval; a single run shows its value only)."""
  tasks = list(dict.fromkeys(t for a in ivals_by_arm.values() for t in a))
  lines = [f"### {title}", ""] if title else []
  for task in tasks:
    lengths = sorted({int(n) for a in ivals_by_arm.values() for n in a.get(task, {})})
    d = _digits(task)
    lines += [f"{task} ({'lower' if task in LOWER_IS_BETTER else 'higher'} is better)", "",
              "| arm | n | " + " | ".join(str(n) for n in lengths) + " |",
              "|---" * (len(lengths) + 2) + "|"]
    for arm, a in ivals_by_arm.items():
      cells = a.get(task, {})
      if not cells:
        continue
      n = max(c["n"] for c in cells.values())
      lines.append(f"| {arm} | {n} | " + " | ".join(
          _iv(cells[L], d) if L in cells else "-" for L in lengths) + " |")
    lines.append("")
  return "\n".join(lines) + "\n"


def paired_table(paired_by_arm: Mapping[str, Mapping], *, title: str | None = None) -> str:
  """Rows (arm, task), context lengths as columns, `mean ± std [lo, hi]` of the per-seed
  differences."""
  lengths = sorted({int(n) for a in paired_by_arm.values() for row in a.values() for n in row})
  lines = [f"### {title}", ""] if title else []
  lines += ["| arm | task | " + " | ".join(str(n) for n in lengths) + " |",
            "|---" * (len(lengths) + 2) + "|"]
  for arm, a in paired_by_arm.items():
    for task, cells in a.items():
      d = _digits(task)
      lines.append(f"| {arm} | {task} | " + " | ".join(
          _iv(cells[L], d, with_std=True) if L in cells else "-" for L in lengths) + " |")
  return "\n".join(lines) + "\n"


DIAGNOSTICS = ("reward_mean", "reward_std", "clip_frac", "entropy_selected", "sel_on_values",
               "sel_window_value", "sel_chance_on_values", "last_ntp_loss", "last_eval_loss")


def diagnostics_table(diag_by_arm: Mapping[str, Sequence[Mapping]], *,
                      budgets: Mapping | None = None, title: str | None = None) -> str:
  """Arms as rows, the DIAGNOSTICS present as columns (mean over seeds), plus optimiser
  updates per step from `budgets`."""
  cols = [k for k in DIAGNOSTICS if any(k in r for rs in diag_by_arm.values() for r in rs)]
  lines = [f"### {title}", ""] if title else []
  lines += ["| arm | updates/step | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 2) + "|"]
  for arm, rs in diag_by_arm.items():
    ups = (budgets or {}).get(arm, {}).get("updates_per_step", "-")
    ups = " + ".join(map(str, ups)) if isinstance(ups, (list, tuple)) else ups  # per stage
    cells = []
    for k in cols:
      vals = [float(r[k]) for r in rs if isinstance(r.get(k), (int, float))]
      cells.append(f"{np.mean(vals):.3f}" if vals else "-")
    lines.append(f"| {arm} | {ups} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_experiment(intervals_by_arm: Mapping[str, Mapping], path: str, *,
                    title: str = "experiment", paired: Mapping[str, Mapping] | None = None,
                    reference: str = "", tasks: Sequence[str] | None = None):
  """The comparison at a glance. Top row, one panel per task: a bar per arm at every context
  length (mean over seeds, 95% t-interval whiskers; a single-run arm such as the base has
  none). Bottom row (with `paired`): per-seed differences arm - reference as bars with their
  t-interval, the seeds as dots, a zero line. intervals_by_arm: {arm: {task: {length:
  stats.t_interval dict}}}; paired: {arm: {task: {length: t_interval + diffs}}}."""
  plt = pyplot()
  tasks = list(tasks or dict.fromkeys(t for a in intervals_by_arm.values() for t in a))
  rows = 2 if paired else 1
  fig, axes = plt.subplots(rows, len(tasks), figsize=(4.6 * len(tasks), 3.6 * rows),
                           squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  arm_color = {a: colors[i % len(colors)] for i, a in enumerate(intervals_by_arm)}
  for col, task in enumerate(tasks):
    lengths = sorted({int(n) for a in intervals_by_arm.values() for n in a.get(task, {})})
    _bars(axes[0][col], {a: v.get(task, {}) for a, v in intervals_by_arm.items()}, lengths,
          arm_color, dots=False)
    axes[0][col].set_title(task, fontsize=10)
    axes[0][col].set_ylabel(_ylabel(task))
    tops = [c["mean"] + (0 if math.isnan(c["half"]) else c["half"])
            for a in intervals_by_arm.values() for c in a.get(task, {}).values()]
    _y_range(axes[0][col], tops, task in LOWER_IS_BETTER)
    if paired:
      ax = axes[1][col]
      _bars(ax, {a: v.get(task, {}) for a, v in paired.items()}, lengths, arm_color, dots=True)
      ax.axhline(0.0, color="black", lw=0.8)
      ends = [abs(x) for v in paired.values() for c in v.get(task, {}).values()
              for x in [c["lo"], c["hi"], *c["diffs"]] if math.isfinite(x)]
      floor = 0.05 if task in NLL_TASKS else (0.5 if task in LOWER_IS_BETTER else 5.0)
      lim = max(ends + [floor]) * 1.15
      ax.set_ylim(-lim, lim)
      ax.set_title(f"{task}: arm - {reference} (per seed)", fontsize=9)
      ax.set_ylabel("difference")
  from matplotlib import patches  # pylint: disable=g-import-not-at-top  (as pyplot: lazy)
  handles = [patches.Patch(color=c, label=a) for a, c in arm_color.items()]
  fig.legend(handles=handles, loc="upper right", fontsize=8)
  fig.suptitle(title + "  (whiskers: 95% t-interval over seeds)", fontsize=10)
  fig.tight_layout(rect=(0, 0, 0.9, 0.95))
  save_png(fig, path)
  plt.close(fig)
  return path


def _bars(ax, cells_by_arm: Mapping[str, Mapping], lengths, arm_color, *, dots: bool):
  arms = [a for a, cells in cells_by_arm.items() if cells]
  width = 0.8 / max(len(arms), 1)
  for j, arm in enumerate(arms):
    cells = {int(n): c for n, c in cells_by_arm[arm].items()}
    xs = [i + (j - (len(arms) - 1) / 2) * width for i, n in enumerate(lengths) if n in cells]
    cs = [cells[n] for n in lengths if n in cells]
    err = [0.0 if math.isnan(c["half"]) else c["half"] for c in cs]
    ax.bar(xs, [c["mean"] for c in cs], width * 0.9, yerr=err, capsize=3,
           color=arm_color[arm], alpha=0.8, ecolor="black")
    if dots:
      for x, c in zip(xs, cs):
        ax.plot([x] * len(c["diffs"]), c["diffs"], "k.", ms=4)
  ax.set_xticks(range(len(lengths)))
  ax.set_xticklabels([str(n) for n in lengths])
  ax.set_xlabel("context length (tokens)")
  ax.grid(alpha=0.3, axis="y")


def plot_gate(gate: Mapping, path: str, title: str = "headroom gate") -> str:
  """The gate's checks: held-out score ± z * se vs base step, the band shaded, the verdict in
  the title (gate: eval/gate.py's result dict)."""
  plt = pyplot()
  hist = [h if len(h) > 2 else (*h, 0.0) for h in gate["history"]]
  lo, hi = gate["band"]
  z = float(gate.get("z", 2.0))
  fig, ax = plt.subplots(figsize=(6, 3.6))
  ax.axhspan(lo, hi, color="tab:green", alpha=0.12, label=f"band [{lo:g}, {hi:g}]")
  ax.errorbar([h[0] for h in hist], [h[1] for h in hist], yerr=[z * h[2] for h in hist],
              marker="o", ms=3, capsize=2, label=f"held-out score ± {z:g} se")
  ax.set_xlabel("base step")
  ax.set_ylabel(f"{gate.get('metric', 'score')} (%)")
  ax.set_ylim(0, max(100.0, max(h[1] + z * h[2] for h in hist) + 3))
  verdict = "pass" if gate.get("ok") else "VOID"
  ax.set_title(f"{title}: {verdict} at step {gate['step']}", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return path
