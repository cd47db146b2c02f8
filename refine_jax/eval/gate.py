"""The headroom gate: train the base model until its score is in a band with room to improve.

An experiment whose base already solves the task (ceiling) or never learns it (floor: every arm
scores 0) cannot show a difference between training objectives, so it must not print a table
as if it could. `headroom_gate` trains in increments, measures after each, and stops at the
first score inside [lo, hi]; a score that jumps past hi, or never reaches lo by max_steps,
makes the experiment void, with the reason.
"""

from __future__ import annotations

from typing import Callable, Sequence


def headroom_gate(train_to: Callable[[int], object], measure: Callable[[object, int], float], *,
                  lo: float, hi: float, check_every: int, max_steps: int,
                  history: Sequence[tuple[int, float]] = (),
                  on_check: Callable[[list], None] | None = None) -> dict:
  """train_to(step) -> model trained to `step` updates in total; measure(model, step) -> score.
  `history` [(step, score)] continues an interrupted gate; on_check(history) runs after every
  measurement (to persist it). Returns {ok, step, score, history, reason}."""
  if not lo < hi:
    raise ValueError(f"gate band [{lo}, {hi}] is empty; give lo < hi.")
  if check_every < 1 or max_steps < 1:
    raise ValueError(f"gate check_every={check_every} and max_steps={max_steps} must be >= 1.")
  hist = [(int(s), float(v)) for s, v in history]
  step = hist[-1][0] if hist else 0
  while True:
    if hist:
      verdict = _verdict(hist, lo, hi, max_steps)
      if verdict is not None:
        return verdict
    step = min(step + check_every, max_steps)
    model = train_to(step)
    hist.append((step, float(measure(model, step))))
    if on_check is not None:
      on_check(list(hist))


def _verdict(hist, lo, hi, max_steps):
  step, score = hist[-1]
  out = {"step": step, "score": score, "history": [list(h) for h in hist], "band": [lo, hi]}
  if lo <= score <= hi:
    return dict(out, ok=True, reason=f"score {score:.1f} in [{lo}, {hi}] at step {step}")
  if score > hi:
    before = f"{hist[-2][1]:.1f} at step {hist[-2][0]}" if len(hist) > 1 else "the start"
    return dict(out, ok=False, reason=(
        f"score jumped from {before} to {score:.1f} at step {step}, past the band "
        f"[{lo}, {hi}]: no headroom left; check more often (gate.check_every) or lower "
        "train.lr of the base"))
  if step >= max_steps:
    return dict(out, ok=False, reason=(
        f"score {score:.1f} after {step} steps never reached the band [{lo}, {hi}] (floor: "
        "the base has not learned the task); raise the base's train.steps or make the task "
        "easier"))
  return None
