"""Held-out QA accuracy for the post-training and TTT stages.

One code path scores the starting checkpoint (no adaptation), the post-trained model and the
test-time-trained answers: cells {(task, context_len): [TaskSample]} -> predictions ->
{task: {context_len: percent}} in <out_dir>/results.json (+ .md, plots, predictions.jsonl).
Synthetic cells come from refine_jax.eval.runner.task_samples (the "eval" seed stream);
file data is scored as one "qa" cell at data.seq_len.
"""
from __future__ import annotations

import json
from typing import Callable, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx

from refine_jax import paths
from refine_jax.data import tasks as tasks_lib
from refine_jax.eval import decode, nll, report, runner
from refine_jax.models import build_model
from refine_jax.train import init_checkpoint

Predict = Callable[[Sequence[tasks_lib.TaskSample], Sequence[int]], Sequence[str]]


def eval_cells(config, tokenizer, samples_from_file=None) -> dict:
  """{(task, length): samples}. With file samples: one ("qa", data.seq_len) cell."""
  if samples_from_file:
    return {("qa", int(config.data.seq_len)): list(samples_from_file)}
  ecfg = config.eval
  cells = {}
  for task in runner.parse_tasks(ecfg.tasks):
    for length in runner.parse_lengths(ecfg.context_lengths):
      try:
        cells[(task, length)] = runner.task_samples(tokenizer, ecfg, task, length)
      except tasks_lib.TaskTooShortError as e:
        logging.warning("skipping %s at %d tokens: %s", task, length, e)
  if not cells:
    raise ValueError(f"eval.tasks={ecfg.tasks!r} x eval.context_lengths={ecfg.context_lengths!r}"
                     " gave no samples; raise the context lengths.")
  return cells


def score_cells(cells: dict, predict: Predict, tokenizer, config, out_dir: str | None,
                title: str) -> dict:
  """Predicts (one answer budget per row: runner.answer_budgets) and scores every cell, each
  file row by its own task (runner.score_text); writes results when out_dir is given."""
  results, records = {}, []
  for (task, length), samples in cells.items():
    budgets = runner.answer_budgets(tokenizer, int(config.eval.max_new_tokens), samples)
    preds = list(predict(samples, budgets))
    scores, per = runner.score_text(task, samples, preds)
    for name, value in scores.items():
      results.setdefault(name, {})[length] = value
    records += [runner.prediction_record(task, length, i, s, p, sc)  # eval.score reads these
                for i, (s, p, sc) in enumerate(zip(samples, preds, per))]
  if out_dir and jax.process_index() == 0:  # every process scored; one writes
    report.write_results(results, out_dir, title=title, plots=bool(config.eval.plots))
    paths.write_text(paths.join(out_dir, "predictions.jsonl"),
                     "".join(json.dumps(r) + "\n" for r in records))
  return results


def greedy_predictor(model, tokenizer, config) -> Predict:

  def predict(samples, budgets):
    return decode.decode_text(model, tokenizer, [s.prompt for s in samples],
                              max_new_tokens=budgets, add_bos=bool(config.data.add_bos),
                              batch_size=int(config.eval.batch_size))
  return predict


def load_model(config, path: str = ""):
  """build_model(config.model) with params from `path` (a run dir / Orbax checkpoint / bundle /
  HF-FLA dir) if set."""
  model = build_model(config.model, rngs=nnx.Rngs(int(config.seed)))
  if path:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          params)
    params, _ = init_checkpoint.load_params(path, target)
    model = nnx.merge(graphdef, params, rest)
  return model


def answer_scores(model, batches):
  """Held-out teacher-forced answer scores: {"answer_nll": per token, "answer_token_acc":
  fraction of answer tokens that are the argmax} (finer-grained than exact-match accuracy)."""
  graphdef, state = nnx.split(model)
  f = jax.jit(lambda s, b: nll.ntp_eval(nnx.merge(graphdef, s), b))
  nll_sum = tok = correct = 0.0
  for b in batches:
    o = jax.device_get(f(state, {k: np.asarray(v) for k, v in b.items()}))
    nll_sum, tok = nll_sum + float(o["nll_sum"]), tok + float(o["tokens"])
    correct += float(o["correct"])
  return {"answer_nll": nll_sum / max(tok, 1.0), "answer_token_acc": correct / max(tok, 1.0)}


def no_adaptation(config, out_dir, cells, tok, nll_batches, start_from, title):
  """Scores of the starting weights; cached in out_dir (a rerun does not redo them)."""
  path = paths.join(out_dir, "summary.json")
  if paths.exists(path):
    return json.loads(paths.read_text(path))
  model = load_model(config, start_from)
  res = score_cells(cells, greedy_predictor(model, tok, config), tok, config, out_dir, title)
  summary = {"results": res, **(answer_scores(model, nll_batches) if nll_batches else {})}
  paths.write_text(path, json.dumps(summary, indent=2))
  return summary


def comparison(named: dict) -> str:
  """Markdown: one row per (task, length), one column per named result set, plus the average."""
  names = list(named)
  keys = sorted({(t, int(n)) for res in named.values() for t, row in res.items() for n in row})
  lines = ["| task | context | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  for t, n in keys:
    vals = [named[m].get(t, {}).get(n, named[m].get(t, {}).get(str(n))) for m in names]
    lines.append(f"| {t} | {n} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals)
                 + " |")
  avg = [np.mean([v for row in named[m].values() for v in row.values()]) if named[m] else
         float("nan") for m in names]
  lines.append("| **avg** | | " + " | ".join(f"{a:.1f}" for a in avg) + " |")
  return "\n".join(lines) + "\n"
