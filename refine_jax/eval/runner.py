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

import functools
import inspect
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from refine_jax import paths
from refine_jax.data import pipeline, recall
from refine_jax.data import tasks as tasks_lib
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.eval import decode, qa_files, report, scoring
from refine_jax.eval.nll import ntp_eval
from refine_jax.losses import token_nll

TEXT_TASKS = tasks_lib.TASK_NAMES + ("qa", "qa_f1")
MODEL_TASKS = ("mqar", "perplexity", "recall")
ALL_TASKS = TEXT_TASKS + MODEL_TASKS

PredictFn = Callable[[Sequence[str]], Sequence[str]]


def default_eval_config() -> ml_collections.ConfigDict:
  """Every eval.* field and its default (configs/eval_*.py start from this)."""
  c = ml_collections.ConfigDict()
  # Comma-separated: niah_single, niah_multikey, niah_multivalue, niah_multiquery,
  # variable_tracking, qa (substring match of any reference), qa_f1 (LongBench token F1; the
  # same predictions as qa), mqar, perplexity, recall (-> recall_em, recall_tf, recall_nll,
  # recall_value_nll; needs data.recall in the run config).
  c.tasks = "niah_single,niah_multikey,niah_multivalue,niah_multiquery,variable_tracking"
  c.context_lengths = "256,512"  # prompt tokens per sample, one column each
  c.num_samples = 8              # samples per (task, context length)
  c.batch_size = 8               # prompts decoded together
  c.max_new_tokens = 0           # 0: the rows' max_gen_tokens (ReFINE LongBench files), else
                                 # longest reference answer of the batch + 8 tokens
  c.base_seed = 0                # eval seed stream: sample_seed("eval", i, base_seed)
  c.haystack = "noise"           # "noise" (RULER's), "held_out" (held-out corpus text) or a .txt path
  c.num_needles = 4              # multikey / multivalue / multiquery needles
  c.vt_hops = 4                  # variable tracking chain length
  c.qa_path = ""                 # qa / qa_f1 rows: comma-separated files or globs, jsonl or
                                 # parquet, local or gs:// (eval/qa_files.py: ReFINE RULER QA
                                 # and LongBench parquet, THUDM LongBench jsonl, prompt/answer,
                                 # context/input/answers); each row scored by its own task
  c.mqar_kv_pairs = 8            # key-value pairs per MQAR sequence (length = context length)
  c.mqar_vocab = 256             # MQAR token ids stay in [0, mqar_vocab) (bytes for the byte tokenizer)
  c.ppl_batches = 2              # held-out batches per perplexity column
  c.teacher_forced = False       # also <task>_tf: argmax accuracy on the true answer tokens
                                 # given prompt + true answer prefix (moves before exact match)
  c.add_bos = True
  c.progress = True              # tqdm bar over (task, length) cells
  c.plots = True                 # PNG plots beside results.json
  c.save_predictions = True      # predictions.jsonl (prompt tail, prediction, references, score)
  return c


def _split(value) -> list[str]:
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]


def parse_lengths(value) -> list[int]:
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


def task_samples(tokenizer, ecfg, task: str, length: int, haystack="noise"):
  """The eval samples of one (task, context length) cell."""
  n = int(ecfg.num_samples)
  if task in ("qa", "qa_f1"):
    if not ecfg.qa_path:
      raise ValueError(f"task {task!r} needs eval.qa_path ({qa_files.LAYOUTS}).")
    return qa_files.samples(ecfg.qa_path, tokenizer, length, limit=n)
  kwargs = {"haystack": haystack}
  if task.startswith("niah_"):
    kwargs["num_needles"] = int(ecfg.num_needles)
  elif task == "variable_tracking":
    kwargs["num_hops"] = int(ecfg.vt_hops)
  return [tasks_lib.make_task(task, tokenizer, length,
                              tasks_lib.sample_seed("eval", i, int(ecfg.base_seed)), **kwargs)
          for i in range(n)]


def model_predictor(model, tokenizer, ecfg):
  """predict(prompts, max_new_tokens) -> answers, by greedy cached decoding of `model`."""

  def predict(prompts, max_new_tokens):
    return decode.decode_text(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                              add_bos=bool(ecfg.add_bos), batch_size=int(ecfg.batch_size))
  return predict


def _max_new_tokens(tokenizer, ecfg, samples) -> int:
  """eval.max_new_tokens; 0: the rows' own max_gen_tokens (ReFINE LongBench files) when every
  row has one, else the longest target + 8 tokens."""
  if int(ecfg.max_new_tokens) > 0:
    return int(ecfg.max_new_tokens)
  own = [(s.metadata or {}).get("max_gen_tokens") for s in samples]
  if own and all(isinstance(n, int) and n > 0 for n in own):
    return max(own)
  return max(len(tokenizer.encode(s.target)) for s in samples) + 8


def prediction_record(task: str, length: int, index: int, sample, prediction: str,
                      score: float) -> dict:
  """One predictions.jsonl row: source (the data file, or "generated:<task>"), row (0-based
  in that source), task (what the score is by: the row's own task, or the eval task for
  generated rows and qa_f1), context_length, prediction (raw), references, score (percent);
  prompt_tail for reading. `python -m refine_jax.eval.score` re-scores such a file."""
  meta = getattr(sample, "metadata", None) or {}
  if meta.get("source") is not None and meta.get("row") is not None:
    source, row = str(meta["source"]), int(meta["row"])
    own = "qa_f1" if task == "qa_f1" else (meta.get("dataset") or "qa")
  else:
    source, row, own = f"generated:{task}", int(index), task
  return {"source": source, "row": row, "task": own, "context_length": int(length),
          "prediction": prediction, "references": list(sample.answers), "score": float(score),
          "prompt_tail": sample.prompt[-120:]}


def _score_text(task, samples, predictions):
  if task == "qa_f1":  # token F1 asked for explicitly, whatever the rows' dataset
    per = [scoring.score_task("qa", [p], [s.answers], metric="qa_f1")
           for p, s in zip(predictions, samples)]
  else:  # LongBench rows by their dataset's metric, the rest by the task's
    per = [scoring.score_sample(task, p, s) for p, s in zip(predictions, samples)]
  return float(np.mean(per)), per


def mqar_score(model, ecfg, length: int) -> float:
  """MQAR accuracy (percent) of the model's argmax over one batch of held-out sequences."""
  batch = tasks_lib.mqar_batch(int(ecfg.num_samples), split="eval", base_seed=int(ecfg.base_seed),
                               seq_len=length, num_kv_pairs=int(ecfg.mqar_kv_pairs),
                               vocab_size=int(ecfg.mqar_vocab))
  graphdef, state = nnx.split(model)
  pred = np.asarray(_argmax_fn(graphdef)(state, jnp.asarray(batch["inputs"])))
  return scoring.mqar_accuracy(pred, batch["targets"], batch["query_mask"])


def recall_scores(model, config, ecfg, length: int) -> dict[str, float]:
  """Held-out recall rows of `length` tokens (eval stream, base eval.base_seed, the run's
  data.recall): recall_em = percent of queries whose whole value is argmax-right given the true
  prefix, which is exactly greedy decoding's exact match (greedy follows the true prefix until
  its first wrong token); recall_tf = percent of value tokens right; recall_nll / recall_value_nll
  = mean NLL (nats) over all tokens / value tokens."""
  b = recall.batch(get_tokenizer(config.data), int(length), int(ecfg.num_samples),
                   base_seed=int(ecfg.base_seed), spec=recall.RecallSpec.of(config.data.recall),
                   add_bos=bool(config.data.add_bos))
  graphdef, state = nnx.split(model)
  fn, rows = _pred_nll_fn(graphdef), max(1, int(ecfg.batch_size))
  outs = [fn(state, jnp.asarray(b["inputs"][i:i + rows]), jnp.asarray(b["targets"][i:i + rows]))
          for i in range(0, len(b["inputs"]), rows)]
  pred_BT = np.concatenate([np.asarray(p) for p, _ in outs])
  nll_BT = np.concatenate([np.asarray(n) for _, n in outs])
  return value_scores(pred_BT, nll_BT, b["targets"], b["value_mask"])


def value_scores(pred_BT, nll_BT, targets_BT, value_mask_BT) -> dict[str, float]:
  """recall_* scores from argmax predictions and per-token NLL; a query's value is one run of
  consecutive value_mask positions (two values never touch: a key and '=' sit between)."""
  m = np.asarray(value_mask_BT) > 0
  hit = (np.asarray(pred_BT) == np.asarray(targets_BT)) & m
  starts = m & ~np.pad(m, ((0, 0), (1, 0)))[:, :-1]
  run = np.cumsum(starts.reshape(-1)).reshape(m.shape)  # value id per position (global)
  n_values = int(starts.sum())
  wrong = np.zeros(n_values + 1, bool)
  np.logical_or.at(wrong, run[m & ~hit], True)
  return {"recall_em": 100.0 * (n_values - int(wrong[1:].sum())) / max(n_values, 1),
          "recall_tf": 100.0 * float(hit.sum()) / max(int(m.sum()), 1),
          "recall_nll": float(np.mean(nll_BT)),
          "recall_value_nll": float(np.asarray(nll_BT)[m].mean()) if m.any() else float("nan")}


@functools.lru_cache(maxsize=8)
def _pred_nll_fn(graphdef):

  def fn(state, ids_BT, targets_BT):
    logits_BTV = nnx.merge(graphdef, state)(ids_BT).logits
    return logits_BTV.argmax(-1), token_nll(logits_BTV, targets_BT)
  return jax.jit(fn)


def teacher_forced_accuracy(model, tokenizer, samples, *, add_bos: bool = True) -> float:
  """Percent of target tokens (sample.target) that the model's argmax predicts given the
  prompt and the true target prefix; one right-padded forward (causal, so padding is inert)."""
  rows = []
  for s in samples:
    prompt = ([tokenizer.bos_id] if add_bos else []) + tokenizer.encode(s.prompt)
    rows.append((prompt, tokenizer.encode(s.target)))
  width = max(len(p) + len(t) for p, t in rows)
  ids_BT = np.full((len(rows), width), tokenizer.pad_id, np.int32)
  for r, (p, t) in enumerate(rows):
    ids_BT[r, :len(p) + len(t)] = p + t
  graphdef, state = nnx.split(model)
  pred_BT = np.asarray(_argmax_fn(graphdef)(state, jnp.asarray(ids_BT)))
  hits = total = 0
  for r, (p, t) in enumerate(rows):
    pos = np.arange(len(p) - 1, len(p) + len(t) - 1)  # logits at pos predict token pos + 1
    hits += int((pred_BT[r, pos] == ids_BT[r, pos + 1]).sum())
    total += len(t)
  return 100.0 * hits / max(total, 1)


@functools.lru_cache(maxsize=8)
def _argmax_fn(graphdef):
  return jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids).logits.argmax(-1))


@functools.lru_cache(maxsize=8)
def _nll_step(graphdef):
  return jax.jit(lambda state, batch: ntp_eval(nnx.merge(graphdef, state), batch))


def perplexity_score(model, config, ecfg, length: int) -> float:
  """Held-out perplexity with sequences of `length` tokens (data.* from the run config)."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.data.seq_len = int(length)
  batches = pipeline.make_eval_batches(cfg, int(ecfg.ppl_batches),
                                       batch_size=int(ecfg.batch_size))
  graphdef, state = nnx.split(model)
  step = _nll_step(graphdef)
  nll, tokens = 0.0, 0.0
  for b in batches:
    out = jax.device_get(step(state, {k: np.asarray(v) for k, v in b.items()}))
    nll += float(out["nll_sum"])
    tokens += float(out["tokens"])
  return scoring.perplexity(nll, tokens)


def _with_budget(predict_fn):
  """predict(prompts, max_new_tokens) from a predict_fn taking (prompts) or (prompts, n)."""
  try:
    params = [p for p in inspect.signature(predict_fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
  except (TypeError, ValueError):
    params = []
  if len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params):
    return lambda prompts, n: list(predict_fn(prompts, n))
  return lambda prompts, _: list(predict_fn(prompts))


def stage_eval_config() -> ml_collections.ConfigDict:
  """The light default a training stage uses when its config has no eval.* section."""
  c = default_eval_config()
  c.tasks = "niah_single,variable_tracking,perplexity"
  c.context_lengths = "512,1024"
  c.num_samples = 4
  c.teacher_forced = True  # tiny CPU models score 0 on exact match; <task>_tf still moves
  return c


def eval_stage(config, workdir: str, model) -> dict:
  """The eval a training stage runs at its end: config.eval (or stage_eval_config()) on
  `model`, written to <workdir>/eval."""
  ecfg = config.eval if "eval" in config else stage_eval_config()
  return run_eval(model, get_tokenizer(config.data), ecfg, paths.join(workdir, "eval"),
                  config=config, title=os.path.basename(paths.norm(workdir)))


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
  if model is None and predict_fn is None:
    raise ValueError("run_eval needs a model or a predict_fn(prompts) -> answers.")
  if tokenizer is None and any(n in TEXT_TASKS for n in names):
    raise ValueError("run_eval needs the tokenizer for text tasks: pass "
                     "refine_jax.data.get_tokenizer(run_config.data).")
  if predict_fn is not None:
    predict = _with_budget(predict_fn)
  else:
    predict = model_predictor(model, tokenizer, ecfg)
  haystack = _haystack(ecfg, config) if any(n.startswith(("niah", "variable")) for n in names) \
      else "noise"
  results: dict = {}
  records = []
  cells = [(t, n) for t in names for n in lengths]
  # Every process computes (the model is sharded over all of them); one draws and writes.
  primary = jax.process_index() == 0
  bar = None
  if ecfg.progress and primary:
    bar = tqdm(total=len(cells), desc=title, dynamic_ncols=True)
  cache: dict = {}  # qa and qa_f1 share predictions
  for task, length in cells:
    tf = None
    if bar is not None:
      bar.set_postfix(task=task, len=length)
    if task in MODEL_TASKS:
      if model is None:
        raise ValueError(f"task {task!r} needs a model (it reads logits), not a predict_fn.")
      if task == "mqar":
        score = mqar_score(model, ecfg, length)
      elif task == "recall":
        if config is None:
          raise ValueError("task 'recall' needs the run config (data.recall); pass config=.")
        for name, value in recall_scores(model, config, ecfg, length).items():
          results.setdefault(name, {})[length] = float(value)
        if bar is not None:
          bar.update(1)
        continue
      else:
        if config is None:
          raise ValueError("task 'perplexity' needs the run config (data.*); pass config=.")
        score = perplexity_score(model, config, ecfg, length)
    else:
      key = ("qa" if task == "qa_f1" else task, length)
      if key not in cache:
        try:
          samples = task_samples(tokenizer, ecfg, task, length, haystack)
        except tasks_lib.TaskTooShortError as e:  # leave the cell out, keep the others
          logging.warning("skipping %s at context length %d: %s", task, length, e)
          if bar is not None:
            bar.update(1)
          continue
        preds = predict([s.prompt for s in samples], _max_new_tokens(tokenizer, ecfg, samples))
        if len(preds) != len(samples):
          raise ValueError(f"predict_fn returned {len(preds)} answers for {len(samples)} prompts.")
        cache[key] = (samples, preds)
      samples, preds = cache[key]
      score, per = _score_text(task, samples, preds)
      records += [prediction_record(task, length, i, s, p, sc)
                  for i, (s, p, sc) in enumerate(zip(samples, preds, per))]
      if ecfg.teacher_forced and model is not None and task != "qa_f1":
        tf = teacher_forced_accuracy(model, tokenizer, samples, add_bos=bool(ecfg.add_bos))
    results.setdefault(task, {})[length] = float(score)
    if tf is not None:
      results.setdefault(f"{task}_tf", {})[length] = tf
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

