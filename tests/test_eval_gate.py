"""The headroom gate: stops inside the band, voids (with the reason) below it at the step budget
or past it, resumes from its history; the experiment writes VOID instead of a table."""

import json

import pytest

from refine_jax import experiments
from refine_jax.eval import gate


def _run(scores, *, lo=20.0, hi=70.0, every=25, max_steps=100, history=()):
  trained = []

  def train_to(step):
    trained.append(step)
    return step

  def measure(model, step):
    assert model == step  # the model trained to `step` is the one measured
    return scores[step]

  return gate.headroom_gate(train_to, measure, lo=lo, hi=hi, check_every=every,
                            max_steps=max_steps, history=history), trained


def test_never_in_band_is_void_with_the_reason():
  res, trained = _run({25: 10.0, 50: 11.0, 75: 9.5, 100: 12.0})
  assert not res["ok"] and trained == [25, 50, 75, 100]
  assert "12.0 after 100 steps never reached the band [20.0, 70.0]" in res["reason"]
  assert res["history"] == [[25, 10.0], [50, 11.0], [75, 9.5], [100, 12.0]]


def test_jump_past_the_band_is_void():
  res, _ = _run({25: 10.0, 50: 85.0})
  assert not res["ok"] and res["step"] == 50
  assert "jumped from 10.0 at step 25 to 85.0 at step 50" in res["reason"]


def test_in_band_proceeds_at_the_first_hit():
  res, trained = _run({25: 10.0, 50: 19.9, 75: 35.0, 100: 60.0})
  assert res["ok"] and (res["step"], res["score"]) == (75, 35.0) and trained == [25, 50, 75]


def test_resumes_from_history_without_retraining():
  res, trained = _run({75: 40.0}, history=[(25, 10.0), (50, 15.0)])
  assert res["ok"] and trained == [75]
  res, trained = _run({}, history=[(25, 10.0), (50, 30.0)])
  assert res["ok"] and trained == [] and res["step"] == 50


def test_bad_band_is_refused():
  with pytest.raises(ValueError, match="band"):
    _run({}, lo=70.0, hi=20.0)


def test_void_experiment_files(tmp_path):
  res, _ = _run({25: 10.0, 50: 11.0}, max_steps=50)
  paths = experiments.write_void(str(tmp_path), res["reason"], title="T", meta={"gate": res})
  data = json.loads(open(paths["json"]).read())
  assert data["void"] is True and data["reason"] == res["reason"]
  md = open(paths["md"]).read()
  assert "**VOID**" in md and "never reached the band" in md and "| 50 | 11.0 |" in md
  assert "| arm |" not in md  # no table of scores
