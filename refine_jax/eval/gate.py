"""The headroom gate: train the base model until its score is in a band with room to improve.

An experiment whose base already solves the task (ceiling) or never learns it (floor: every arm
scores 0) cannot show a difference between training objectives, so it must not print a table
as if it could. `headroom_gate` trains in increments and measures after each; every check is a
mean with its standard error (se), so one noisy check cannot decide the verdict:

- pass: the lower confidence bound (score - z * se, scores being percentages: at least 0) is at
  least `lo` and the score at most `hi`;
- void, ceiling: the lower bound is above `hi` (the score jumped past the band);
- void, floor: `max_steps` reached without a pass, or, earlier, the score has not started to
  rise by `rise_share` of max_steps (a base that is still at chance there will not make it);
- once the score has risen (above the first check by z standard errors of the difference),
  checks come every `fine_every` steps instead of `check_every`: recall is learned in a jump,
  and a coarse grid would step over the band.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence


def mean_se(values: Sequence[float]) -> tuple[float, float]:
  """Mean and standard error (sample std / sqrt(n); 0 for a single value)."""
  n = len(values)
  if n == 0:
    raise ValueError("mean_se: no values.")
  mean = sum(values) / n
  if n == 1:
    return float(mean), 0.0
  var = sum((v - mean) ** 2 for v in values) / (n - 1)
  return float(mean), float(math.sqrt(var / n))


def risen(hist, z: float) -> bool:
  """The score of the last check is above the first by z standard errors of the difference."""
  if len(hist) < 2:
    return False
  (_, first, se0), (_, last, se1) = hist[0], hist[-1]
  return last - first > z * math.hypot(se0, se1)


def headroom_gate(train_to: Callable[[int], object],
                  measure: Callable[[object, int], tuple[float, float]], *, lo: float,
                  hi: float, check_every: int, max_steps: int, fine_every: int | None = None,
                  z: float = 2.0, rise_share: float = 1.0,
                  history: Sequence[Sequence[float]] = (),
                  on_check: Callable[[list], None] | None = None) -> dict:
  """train_to(step) -> model trained to `step` updates in total; measure(model, step) ->
  (score, standard error). `history` [(step, score, se)] continues an interrupted gate;
  on_check(history) runs after every measurement (to persist it). Returns {ok, step, score,
  se, history, band, reason}."""
  if not lo < hi:
    raise ValueError(f"gate band [{lo}, {hi}] is empty; give lo < hi.")
  fine_every = int(fine_every or check_every)
  if min(check_every, max_steps, fine_every) < 1:
    raise ValueError(f"gate check_every={check_every}, fine_every={fine_every} and "
                     f"max_steps={max_steps} must be >= 1.")
  if not 0 < rise_share <= 1:
    raise ValueError(f"gate rise_share={rise_share} must be in (0, 1].")
  hist = [(int(h[0]), float(h[1]), float(h[2]) if len(h) > 2 else 0.0) for h in history]
  step = hist[-1][0] if hist else 0
  while True:
    if hist:
      verdict = _verdict(hist, lo, hi, max_steps, z, rise_share)
      if verdict is not None:
        return verdict
    step = min(step + (fine_every if risen(hist, z) else check_every), max_steps)
    model = train_to(step)
    score, se = measure(model, step)
    hist.append((step, float(score), float(se)))
    if on_check is not None:
      on_check([list(h) for h in hist])


def history_text(hist) -> str:
  return ", ".join(f"{int(s)}: {v:.1f}±{se:.1f}" for s, v, se in hist)


def _verdict(hist, lo, hi, max_steps, z, rise_share):
  step, score, se = hist[-1]
  low = max(score - z * se, 0.0)  # scores are percentages: the bound stops at 0
  out = {"step": step, "score": score, "se": se, "history": [list(h) for h in hist],
         "band": [lo, hi], "z": z}
  where = f" (held-out score ± se by step: {history_text(hist)})"
  if low >= lo and score <= hi:
    return dict(out, ok=True, reason=f"score {score:.1f} ± {se:.1f} in [{lo}, {hi}] at step "
                f"{step} (lower bound {low:.1f})")
  if low > hi:
    return dict(out, ok=False, reason=(
        f"score jumped to {score:.1f} ± {se:.1f} at step {step}, past the band [{lo}, {hi}]: "
        "no headroom left; check more often (gate.fine_every) or lower train.lr of the base"
        + where))
  if step >= max_steps:
    return dict(out, ok=False, reason=(
        f"score {score:.1f} ± {se:.1f} after {step} steps never reached the band [{lo}, {hi}] "
        "(floor: the base has not learned the task); raise the base's train.steps or make the "
        "task easier" + where))
  if step >= rise_share * max_steps and not risen(hist, z):
    return dict(out, ok=False, reason=(
        f"score {score:.1f} ± {se:.1f} at step {step}, below the band [{lo}, {hi}], has not "
        f"started to rise from {hist[0][1]:.1f} ± {hist[0][2]:.1f} by {rise_share:.0%} of "
        f"max_steps={max_steps} (floor: the base is not learning the task); raise the base's "
        "train.steps or gate.rise_share, or make the task easier" + where))
  return None
