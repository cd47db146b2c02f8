"""End to end (slow): the recall experiment with a gated base, 3 arms x 2 seeds, summary files
(paired differences, diagnostics, PNG); a base outside the band makes it void; the eval command
on the pretrained run gives the same scores as the experiment's base row."""

import json
import os

import pytest

_FAST = "train.progress_bar=false checkpoint.async_save=false"


def _selection_on_values(run_dir, exp):
  """(sel_on_values, sel_chance_on_values) of an arm's trained model, recounted: over 4
  selection draws on the held-out recall rows, the fraction of valid selected positions p
  whose next token (targets[p], the first token a rollout from p writes) is a value token,
  under the run's refine.selection and under uniform selection."""
  import copy  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import refine_jax  # pylint: disable=g-import-not-at-top
  from refine_jax.data import recall  # pylint: disable=g-import-not-at-top
  from refine_jax.data.tokenizers import get_tokenizer  # pylint: disable=g-import-not-at-top
  from refine_jax.refine import step as refine_step  # pylint: disable=g-import-not-at-top
  model, cfg = refine_jax.load_pretrained(run_dir)
  tok = get_tokenizer(cfg.data)
  b = recall.batch(tok, int(cfg.data.seq_len), int(exp.selection_samples),
                   base_seed=int(exp.eval.base_seed), spec=recall.RecallSpec.of(cfg.data.recall),
                   add_bos=bool(cfg.data.add_bos))
  digits = {tok.encode(d)[0] for d in "0123456789"}
  out = []
  for mode in (cfg.refine.selection, "uniform"):
    rc = copy.deepcopy(cfg.refine)
    with rc.unlocked():
      rc.selection = mode
    on = total = 0
    for i in range(4):
      col = refine_step.collect(model, {k: b[k] for k in ("inputs", "targets", "loss_mask")},
                                jax.random.key(i), rc)
      for r, p in zip(*np.nonzero(np.asarray(col.valid_Bc))):
        pos = int(col.positions_Bc[r, p])
        assert int(col.true_Gk[(r * rc.num_chunks + p) * rc.rollouts_per_position, 0]) == \
            b["targets"][r, pos]  # the rollout's first true token is targets[pos]
        on += int(b["value_mask"][r, pos] > 0)
        total += 1
        if b["value_mask"][r, pos]:
          assert b["targets"][r, pos] in digits  # values are digits
    assert total > 0
    out.append(on / total)
  return tuple(out)


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
    diag = data["diagnostics"][arm][0]
    got = _selection_on_values(os.path.join(work, arm, "seed0", "stage0"), exp)
    assert (diag["sel_on_values"], diag["sel_chance_on_values"]) == pytest.approx(got), arm
    with open(os.path.join(work, arm, "seed0", "stage0", "metrics.jsonl")) as f:
      logged = [r["reward_mean"] for r in map(json.loads, f)
                if isinstance(r.get("reward_mean"), (int, float))]
    assert logged and diag["reward_mean"] == pytest.approx(sum(logged) / len(logged))
  assert data["meta"]["budgets"]["sft_mid"]["updates"] == data["meta"]["budgets"][
      "refine_cos"]["updates"]
  md = open(os.path.join(work, "experiment.md")).read()
  assert "recall_em (higher is better)" in md and "| refine_bin | recall_tf |" in md
  assert "![gate](gate.png)" in md and open(os.path.join(work, "gate.png"), "rb").read(4) == \
      b"\x89PNG"
  env = data["meta"]["environment"]  # what produced the numbers
  assert env["machine"]["cores"] == os.cpu_count() and env["packages"]["jax"]
  assert open(os.path.join(work, "experiment.png"), "rb").read(4) == b"\x89PNG"
  curves = os.path.join(work, "refine_cos", "seed0", "stage0", "eval", "training_curves.png")
  assert open(curves, "rb").read(4) == b"\x89PNG"

  cfg = eval_ruler.get_config()
  cfg.checkpoint = os.path.join(work, "pretrain")
  cfg.eval = exp.eval
  res = eval_main.evaluate_checkpoint(cfg, "eval_ruler")
  assert report.load_results(os.path.join(work, "pretrain", "eval", "eval_ruler")) == res
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
  assert out["void"] and "the band [99.0, 100.0]" in out["reason"]
  assert json.load(open(os.path.join(work, "experiment.json")))["void"] is True
  assert "**VOID**" in open(os.path.join(work, "experiment.md")).read()
  assert not os.path.exists(os.path.join(work, "sft_mid"))
