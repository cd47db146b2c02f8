"""The headroom gate: every check is a mean with its standard error, so one noisy check cannot
pass or void it; it checks more often once the score rises, voids early (with the history in
the reason) when the base has not started to rise, resumes from its history; the experiment
writes VOID, the checks' table and a picture instead of a table of arms."""

import json

import pytest

from refine_jax import experiments
from refine_jax.eval import gate


def _run(scores, *, lo=20.0, hi=70.0, every=25, fine=None, max_steps=100, rise_share=1.0,
         history=()):
  """scores: {step: (score, se)}."""
  trained = []

  def train_to(step):
    trained.append(step)
    return step

  def measure(model, step):
    assert model == step  # the model trained to `step` is the one measured
    return scores[step]

  return gate.headroom_gate(train_to, measure, lo=lo, hi=hi, check_every=every,
                            fine_every=fine, max_steps=max_steps, rise_share=rise_share,
                            history=history), trained


def test_mean_and_standard_error_by_hand():
  assert gate.mean_se([0.0, 100.0]) == (50.0, 50.0)  # std 70.71 (ddof 1) / sqrt(2)
  assert gate.mean_se([30.0, 30.0, 30.0]) == (30.0, 0.0)
  assert gate.mean_se([7.0]) == (7.0, 0.0)


def test_never_in_band_is_void_with_the_history():
  res, trained = _run({25: (10.0, 1.0), 50: (11.0, 1.0), 75: (9.5, 1.0), 100: (12.0, 1.0)})
  assert not res["ok"] and trained == [25, 50, 75, 100]
  assert "12.0 ± 1.0 after 100 steps never reached the band [20.0, 70.0]" in res["reason"]
  assert "25: 10.0±1.0, 50: 11.0±1.0, 75: 9.5±1.0, 100: 12.0±1.0" in res["reason"]
  assert res["history"] == [[25, 10.0, 1.0], [50, 11.0, 1.0], [75, 9.5, 1.0], [100, 12.0, 1.0]]


def test_no_rise_by_the_set_share_voids_early():
  res, trained = _run({25: (10.0, 1.0), 50: (11.0, 1.0), 75: (0, 0)}, rise_share=0.5)
  assert not res["ok"] and trained == [25, 50]  # stops at 50 = half of max_steps
  assert "has not started to rise from 10.0 ± 1.0 by 50% of max_steps=100" in res["reason"]


def test_one_noisy_check_in_the_band_does_not_pass():
  # 21 ± 1: the lower bound 19 is below lo; 26 ± 1 (bound 24) passes.
  res, trained = _run({25: (10.0, 1.0), 50: (21.0, 1.0), 55: (26.0, 1.0)}, fine=5)
  assert res["ok"] and (res["step"], res["score"], res["se"]) == (55, 26.0, 1.0)
  assert trained == [25, 50, 55]  # risen at 50 (11 > 2 * 1.41): the next check 5 steps on


def test_checks_come_faster_only_once_the_score_has_risen():
  # 12 vs 10 with se 1 each: 2 < 2 * 1.41, not risen -> the coarse grid.
  res, trained = _run({25: (10.0, 1.0), 50: (12.0, 1.0), 75: (16.0, 1.0), 80: (30.0, 1.0)},
                      fine=5)
  assert res["ok"] and trained == [25, 50, 75, 80]


def test_jump_past_the_band_is_void_only_when_its_lower_bound_is_past():
  res, trained = _run({25: (10.0, 1.0), 50: (72.0, 2.0), 55: (85.0, 2.0)}, fine=5)
  # 72 ± 2: above hi but its bound 68 is not past it -> check again; 85 ± 2 is past.
  assert not res["ok"] and res["step"] == 55 and trained == [25, 50, 55]
  assert "jumped to 85.0 ± 2.0 at step 55, past the band [20.0, 70.0]" in res["reason"]


def test_resumes_from_history_without_retraining():
  res, trained = _run({75: (40.0, 1.0)}, history=[(25, 10.0, 1.0), (50, 15.0, 1.0)])
  assert res["ok"] and trained == [75]
  # A gate.json written before standard errors (step, score) reads with se 0.
  res, trained = _run({}, history=[(25, 10.0), (50, 30.0)])
  assert res["ok"] and trained == [] and res["step"] == 50


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="band"):
    _run({}, lo=70.0, hi=20.0)
  with pytest.raises(ValueError, match="rise_share"):
    _run({}, rise_share=0.0)


def test_void_experiment_files(tmp_path):
  res, _ = _run({25: (10.0, 1.0), 50: (11.0, 0.5)}, max_steps=50)
  paths = experiments.write_void(str(tmp_path), res["reason"], title="T", meta={"gate": res})
  data = json.loads(open(paths["json"]).read())
  assert data["void"] is True and data["reason"] == res["reason"]
  md = open(paths["md"]).read()
  assert "**VOID**" in md and "never reached the band" in md and "| 50 | 11.0 | 0.50 |" in md
  assert "![gate](gate.png)" in md
  assert (tmp_path / "gate.png").read_bytes()[:4] == b"\x89PNG"
  assert "| arm |" not in md  # no table of scores
