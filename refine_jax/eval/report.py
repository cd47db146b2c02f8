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
LOWER_IS_BETTER = ("perplexity",)


def lengths_of(results: Mapping) -> list[int]:
  return sorted({int(n) for row in results.values() for n in row})


def _digits(task: str) -> int:
  return 2 if task in LOWER_IS_BETTER else 1  # perplexity moves in the second decimal


def _fmt(x: float, digits: int = 1) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def average(row: Mapping) -> float:
  vals = [float(v) for v in row.values()]
  return float(np.mean(vals)) if vals else float("nan")


def markdown_table(results: Mapping, title: str | None = None) -> str:
  """Tasks as rows, context lengths as columns, plus the row average."""
  lengths = lengths_of(results)
  lines = [f"### {title}", ""] if title else []
  lines.append("| task | " + " | ".join(str(n) for n in lengths) + " | avg |")
  lines.append("|---" * (len(lengths) + 2) + "|")
  for task, row in results.items():
    row = {int(k): v for k, v in row.items()}
    d = _digits(task)
    cells = [_fmt(row.get(n, float("nan")), d) for n in lengths]
    lines.append(f"| {task} | " + " | ".join(cells) + f" | {_fmt(average(row), d)} |")
  return "\n".join(lines) + "\n"


def _plot(series: Mapping[str, Mapping], path: str, ylabel: str, title: str,
          errors: Mapping[str, Mapping] | None = None):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, row in series.items():
    xs = sorted(int(k) for k in row)
    ys = [float(row[x] if x in row else row[str(x)]) for x in xs]
    if errors is not None and name in errors:
      err = errors[name]
      es = [float(err[x] if x in err else err[str(x)]) for x in xs]
      ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
    else:
      ax.plot(xs, ys, marker="o", label=name)
  if ylabel.startswith("score"):
    ax.set_ylim(-3, 103)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def _save(fig, path):
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
  ppl = {t: r for t, r in results.items() if t in LOWER_IS_BETTER and r}
  if ppl:
    paths.append(path_io.join(out_dir, PERPLEXITY_PNG))
    _plot(ppl, paths[-1], "perplexity", title)
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


def experiment_table(agg_by_arm: Mapping[str, Mapping], *, column: str | int = "avg",
                     title: str | None = None) -> str:
  """Paper-style markdown table: arms as rows, tasks as columns, `mean ± std` of `column`
  (default the average over context lengths)."""
  tasks = list(dict.fromkeys(t for agg in agg_by_arm.values() for t in agg))
  lines = [f"### {title}", ""] if title else []
  lines.append("| arm | " + " | ".join(tasks) + " |")
  lines.append("|---" * (len(tasks) + 1) + "|")
  for arm, agg in agg_by_arm.items():
    cells = []
    for t in tasks:
      cell = agg.get(t, {}).get(column)
      d = _digits(t)
      cells.append("-" if cell is None else f"{cell[0]:.{d}f} ± {cell[1]:.{d}f}")
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_experiment(agg_by_arm: Mapping[str, Mapping], path: str, title: str = "experiment"):
  """One panel per task: mean score vs context length per arm, std as error bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = list(dict.fromkeys(t for agg in agg_by_arm.values() for t in agg))
  cols = min(3, len(tasks))
  rows = math.ceil(len(tasks) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
  for ax, task in zip(axes.flat, tasks):
    for arm, agg in agg_by_arm.items():
      cells = {n: v for n, v in agg.get(task, {}).items() if n != "avg"}
      if not cells:
        continue
      xs = sorted(cells)
      ax.errorbar(xs, [cells[x][0] for x in xs], yerr=[cells[x][1] for x in xs], marker="o",
                  capsize=3, label=arm)
    ax.set_xscale("log", base=2)
    ax.set_title(task, fontsize=9)
    ax.set_xlabel("context length")
    ax.set_ylabel("perplexity" if task in LOWER_IS_BETTER else "score (%)")
    if task not in LOWER_IS_BETTER:
      ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return path
