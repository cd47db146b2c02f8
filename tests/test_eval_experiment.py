"""End to end (slow): pretrain a tiny model, SFT-mid vs ReFINE-mid over 2 seeds, summary files;
the eval command on the pretrained run gives the same scores as the experiment's base row."""

import json
import os

import pytest


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
  from configs import eval_ruler, experiment
  from refine_jax import experiments
  from refine_jax.eval import __main__ as eval_main
  from refine_jax.eval import report

  exp = experiment.get_config()
  exp.pretrain_overrides = ("train.steps=6 train.eval_every=0 checkpoint.every_steps=0 "
                            "train.progress_bar=false checkpoint.async_save=false")
  exp.overrides = "train.progress_bar=false checkpoint.async_save=false train.batch_size=4"
  exp.steps, exp.seeds = 2, "0,1"
  exp.eval.tasks, exp.eval.context_lengths = "niah_single,perplexity", "400"
  exp.eval.num_samples, exp.eval.max_new_tokens, exp.eval.ppl_batches = 2, 6, 1
  work = str(tmp_path / "exp")
  summary = experiments.run_experiment(exp, work)

  assert list(summary["per_seed"]) == ["base", "sft_mid", "refine_mid"]
  assert [len(v) for v in summary["per_seed"].values()] == [1, 2, 2]
  data = json.load(open(os.path.join(work, "experiment.json")))
  for arm in ("sft_mid", "refine_mid"):
    ppl = [r["perplexity"]["400"] for r in data["per_seed"][arm]]
    mean, _ = data["aggregate"][arm]["perplexity"]["400"]
    assert mean == pytest.approx(sum(ppl) / 2)
    assert 1.0 < mean < 259.0
  lines = open(os.path.join(work, "experiment.md")).read()
  assert "| arm | niah_single | niah_single_tf | perplexity |" in lines
  assert "| refine_mid |" in lines
  assert open(os.path.join(work, "experiment.png"), "rb").read(4) == b"\x89PNG"

  cfg = eval_ruler.get_config()
  cfg.checkpoint = os.path.join(work, "pretrain")
  cfg.eval = exp.eval
  res = eval_main.evaluate_checkpoint(cfg)
  assert report.load_results(os.path.join(work, "pretrain", "eval")) == res
  assert res["perplexity"][400] == pytest.approx(summary["per_seed"]["base"][0]["perplexity"][400],
                                                 rel=1e-5)
