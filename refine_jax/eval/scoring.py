"""Task scores, all in percent (0..100) except perplexity.

NIAH / variable tracking: case-insensitive substring match, mean over references (RULER).
QA (RULER): substring match of any reference in the FIRST LINE of the prediction, as the
official evaluators score it (a model that keeps writing after its answer is not credited for
what it wrote later); qa_f1: LongBench token F1 (max over references).
LongBench files (rows with a "dataset" field): each dataset's own metric (longbench_score):
token F1, ROUGE-L (rouge-score), classification over all_classes, passage count / retrieval,
code edit similarity (rapidfuzz), with first-line truncation where LongBench applies it.
MQAR: accuracy of predicted tokens on the query positions.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Sequence

import numpy as np
from rapidfuzz import fuzz


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


def first_line(prediction: str) -> str:
  """The prediction up to its first newline (leading newlines skipped)."""
  return prediction.lstrip("\n").split("\n")[0]


def qa_first_line(prediction: str, references: Sequence[str] | str) -> float:
  """RULER QA: string_match_any on the first line of the prediction."""
  return string_match_any(first_line(prediction), references)


def rouge_l(prediction: str, references: Sequence[str] | str) -> float:
  """100 * max over references of the ROUGE-L F-measure (rouge-score's tokenizer)."""
  # pylint: disable-next=g-import-not-at-top  (pulls nltk: ~1 s, paid only by ROUGE-L rows)
  from rouge_score import rouge_scorer
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  return 100.0 * max(scorer.score(r, prediction)["rougeL"].fmeasure for r in _refs(references))


def classification(prediction: str, references: Sequence[str] | str,
                   all_classes: Sequence[str]) -> float:
  """LongBench classification (trec, lsht): the class names found in the prediction, minus
  those that are only part of the reference's name; 100 / (how many) if the reference is
  among them, else 0. Max over references."""
  if not all_classes:
    raise ValueError("classification needs the row's all_classes (LongBench's field).")
  best = 0.0
  for ref in _refs(references):
    found = [c for c in all_classes if c in prediction]
    found = [c for c in found if not (c in ref and c != ref)]
    if ref in found:
      best = max(best, 100.0 / len(found))
  return best


def count_score(prediction: str, references: Sequence[str] | str) -> float:
  """LongBench passage_count: 100 * share of the numbers in the prediction equal to the
  reference count."""
  numbers = re.findall(r"\d+", prediction)
  if not numbers:
    return 0.0
  return 100.0 * max(sum(n == str(r) for n in numbers) / len(numbers)
                     for r in _refs(references))


def retrieval_score(prediction: str, references: Sequence[str] | str) -> float:
  """LongBench passage_retrieval_en: the reference reads "Paragraph N"; 100 * share of the
  numbers in the prediction equal to N."""
  numbers = re.findall(r"\d+", prediction)
  best = 0.0
  for ref in _refs(references):
    want = re.findall(r"Paragraph (\d+)", ref)
    if want and numbers:
      best = max(best, 100.0 * sum(n == want[0] for n in numbers) / len(numbers))
  return best


def code_similarity(prediction: str, references: Sequence[str] | str) -> float:
  """LongBench lcc / repobench-p: edit similarity (rapidfuzz ratio, 0..100) between the
  reference and the first prediction line that is not a comment or a code fence."""
  lines = prediction.lstrip("\n").split("\n")
  code = next((l for l in lines if "`" not in l and "#" not in l and "//" not in l), lines[0])
  return max(float(fuzz.ratio(code, r)) for r in _refs(references))


# LongBench (English + the language-independent tasks): dataset -> metric; datasets whose
# prediction LongBench cuts to its first line. Chinese tasks need a word segmenter and are
# refused with a clear error rather than scored differently from the paper.
LONGBENCH_METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "triviaqa": "qa_f1",
    "gov_report": "rouge_l", "qmsum": "rouge_l", "multi_news": "rouge_l", "samsum": "rouge_l",
    "trec": "classification", "passage_count": "count", "passage_retrieval_en": "retrieval",
    "lcc": "code_sim", "repobench-p": "code_sim",
}
LONGBENCH_FIRST_LINE = ("trec", "triviaqa", "samsum", "lsht")
_LONGBENCH_ZH = ("multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh")


def longbench_score(dataset: str, prediction: str, references: Sequence[str] | str,
                    all_classes: Sequence[str] | None = None) -> float:
  """One LongBench row scored as LongBench scores `dataset` (percent)."""
  name = dataset[:-2] if dataset.endswith("_e") else dataset  # LongBench-E files
  if name in _LONGBENCH_ZH:
    raise ValueError(f"LongBench dataset {dataset!r} is Chinese (needs jieba segmentation); "
                     "only the English and code datasets are scored here.")
  if name not in LONGBENCH_METRIC:
    raise ValueError(f"unknown LongBench dataset {dataset!r}; known: "
                     f"{', '.join(sorted(LONGBENCH_METRIC))}.")
  if name in LONGBENCH_FIRST_LINE:
    prediction = first_line(prediction)
  metric = LONGBENCH_METRIC[name]
  if metric == "classification":
    return classification(prediction, references, all_classes or ())
  return {"qa_f1": qa_f1, "rouge_l": rouge_l, "count": count_score,
          "retrieval": retrieval_score, "code_sim": code_similarity}[metric](prediction,
                                                                           references)


def score_sample(task: str, prediction: str, sample) -> float:
  """Score of one eval sample (a TaskSample): by its LongBench dataset when the row named one
  (metadata "dataset"), else by the task's metric."""
  meta = getattr(sample, "metadata", None) or {}
  if meta.get("dataset"):
    return longbench_score(str(meta["dataset"]), prediction, sample.answers,
                           meta.get("all_classes"))
  return score_task(task, [prediction], [sample.answers])


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
    "qa_first_line": qa_first_line,
    "qa_f1": qa_f1,
    "rouge_l": rouge_l,
    "count": count_score,
    "retrieval": retrieval_score,
    "code_sim": code_similarity,
}

# Default metric per task name (task names as in refine_jax.data.tasks).
TASK_METRIC = {
    "niah_single": "string_match_all",
    "niah_multikey": "string_match_all",
    "niah_multivalue": "string_match_all",
    "niah_multiquery": "string_match_all",
    "variable_tracking": "string_match_all",
    "qa": "qa_first_line",
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
