"""End to end (slow): the recall experiment with a gated base, 3 arms x 2 seeds, summary files
(paired differences, diagnostics, PNG); a base outside the band makes it void; the eval command
on the pretrained run gives the same scores as the experiment's base row."""

import json
import os

import pytest

_FAST = "train.progress_bar=false checkpoint.async_save=false"


def _tiny(exp):
  exp.pretrain_overrides = f"stage=pretrain train.steps=8 train.eval_every=4 {_FAST}"
  exp.gate.check_every, exp.gate.num_samples = 4, 8
  exp.overrides = f"{_FAST} train.batch_size=4"
  exp.steps, exp.seeds = 2, "0,1"
  exp.eval.context_lengths, exp.eval.num_samples = "128,256", 8
  exp.selection_samples = 4
  return exp


@pytest.mark.slow
def test_tiny_recall_experiment_end_to_end(tmp_path):
  from configs import eval_ruler, experiment
  from refine_jax import experiments
  from refine_jax.eval import __main__ as eval_main
  from refine_jax.eval import report

  exp = _tiny(experiment.get_config())
  exp.gate.lo, exp.gate.hi = 0.0, 100.0  # any base proceeds
  work = str(tmp_path / "exp")
  summary = experiments.run_experiment(exp, work)

  assert list(summary["per_seed"]) == ["base", "sft_mid", "refine_cos", "refine_bin"]
  assert [len(v) for v in summary["per_seed"].values()] == [1, 2, 2, 2]
  assert summary["meta"]["gate"]["ok"] and summary["meta"]["gate"]["step"] == 4
  data = json.load(open(os.path.join(work, "experiment.json")))
  for arm in ("refine_cos", "refine_bin"):
    cell = data["paired"][arm]["recall_tf"]["128"]
    mine = [r["recall_tf"]["128"] for r in data["per_seed"][arm]]
    ref = [r["recall_tf"]["128"] for r in data["per_seed"]["sft_mid"]]
    assert cell["diffs"] == pytest.approx([a - b for a, b in zip(mine, ref)])
    assert 0.0 <= data["diagnostics"][arm][0]["sel_on_values"] <= 1.0
    assert "reward_mean" in data["diagnostics"][arm][0]
  assert data["meta"]["budgets"]["sft_mid"]["updates"] == data["meta"]["budgets"][
      "refine_cos"]["updates"]
  md = open(os.path.join(work, "experiment.md")).read()
  assert "recall_em (higher is better)" in md and "| refine_bin | recall_tf |" in md
  assert open(os.path.join(work, "experiment.png"), "rb").read(4) == b"\x89PNG"
  curves = os.path.join(work, "refine_cos", "seed0", "stage0", "eval", "training_curves.png")
  assert open(curves, "rb").read(4) == b"\x89PNG"

  cfg = eval_ruler.get_config()
  cfg.checkpoint = os.path.join(work, "pretrain")
  cfg.eval = exp.eval
  res = eval_main.evaluate_checkpoint(cfg)
  assert report.load_results(os.path.join(work, "pretrain", "eval")) == res
  assert res["recall_nll"][256] == pytest.approx(
      summary["per_seed"]["base"][0]["recall_nll"][256], rel=1e-5)


@pytest.mark.slow
def test_base_outside_the_band_voids_the_experiment(tmp_path):
  from configs import experiment
  from refine_jax import experiments

  exp = _tiny(experiment.get_config())
  exp.gate.lo, exp.gate.hi = 99.0, 100.0  # unreachable in 8 steps
  work = str(tmp_path / "exp")
  out = experiments.run_experiment(exp, work)
  assert out["void"] and "never reached the band [99.0, 100.0]" in out["reason"]
  assert json.load(open(os.path.join(work, "experiment.json")))["void"] is True
  assert "**VOID**" in open(os.path.join(work, "experiment.md")).read()
  assert not os.path.exists(os.path.join(work, "sft_mid"))
