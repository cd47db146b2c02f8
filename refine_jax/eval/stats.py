"""Statistics over seeds: mean, sample std and a Student-t interval; paired differences.

Seeds are few (3 by default), so intervals use the t distribution with n - 1 degrees of
freedom, not the normal one. Paired differences (arm - reference, per seed) remove what the
seeds share (data order, starting weights), so they are tighter than comparing two means.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
  """{n, mean, std (ddof=1), half, lo, hi} of a t-interval for the mean; one value gives std 0
  and an undefined (nan) interval."""
  v = np.asarray([float(x) for x in values], np.float64)
  n = len(v)
  if n == 0:
    raise ValueError("t_interval: no values.")
  mean = float(v.mean())
  if n == 1:
    return {"n": 1, "mean": mean, "std": 0.0, "half": math.nan, "lo": math.nan, "hi": math.nan}
  std = float(v.std(ddof=1))
  half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
  return {"n": n, "mean": mean, "std": std, "half": half, "lo": mean - half, "hi": mean + half}


def intervals(per_seed: Sequence[Mapping], confidence: float = 0.95) -> dict:
  """Per-seed results [{task: {length: score}}] -> {task: {length: t_interval}} (a cell missing
  from some seed uses the others)."""
  out: dict = {}
  for task in dict.fromkeys(t for r in per_seed for t in r):
    rows = [{int(k): float(v) for k, v in r[task].items()} for r in per_seed if task in r]
    out[task] = {n: t_interval([row[n] for row in rows if n in row], confidence)
                 for n in sorted({n for row in rows for n in row})}
  return out


def paired_differences(arm: Sequence[Mapping], reference: Sequence[Mapping],
                       confidence: float = 0.95) -> dict:
  """Seed-paired arm - reference: arm[i] and reference[i] are the same seed.
  Returns {task: {length: t_interval + diffs}} over the seeds where both have the cell."""
  if len(arm) != len(reference):
    raise ValueError(f"paired_differences: {len(arm)} seeds vs {len(reference)}; pair the same "
                     "seeds.")
  out: dict = {}
  for task in dict.fromkeys(t for r in arm for t in r):
    cells: dict = {}
    lengths = sorted({int(n) for r in arm for n in r.get(task, {})})
    for n in lengths:
      diffs = [float(_cell(a, task, n)) - float(_cell(b, task, n))
               for a, b in zip(arm, reference)
               if _cell(a, task, n) is not None and _cell(b, task, n) is not None]
      if diffs:
        cells[n] = dict(t_interval(diffs, confidence), diffs=diffs)
    if cells:
      out[task] = cells
  return out


def _cell(result: Mapping, task: str, n: int):
  row = result.get(task, {})
  return row.get(n, row.get(str(n)))
