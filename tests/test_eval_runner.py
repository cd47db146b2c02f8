"""The eval runner: an oracle predictor scores 100, a wrong one 0; files have the right shape."""

import json

import numpy as np
import pytest

from refine_jax.data import mqar
from refine_jax.data import tasks as tasks_lib
from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.eval import logit_tasks, report, runner
from refine_jax.config import default_eval_config, default_model_config


def _cfg(**kw):
  c = default_eval_config()
  c.tasks = "niah_single,niah_multikey,niah_multivalue,variable_tracking"
  c.context_lengths = "1000,800"
  c.num_samples = 3
  c.progress = False
  c.update(kw)
  return c


def _oracle(tok, cfg):
  """Maps each eval prompt to its references (regenerated from the same seeds)."""
  answers = {}
  for task in runner.parse_tasks(cfg.tasks):
    for n in runner.parse_lengths(cfg.context_lengths):
      for s in runner.task_samples(tok, cfg, task, n):
        answers[s.prompt] = s.answers
  return lambda prompts: [" " + ", ".join(answers[p]) + "." for p in prompts]


def test_oracle_scores_100_and_wrong_scores_0(tmp_path):
  tok, cfg = ByteTokenizer(), _cfg()
  good = runner.run_eval(None, tok, cfg, str(tmp_path / "good"), predict_fn=_oracle(tok, cfg))
  assert set(good) == {"niah_single", "niah_multikey", "niah_multivalue", "variable_tracking"}
  for row in good.values():
    assert row == {800: 100.0, 1000: 100.0}
  bad = runner.run_eval(None, tok, cfg, None, predict_fn=lambda ps: ["no idea"] * len(ps))
  assert all(v == 0.0 for row in bad.values() for v in row.values())


def test_partial_answers_score_the_fraction_found():
  tok = ByteTokenizer()
  cfg = _cfg(tasks="niah_multivalue", context_lengths="1000", num_samples=2, num_needles=4)
  samples = runner.task_samples(tok, cfg, "niah_multivalue", 1000)
  by_prompt = {s.prompt: s.answers for s in samples}
  res = runner.run_eval(None, tok, cfg, None,
                        predict_fn=lambda ps: [" ".join(by_prompt[p][:1]) for p in ps])
  assert res["niah_multivalue"][1000] == pytest.approx(25.0)


def test_too_short_cells_are_left_out():
  tok = ByteTokenizer()
  cfg = _cfg(tasks="niah_single", context_lengths="100,1000")
  res = runner.run_eval(None, tok, cfg, None, predict_fn=_oracle_safe(tok, cfg))
  assert res == {"niah_single": {1000: 100.0}}


def _oracle_safe(tok, cfg):
  cfg = _cfg(tasks=cfg.tasks, context_lengths="1000")
  return _oracle(tok, cfg)


def test_eval_samples_come_from_the_eval_seed_stream():
  tok, cfg = ByteTokenizer(), _cfg()
  for s in runner.task_samples(tok, cfg, "niah_single", 800):
    assert tasks_lib.seed_split(s.metadata["seed"]) == "eval"


def test_qa_from_jsonl_f1_and_substring(tmp_path):
  path = tmp_path / "qa.jsonl"
  rows = [{"context": "Paris is in France. " * 5, "input": "Where is Paris?",
           "answers": ["France"]},
          {"context": "The cat sat. " * 5, "input": "Who sat?", "answers": ["the cat"]}]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  tok = ByteTokenizer()
  cfg = _cfg(tasks="qa,qa_f1", context_lengths="400", qa_path=str(path))
  preds = {"Where is Paris?": "in France", "Who sat?": "a dog"}
  fn = lambda ps: [next(v for k, v in preds.items() if k in p) for p in ps]
  res = runner.run_eval(None, tok, cfg, None, predict_fn=fn)
  assert res["qa"][400] == pytest.approx(50.0)        # "France" found; "the cat" not
  # F1: "in france" vs "france" = 2/3; "dog" vs "cat" = 0.
  assert res["qa_f1"][400] == pytest.approx(100 * (2 / 3) / 2)


def test_files_have_the_right_structure(tmp_path):
  tok, cfg = ByteTokenizer(), _cfg(tasks="niah_single,niah_multiquery")
  out = tmp_path / "eval"
  res = runner.run_eval(None, tok, cfg, str(out), predict_fn=_oracle(tok, cfg))
  with open(out / "results.json") as f:
    data = json.load(f)
  assert data == {"niah_single": {"800": 100.0, "1000": 100.0},
                  "niah_multiquery": {"800": 100.0, "1000": 100.0}}
  assert report.load_results(str(out)) == res
  md = (out / "results.md").read_text().splitlines()
  assert md[-4].startswith("| task | 800 | 1000 | avg |")
  assert md[-1] == "| niah_multiquery | 100.0 | 100.0 | 100.0 |"
  png = (out / "scores.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
  assert len(preds) == 2 * 2 * 3 and all(p["score"] == 100.0 for p in preds)


def test_only_process_zero_draws_and_writes(tmp_path, monkeypatch, capsys):
  """Multi-process runs: every process scores (the model is sharded over all of them), only
  process 0 draws the bar and writes eval files; the scores are the same on every process."""
  tok, cfg = ByteTokenizer(), _cfg(tasks="niah_single", context_lengths="800", progress=True)
  want = runner.run_eval(None, tok, cfg, str(tmp_path / "p0"), predict_fn=_oracle(tok, cfg))
  assert (tmp_path / "p0" / "results.json").exists() and "niah_single" in capsys.readouterr().err
  monkeypatch.setattr(runner.jax, "process_index", lambda: 1)
  got = runner.run_eval(None, tok, cfg, str(tmp_path / "p1"), predict_fn=_oracle(tok, cfg))
  assert got == want
  assert not (tmp_path / "p1").exists() and capsys.readouterr().err == ""


def test_bad_config_errors():
  tok = ByteTokenizer()
  with pytest.raises(ValueError, match="eval.tasks"):
    runner.run_eval(None, tok, _cfg(tasks="niah_bogus"), None, predict_fn=lambda p: p)
  with pytest.raises(ValueError, match="context_lengths"):
    runner.run_eval(None, tok, _cfg(context_lengths="abc"), None, predict_fn=lambda p: p)
  with pytest.raises(ValueError, match="predict_fn"):
    runner.run_eval(None, tok, _cfg(), None)
  with pytest.raises(ValueError, match="needs a model"):
    runner.run_eval(None, tok, _cfg(tasks="mqar"), None, predict_fn=lambda p: p)


def test_model_path_matches_direct_decoding_and_naive_perplexity(tmp_path):
  import jax
  from flax import nnx
  from configs import base
  from refine_jax.data import pipeline
  from refine_jax.eval import decode
  from refine_jax.models import build_model
  config = base.get_config()
  config.model.hidden, config.model.layers, config.model.heads = 32, 1, 2
  model = build_model(config.model, rngs=nnx.Rngs(0))
  tok = ByteTokenizer()
  cfg = _cfg(tasks="niah_single,perplexity", context_lengths="400", num_samples=2,
             max_new_tokens=4, ppl_batches=1, batch_size=2)
  res = runner.run_eval(model, tok, cfg, str(tmp_path), config=config)
  samples = runner.task_samples(tok, cfg, "niah_single", 400)
  direct = decode.decode_text(model, tok, [s.prompt for s in samples], max_new_tokens=4)
  preds = [json.loads(l)["prediction"] for l in (tmp_path / "predictions.jsonl").open()]
  assert preds == direct
  # Perplexity: naive log-softmax NLL over the same held-out batch.
  c2 = config.copy_and_resolve_references()
  c2.data.seq_len = 400
  b = pipeline.make_eval_batches(c2, 1, batch_size=2)[0]
  logits = np.asarray(model(jax.numpy.asarray(b["inputs"])).logits, np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
  want = np.exp((nll * b["loss_mask"]).sum() / b["loss_mask"].sum())
  assert res["perplexity"][400] == pytest.approx(want, rel=1e-4)


def test_two_argument_predict_fn_gets_the_answer_budget():
  tok = ByteTokenizer()
  seen = []
  cfg = _cfg(tasks="niah_single", context_lengths="800", num_samples=2)
  runner.run_eval(None, tok, cfg, None, predict_fn=lambda ps, n: seen.append(n) or [""] * len(ps))
  samples = runner.task_samples(tok, cfg, "niah_single", 800)
  assert seen == [max(len(tok.encode(s.target)) for s in samples) + 8]
  cfg.max_new_tokens = 5
  runner.run_eval(None, tok, cfg, None, predict_fn=lambda ps, n: seen.append(n) or [""] * len(ps))
  assert seen[-1] == 5


def test_eval_stage_runs_the_config_eval_section_into_workdir_eval(monkeypatch, tmp_path):
  from configs import pretrain
  calls = []
  monkeypatch.setattr(runner, "run_eval",
                      lambda *a, **kw: calls.append((a, kw)) or {"x": {1: 2.0}})
  config = pretrain.get_config()
  assert runner.eval_stage(config, str(tmp_path), "MODEL") == {"x": {1: 2.0}}
  (model, tok, ecfg, out_dir), kw = calls[0]
  assert model == "MODEL" and out_dir == str(tmp_path / "eval") and kw["config"] is config
  assert tok.vocab_size == config.model.vocab_size  # the run's own tokenizer
  assert ecfg is config.eval and ecfg.tasks == default_eval_config().tasks  # the light suite


def test_mqar_scores_the_models_argmax_on_query_positions():
  import jax.numpy as jnp
  from flax import nnx
  from refine_jax.models import build_model
  c = default_model_config()
  c.arch, c.vocab_size, c.hidden, c.layers, c.heads = "transformer", 64, 32, 1, 2
  model = build_model(c, rngs=nnx.Rngs(0))
  cfg = _cfg(tasks="mqar", context_lengths="48", num_samples=3, mqar_kv_pairs=4, mqar_vocab=64)
  got = runner.run_eval(model, None, cfg, None)["mqar"][48]
  batch = mqar.mqar_batch(3, split="eval", seq_len=48, num_kv_pairs=4, vocab_size=64)
  pred = np.asarray(model(jnp.asarray(batch["inputs"])).logits).argmax(-1)
  m = batch["query_mask"] > 0
  assert got == pytest.approx(100.0 * (pred[m] == batch["targets"][m]).mean())


def test_teacher_forced_accuracy_counts_argmax_hits_on_answer_tokens():
  from unittest import mock
  from refine_jax.data.tasks import TaskSample
  tok = ByteTokenizer()
  # A fake model whose argmax after token t is t + 1. Prompt "a", target "bcz": after "a" it
  # says "b" (hit), after "b" "c" (hit), after "c" "d" (miss) -> 2 of 3.
  sample = TaskSample(task="t", prompt="a", answers=("bcz",), target="bcz", metadata={})
  with mock.patch.object(logit_tasks, "_argmax_fn", lambda graphdef: lambda state, ids: ids + 1), \
       mock.patch("flax.nnx.split", lambda model: (None, None)):
    got = logit_tasks.teacher_forced_accuracy(object(), tok, [sample, sample])
  assert got == pytest.approx(100 * 2 / 3)
