"""Eval tasks read from the model's logits rather than from decoded text: MQAR accuracy, the
recall stream's scores, held-out perplexity, and teacher-forced answer accuracy (<task>_tf).

    logit_tasks.scores(model, run_config, eval_cfg, task, context_length) -> {row: score}
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from refine_jax.data import mqar, pipeline, recall
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.eval import scoring
from refine_jax.eval.nll import ntp_eval
from refine_jax.losses import token_nll


def mqar_score(model, ecfg, length: int) -> float:
  """MQAR accuracy (percent) of the model's argmax over one batch of held-out sequences."""
  batch = mqar.mqar_batch(int(ecfg.num_samples), split="eval", base_seed=int(ecfg.base_seed),
                               seq_len=length, num_kv_pairs=int(ecfg.mqar_kv_pairs),
                               vocab_size=int(ecfg.mqar_vocab))
  graphdef, state = nnx.split(model)
  pred = np.asarray(_argmax_fn(graphdef)(state, jnp.asarray(batch["inputs"])))
  return scoring.mqar_accuracy(pred, batch["targets"], batch["query_mask"])


def recall_scores(model, config, ecfg, length: int, *, per_row: bool = False):
  """Held-out recall rows of `length` tokens (eval stream, base eval.base_seed, the run's
  data.recall): recall_em = percent of queries whose whole value is argmax-right given the true
  prefix, which is exactly greedy decoding's exact match (greedy follows the true prefix until
  its first wrong token); recall_tf = percent of value tokens right; recall_nll / recall_value_nll
  = mean NLL (nats) over all tokens / value tokens. per_row: also {recall_em, recall_tf: [rows]}
  (each row's own percent: their spread gives a standard error)."""
  b = recall.batch(get_tokenizer(config.data), int(length), int(ecfg.num_samples),
                   base_seed=int(ecfg.base_seed), spec=recall.RecallSpec.of(config.data.recall),
                   add_bos=bool(config.data.add_bos))
  graphdef, state = nnx.split(model)
  fn, rows = _pred_nll_fn(graphdef), max(1, int(ecfg.batch_size))
  outs = [fn(state, jnp.asarray(b["inputs"][i:i + rows]), jnp.asarray(b["targets"][i:i + rows]))
          for i in range(0, len(b["inputs"]), rows)]
  pred_BT = np.concatenate([np.asarray(p) for p, _ in outs])
  nll_BT = np.concatenate([np.asarray(n) for _, n in outs])
  scores = value_scores(pred_BT, nll_BT, b["targets"], b["value_mask"])
  if not per_row:
    return scores
  return scores, [value_scores(pred_BT[r:r + 1], nll_BT[r:r + 1], b["targets"][r:r + 1],
                               b["value_mask"][r:r + 1]) for r in range(len(pred_BT))]


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


def scores(model, config, ecfg, task, length) -> dict[str, float]:
  """{results row: score} of a task read from logits (mqar, recall, perplexity)."""
  if model is None:
    raise ValueError(f"task {task!r} needs a model (it reads logits), not a predict_fn.")
  if task == "mqar":
    return {task: mqar_score(model, ecfg, length)}
  if config is None:
    raise ValueError(f"task {task!r} needs the run config (data.*); pass config=.")
  if task == "recall":
    return recall_scores(model, config, ecfg, length)
  return {task: perplexity_score(model, config, ecfg, length)}
