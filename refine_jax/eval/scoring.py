"""Task scores, all in percent (0..100) except perplexity.

NIAH / variable tracking: case-insensitive substring match, mean over references (RULER).
QA: substring match of any reference, or LongBench token F1 (max over references).
MQAR: accuracy of predicted tokens on the query positions.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Sequence

import numpy as np


def _refs(references) -> tuple[str, ...]:
  refs = (references,) if isinstance(references, str) else tuple(references)
  if not refs:
    raise ValueError("references is empty: give at least one reference answer.")
  return refs


def string_match_all(prediction: str, references: Sequence[str] | str) -> float:
  """100 * fraction of references found (case-insensitive) in the prediction."""
  refs, pred = _refs(references), prediction.lower()
  return 100.0 * sum(r.lower() in pred for r in refs) / len(refs)


def string_match_any(prediction: str, references: Sequence[str] | str) -> float:
  """100 if any reference is found (case-insensitive) in the prediction, else 0."""
  pred = prediction.lower()
  return 100.0 * float(any(r.lower() in pred for r in _refs(references)))


def normalize_answer(text: str) -> str:
  """SQuAD/LongBench normalisation: lower case, drop punctuation and articles, squeeze spaces."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
  common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(ref_tokens)
  return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, references: Sequence[str] | str) -> float:
  """100 * max over references of the token F1 of the normalised strings."""
  pred = normalize_answer(prediction).split()
  return 100.0 * max(_f1(pred, normalize_answer(r).split()) for r in _refs(references))


def mqar_accuracy(predictions, targets, query_mask) -> float:
  """100 * mean of (predictions == targets) over positions where query_mask is set.
  predictions: token ids [..., T] (e.g. logits.argmax(-1)), same shape as targets/mask."""
  pred, tgt, mask = np.asarray(predictions), np.asarray(targets), np.asarray(query_mask)
  if pred.shape != tgt.shape or tgt.shape != mask.shape:
    raise ValueError(f"predictions {pred.shape}, targets {tgt.shape} and query_mask "
                     f"{mask.shape} must have the same shape.")
  total = float(mask.sum())
  if total == 0:
    raise ValueError("query_mask selects no positions.")
  return 100.0 * float(((pred == tgt) * mask).sum()) / total


def perplexity(nll_sum: float, token_count: float) -> float:
  """exp(summed negative log-likelihood / number of scored tokens)."""
  if token_count <= 0:
    raise ValueError(f"token_count={token_count} must be > 0.")
  return math.exp(float(nll_sum) / float(token_count))


METRICS = {
    "string_match_all": string_match_all,
    "string_match_any": string_match_any,
    "qa_f1": qa_f1,
}

# Default metric per task name (task names as in refine_jax.data.tasks).
TASK_METRIC = {
    "niah_single": "string_match_all",
    "niah_multikey": "string_match_all",
    "niah_multivalue": "string_match_all",
    "niah_multiquery": "string_match_all",
    "variable_tracking": "string_match_all",
    "qa": "string_match_any",
}


def score_task(task: str, predictions: Sequence[str], references: Sequence[Sequence[str]],
               metric: str | None = None) -> float:
  """Mean score of a task's predictions (percent); metric defaults to TASK_METRIC[task]."""
  name = metric or TASK_METRIC.get(task)
  if name not in METRICS:
    raise ValueError(f"no metric for task={task!r} (metric={metric!r}); choose one of "
                     f"{sorted(METRICS)}.")
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
  fn = METRICS[name]
  return float(np.mean([fn(p, r) for p, r in zip(predictions, references)]))
