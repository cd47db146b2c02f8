"""The eval runner: tasks x context lengths -> {task: {context_len: score}} plus report files.

    results = run_eval(model, tokenizer, eval_cfg, out_dir, config=run_config)

Text tasks (RULER NIAH variants, variable tracking, local-jsonl QA) are answered by greedy
decoding with the cached decoder, or by any `predict_fn(prompts) -> answers` (tests, other
systems). "mqar" scores the argmax of one forward pass on the query positions; "perplexity" is
held-out perplexity with data.seq_len set to each context length; "recall" scores held-out rows
of the recall stream (refine_jax/data/recall.py, the run's data.recall) of each length as
recall_em (whole values right), recall_tf (value tokens right), recall_nll (all tokens) and
recall_value_nll, from one teacher-forced forward pass. Eval samples come from the
"eval" seed stream (refine_jax.data.tasks.sample_seed), which training never draws from.
Scores are percent (perplexity excepted).
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Callable, Sequence

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from refine_jax import paths
from refine_jax.data import pipeline
from refine_jax.data import tasks as tasks_lib
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.eval import decode, logit_tasks, qa_files, report, scoring

TEXT_TASKS = tasks_lib.TASK_NAMES + ("qa", "qa_f1")
MODEL_TASKS = ("mqar", "perplexity", "recall")
ALL_TASKS = TEXT_TASKS + MODEL_TASKS

PredictFn = Callable[[Sequence[str]], Sequence[str]]


def _split(value) -> list[str]:
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]


AUTO = "auto"


def parse_lengths(value) -> list[int] | None:
  """Comma-separated context lengths; None for "auto" (each file row at its own length)."""
  if isinstance(value, str) and value.strip().lower() == AUTO:
    return None
  try:
    lengths = [int(v) for v in _split(value)]
  except ValueError as e:
    raise ValueError(f"eval.context_lengths={value!r}: give comma-separated integers, "
                     "e.g. '256,512'.") from e
  if not lengths or min(lengths) <= 0:
    raise ValueError(f"eval.context_lengths={value!r}: give at least one positive length.")
  return lengths


def parse_tasks(value) -> list[str]:
  names = _split(value)
  bad = [n for n in names if n not in ALL_TASKS]
  if bad or not names:
    raise ValueError(f"eval.tasks={value!r}: unknown {bad}; choose from {list(ALL_TASKS)}.")
  return names


def _haystack(ecfg, config):
  h = ecfg.haystack
  if h == "noise":
    return "noise"
  if h == "held_out":
    if config is None:
      raise ValueError("eval.haystack='held_out' needs the run config (data.*); pass config= "
                       "or use eval.haystack='noise'.")
    return pipeline.held_out_text(config)
  if not paths.isfile(h):
    raise FileNotFoundError(f"eval.haystack={h!r}: use 'noise', 'held_out' or a text file path.")
  return paths.read_text(h)


FILE_TASKS = ("qa", "qa_f1")


def _qa_path(ecfg, task):
  if not ecfg.qa_path:
    raise ValueError(f"task {task!r} needs eval.qa_path ({qa_files.LAYOUTS}).")
  return ecfg.qa_path


def auto_lengths(rows) -> list[int]:
  """eval.context_lengths="auto": the context lengths the QA file rows were built for."""
  missing = [r for r in rows if qa_files.own_length(r) is None]
  if missing:
    raise ValueError(f"eval.context_lengths='auto': {missing[0].source} row {missing[0].row} "
                     "has no max_seq_length and its file name no _<length> suffix; give the "
                     "lengths, e.g. eval.context_lengths=16384.")
  return sorted({qa_files.own_length(r) for r in rows})


def _cell_lengths(task, lengths, rows) -> list[int]:
  if lengths is not None:
    return lengths
  if task not in FILE_TASKS:
    raise ValueError(f"eval.context_lengths='auto' reads each QA file row's own length; task "
                     f"{task!r} has no rows: give its lengths, e.g. '1024,2048'.")
  return auto_lengths(rows)


def task_samples(tokenizer, ecfg, task: str, length: int, haystack="noise", *,
                 auto: bool = False, rows=None):
  """The eval samples of one (task, context length) cell. auto: the file rows built for
  `length` (eval.context_lengths="auto"); rows: the QA file rows, when already loaded."""
  n = int(ecfg.num_samples)
  if task in FILE_TASKS:
    return qa_files.samples(_qa_path(ecfg, task), tokenizer, length, limit=n or None,
                            max_new_tokens=int(ecfg.max_new_tokens),
                            length=length if auto else None, rows=rows)
  if n <= 0:
    raise ValueError(f"eval.num_samples={n}: generated task {task!r} needs a positive count.")
  kwargs = {"haystack": haystack}
  if task.startswith("niah_"):
    kwargs["num_needles"] = int(ecfg.num_needles)
  elif task == "variable_tracking":
    kwargs["num_hops"] = int(ecfg.vt_hops)
  return [tasks_lib.make_task(task, tokenizer, length,
                              tasks_lib.sample_seed("eval", i, int(ecfg.base_seed)), **kwargs)
          for i in range(n)]


def add_bos(ecfg, config=None) -> bool:
  """eval.add_bos, or (None) the run config's data.add_bos: prompts go in as the model was
  trained, with nothing else added."""
  if ecfg.add_bos is not None:
    return bool(ecfg.add_bos)
  return bool(config.data.add_bos) if config is not None and "data" in config else True


def model_predictor(model, tokenizer, ecfg, config=None):
  """predict(prompts, budgets) -> answers, by greedy cached decoding of `model` (one answer
  budget per prompt)."""

  def predict(prompts, budgets):
    return decode.decode_text(model, tokenizer, prompts, max_new_tokens=list(budgets),
                              add_bos=add_bos(ecfg, config), batch_size=int(ecfg.batch_size))
  return predict


def answer_budgets(tokenizer, max_new_tokens: int, samples) -> list[int]:
  """Tokens each sample may generate: max_new_tokens when > 0; else the row's own budget
  (metadata "max_new_tokens": the ReFINE files' max_gen_tokens / max_answer_length, as the
  paper generates); rows without one get the cell's longest target + 8 tokens."""
  if int(max_new_tokens) > 0:
    return [int(max_new_tokens)] * len(samples)
  own = [(s.metadata or {}).get("max_new_tokens") for s in samples]
  if any(n is None for n in own):
    fallback = max(len(tokenizer.encode(s.target)) for s in samples) + 8
    own = [fallback if n is None else n for n in own]
  return [int(n) for n in own]


def score_key(task: str, sample) -> str:
  """The results row a sample's score goes to: a file row's own task (each row is scored by
  it), "qa_f1" when token F1 was asked for, else the eval task."""
  own = (getattr(sample, "metadata", None) or {}).get("dataset")
  return own if own and task in FILE_TASKS and task != "qa_f1" else task


def prediction_record(task: str, length: int, index: int, sample, prediction: str,
                      score: float) -> dict:
  """One predictions.jsonl row: source (the data file, or "generated:<task>"), row (0-based
  in that source), task (what the score is by: the row's own task, or the eval task for
  generated rows and qa_f1), context_length, prediction (raw), references, score (percent);
  prompt_tail for reading. `python -m refine_jax.eval.score` re-scores such a file."""
  meta = getattr(sample, "metadata", None) or {}
  if meta.get("source") is not None and meta.get("row") is not None:
    source, row = str(meta["source"]), int(meta["row"])
  else:
    source, row = f"generated:{task}", int(index)
  return {"source": source, "row": row, "task": score_key(task, sample),
          "context_length": int(length),
          "prediction": prediction, "references": list(sample.answers), "score": float(score),
          "prompt_tail": sample.prompt[-120:]}


def score_text(task, samples, predictions) -> tuple[dict[str, float], list[float]]:
  """({results row: mean score}, per-sample scores): file rows by their own task's metric
  (score_key), "qa_f1" as token F1 whatever the rows' dataset, generated rows by the task's."""
  if task == "qa_f1":
    per = [scoring.score_task("qa", [p], [s.answers], metric="qa_f1")
           for p, s in zip(predictions, samples)]
  else:
    per = [scoring.score_sample(task, p, s) for p, s in zip(predictions, samples)]
  by_key: dict[str, list[float]] = {}
  for s, sc in zip(samples, per):
    by_key.setdefault(score_key(task, s), []).append(sc)
  return {k: float(np.mean(v)) for k, v in by_key.items()}, per


def _with_budget(predict_fn):
  """predict(prompts, budgets) from a predict_fn taking (prompts) or (prompts, n): the latter
  is called once per distinct budget, on the prompts that have it."""
  try:
    params = [p for p in inspect.signature(predict_fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
  except (TypeError, ValueError):
    params = []
  if not (len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)):
    return lambda prompts, _: list(predict_fn(prompts))

  def predict(prompts, budgets):
    out = [None] * len(prompts)
    for n in dict.fromkeys(budgets):
      idx = [i for i, b in enumerate(budgets) if b == n]
      answers = list(predict_fn([prompts[i] for i in idx], n))
      if len(answers) != len(idx):
        raise ValueError(f"predict_fn returned {len(answers)} answers for {len(idx)} prompts.")
      for i, a in zip(idx, answers):
        out[i] = a
    return out
  return predict


def eval_stage(config, workdir: str, model) -> dict:
  """The eval a training stage runs at its end: config.eval on `model`, written to
  <workdir>/eval."""
  return run_eval(model, get_tokenizer(config.data), config.eval, paths.join(workdir, "eval"),
                  config=config, title=os.path.basename(paths.norm(workdir)))


def _text_cell(model, tokenizer, ecfg, task, length, predict, cache, *, haystack, auto,
               bos, rows):
  """({results row: score}, prediction records) of one decoded (task, length) cell; qa and
  qa_f1 share one decode through `cache`. A task too long for the length leaves the cell out."""
  key = ("qa" if task == "qa_f1" else task, length)
  if key not in cache:
    try:
      samples = task_samples(tokenizer, ecfg, task, length, haystack, auto=auto, rows=rows)
    except tasks_lib.TaskTooShortError as e:
      logging.warning("skipping %s at context length %d: %s", task, length, e)
      return {}, []
    preds = predict([s.prompt for s in samples],
                    answer_budgets(tokenizer, int(ecfg.max_new_tokens), samples))
    if len(preds) != len(samples):
      raise ValueError(f"predict_fn returned {len(preds)} answers for {len(samples)} prompts.")
    cache[key] = (samples, preds)
  samples, preds = cache[key]
  scores, per = score_text(task, samples, preds)
  records = [prediction_record(task, length, i, s, p, sc)
             for i, (s, p, sc) in enumerate(zip(samples, preds, per))]
  if ecfg.teacher_forced and model is not None and task != "qa_f1":
    scores[f"{task}_tf"] = logit_tasks.teacher_forced_accuracy(model, tokenizer, samples,
                                                   add_bos=bos)
  return scores, records


def run_eval(model, tokenizer=None, eval_cfg=None, out_dir: str | None = None, /, *,
             config=None, predict_fn: PredictFn | None = None, title: str = "eval") -> dict:
  """Evaluates tasks x context lengths; returns {task: {context_len: score}}.

  model: an LM (greedy cached decoding; also needed for mqar / perplexity), or None when
  predict_fn is given. predict_fn(prompts) -> answers replaces decoding for the text tasks
  (a predict_fn taking (prompts, max_new_tokens) also gets the cell's answer budget).
  eval_cfg: eval.* fields (default_eval_config()), or a config holding them under `eval`.
  config: the run config (data.* for perplexity and the held-out haystack).
  out_dir: where results.json, results.md, PNG plots and predictions.jsonl go (None: nowhere).
  Training stages call eval_stage(config, workdir, model) instead.
  """
  if eval_cfg is None:
    raise TypeError("run_eval(model, tokenizer, eval_cfg, out_dir): eval_cfg is missing.")
  ecfg = eval_cfg.eval if "eval" in eval_cfg else eval_cfg
  names, lengths = parse_tasks(ecfg.tasks), parse_lengths(ecfg.context_lengths)
  auto = lengths is None
  if model is None and predict_fn is None:
    raise ValueError("run_eval needs a model or a predict_fn(prompts) -> answers.")
  if tokenizer is None and any(n in TEXT_TASKS for n in names):
    raise ValueError("run_eval needs the tokenizer for text tasks: pass "
                     "refine_jax.data.get_tokenizer(run_config.data).")
  if predict_fn is not None:
    predict = _with_budget(predict_fn)
  else:
    predict = model_predictor(model, tokenizer, ecfg, config)
  haystack = _haystack(ecfg, config) if any(n.startswith(("niah", "variable")) for n in names) \
      else "noise"
  results: dict = {}
  records = []
  rows = None  # the QA files, read once for every cell (and for the auto lengths)
  file_tasks = [t for t in names if t in FILE_TASKS]
  if file_tasks:
    limit = int(ecfg.num_samples)
    rows = qa_files.load(_qa_path(ecfg, file_tasks[0]), None if auto or limit <= 0 else limit)
  cells = [(t, n) for t in names for n in _cell_lengths(t, lengths, rows)]
  # Every process computes (the model is sharded over all of them); one draws and writes.
  primary = jax.process_index() == 0
  bar = None
  if ecfg.progress and primary:
    bar = tqdm(total=len(cells), desc=title, dynamic_ncols=True)
  cache: dict = {}  # qa and qa_f1 share predictions
  for task, length in cells:
    if bar is not None:
      bar.set_postfix(task=task, len=length)
    if task in MODEL_TASKS:
      scores = logit_tasks.scores(model, config, ecfg, task, length)
    else:
      scores, recs = _text_cell(model, tokenizer, ecfg, task, length, predict, cache,
                                haystack=haystack, auto=auto, bos=add_bos(ecfg, config),
                                rows=rows)
      records += recs
    for name, value in scores.items():
      results.setdefault(name, {})[length] = float(value)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  if out_dir and primary:
    report.write_results(results, out_dir, title=title, plots=bool(ecfg.plots))
    if ecfg.save_predictions and records:
      paths.write_text(paths.join(out_dir, "predictions.jsonl"),
                       "".join(json.dumps(r) + "\n" for r in records))
  return results

