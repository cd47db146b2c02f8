"""Task scores, all in percent (0..100) except perplexity.

NIAH / variable tracking: case-insensitive substring match, mean over references (RULER).
The project's "qa" task: substring match of any reference in the first line of the prediction
(leading newlines skipped); qa_f1: LongBench token F1 (max over references).
Rows that name their own task (score_row) are scored on the RAW prediction exactly as the
paper's scorer (ReFINE's verl reward_score/{ruler,longbench}.py, which runs THUDM's LongBench
metrics) does: RULER QA (ruler_squadqa, ruler_hotpotqa) = substring match in the raw first
line; LongBench = each dataset's cut and metric (token F1, ROUGE-L of the `rouge` package,
TREC classification, fuzzywuzzy-style code similarity; passage count / retrieval as THUDM).
MQAR: accuracy of predicted tokens on the query positions.
"""

from __future__ import annotations

import collections
import difflib
import math
import re
import string
from typing import Sequence

import numpy as np
from rouge import Rouge

_ROUGE = Rouge()  # stateless between calls; the official scorer also keeps one


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
  """The project's own QA task ("qa"): string_match_any on the first line, leading newlines
  skipped. RULER QA rows (ruler_squadqa / ruler_hotpotqa) use ruler_qa, the official rule."""
  return string_match_any(first_line(prediction), references)


_CONTROL = re.compile(r"[\x00-\x1f]")


def ruler_qa(prediction: str, references: Sequence[str] | str) -> float:
  """RULER QA as ReFINE scores it: the RAW prediction's first line (a leading newline leaves
  nothing), stripped, control characters (\\x00-\\x1f) turned into newlines, stripped again;
  100 if any reference is a case-insensitive substring of that, else 0."""
  text = _CONTROL.sub("\n", prediction.split("\n")[0].strip()).strip().lower()
  return 100.0 * float(any(r.lower() in text for r in _refs(references)))


def rouge_l(prediction: str, references: Sequence[str] | str) -> float:
  """100 * max over references of the ROUGE-L F value of the `rouge` package (1.0.1: sentences
  split at ".", summary-level union LCS over distinct words), as LongBench calls it
  (Rouge().get_scores([pred], [ref], avg=True)); 0 where the package raises (an empty
  prediction, or RecursionError from its recursive LCS on very long sentences)."""
  best = 0.0
  for ref in _refs(references):
    try:
      f = _ROUGE.get_scores([prediction], [ref], avg=True)["rouge-l"]["f"]
    except Exception:  # pylint: disable=broad-except  (the official scorer's bare except)
      f = 0.0
    best = max(best, float(f))
  return 100.0 * best


def fuzz_ratio(a: str, b: str) -> int:
  """fuzzywuzzy 0.18.0's fuzz.ratio without python-Levenshtein (LongBench's install): 100 for
  equal strings, 0 when either is empty, else difflib's SequenceMatcher ratio (autojunk on)
  as a percent rounded with Python's round (half to even)."""
  if a == b:
    return 100
  if not a or not b:
    return 0
  return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_line(prediction: str) -> str:
  """LongBench lcc / repobench-p: the first line (leading newlines skipped) holding no
  backtick, '#' or '//'. With no such line, ReFINE's scorer keeps the whole raw prediction
  (THUDM's eval.py would score ""); the former is what the paper's numbers used."""
  for line in prediction.lstrip("\n").split("\n"):
    if "`" not in line and "#" not in line and "//" not in line:
      return line
  return prediction


def code_similarity(prediction: str, references: Sequence[str] | str) -> float:
  """LongBench code similarity: max over references of fuzz_ratio(code_line(pred), ref)."""
  line = code_line(prediction)
  return float(max(fuzz_ratio(line, r) for r in _refs(references)))


# The 50 TREC coarse/fine labels in LongBench's order, verbatim (its trec.jsonl all_classes;
# ReFINE's scorer carries the same list, "somethin" typo included): used when a row has none.
TREC_CLASSES = (
    "Food", "Date", "Order, rank", "Speed", "Disease and medicine",
    "Word with a special property", "Abbreviation", "Language", "Letter like a-z",
    "Other entity", "Animal", "Expression abbreviated", "Price", "Techniques and method",
    "Musical instrument", "Mountain", "Currency name", "Event", "Product", "State",
    "Individual", "Organ of body", "Reason", "Manner of an action", "City", "Religion",
    "Invention, book and other creative piece", "Distance, linear measure", "Temperature",
    "Postcode or other code", "Size, area and volume", "Sport", "Country", "Other location",
    "Lasting time of somethin", "Equivalent term", "Description of something", "Weight",
    "Vehicle", "Color", "Other number", "Definition of something", "Element and substance",
    "Description of a person", "Symbols and sign", "Number of something", "Plant",
    "Percent, fraction", "Group or organization of person", "Title of a person")


def classification(prediction: str, references: Sequence[str] | str,
                   all_classes: Sequence[str] | None = None) -> float:
  """LongBench classification (trec): the classes (all_classes, default TREC_CLASSES) that
  occur in the stripped prediction, in class-list order; then one pass drops each that is a
  proper substring of the reference, and, as the official loop removes from the list it is
  walking, the class right after a dropped one is never looked at. 100 / len(kept) if the
  reference was kept, else 0; max over references."""
  classes = tuple(all_classes) if all_classes else TREC_CLASSES
  pred = prediction.strip()
  best = 0.0
  for ref in _refs(references):
    found = [c for c in classes if c in pred]
    i = 0
    while i < len(found):
      if found[i] in ref and found[i] != ref:
        del found[i]  # the next class moves into slot i, and the walk goes on at i + 1
      i += 1
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


# LongBench (English + code): dataset -> metric, and how the RAW prediction is cut first, as
# ReFINE's scorer runs THUDM's metrics: "line" = up to the first newline (a leading newline
# leaves an empty answer), "lstrip_line" = the first line after leading newlines, None = whole.
# passage_count / passage_retrieval_en (not in ReFINE's set) follow THUDM's eval.py (no cut).
# Chinese tasks need a word segmenter and are refused rather than scored differently.
LONGBENCH_METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "triviaqa": "qa_f1",
    "gov_report": "rouge_l", "qmsum": "rouge_l", "multi_news": "rouge_l", "samsum": "rouge_l",
    "trec": "classification", "passage_count": "count", "passage_retrieval_en": "retrieval",
    "lcc": "code_sim", "repobench-p": "code_sim",
}
LONGBENCH_CUT = {
    **{name: "line" for name in ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa",
                                 "2wikimqa", "musique")},
    **{name: "lstrip_line" for name in ("trec", "triviaqa", "samsum")},
}
LONGBENCH_FIRST_LINE = ("trec", "triviaqa", "samsum", "lsht")  # lstrip_line (THUDM's list)
_LONGBENCH_ZH = ("multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh")
RULER_QA_TASKS = ("ruler_squadqa", "ruler_hotpotqa")


def longbench_cut(dataset: str, prediction: str) -> str:
  """The part of the raw prediction LongBench scores for `dataset`."""
  cut = LONGBENCH_CUT.get(dataset[:-2] if dataset.endswith("_e") else dataset)
  if cut == "line":
    return prediction.split("\n")[0]
  if cut == "lstrip_line":
    return prediction.lstrip("\n").split("\n")[0]
  return prediction


def longbench_score(dataset: str, prediction: str, references: Sequence[str] | str,
                    all_classes: Sequence[str] | None = None) -> float:
  """One LongBench row scored as ReFINE's scorer scores `dataset` (percent), on the RAW
  prediction (this function does the cutting)."""
  name = dataset[:-2] if dataset.endswith("_e") else dataset  # LongBench-E files
  if name in _LONGBENCH_ZH:
    raise ValueError(f"LongBench dataset {dataset!r} is Chinese (needs jieba segmentation); "
                     "only the English and code datasets are scored here.")
  if name not in LONGBENCH_METRIC:
    raise ValueError(f"unknown LongBench dataset {dataset!r}; known: "
                     f"{', '.join(sorted(LONGBENCH_METRIC))}.")
  prediction = longbench_cut(name, prediction)
  metric = LONGBENCH_METRIC[name]
  if metric == "classification":
    return classification(prediction, references, all_classes)
  if metric == "rouge_l":
    prediction = prediction.strip()  # ReFINE strips before ROUGE (THUDM does not)
  return {"qa_f1": qa_f1, "rouge_l": rouge_l, "count": count_score,
          "retrieval": retrieval_score, "code_sim": code_similarity}[metric](prediction,
                                                                           references)


def known_task(task: str) -> bool:
  """Whether score_row can score rows of `task`."""
  name = task[:-2] if task.endswith("_e") else task
  return (task in RULER_QA_TASKS or name in LONGBENCH_METRIC or task in TASK_METRIC
          or task in METRICS)


def known_tasks() -> list[str]:
  return sorted(set(RULER_QA_TASKS) | set(LONGBENCH_METRIC) | set(TASK_METRIC) | {"qa_f1"})


def score_row(task: str, prediction: str, references: Sequence[str] | str,
              all_classes: Sequence[str] | None = None) -> float:
  """One row scored by its own task (percent): RULER QA (ruler_squadqa, ruler_hotpotqa),
  LongBench datasets, the project's tasks (TASK_METRIC) or a metric name (e.g. qa_f1)."""
  if task in RULER_QA_TASKS:
    return ruler_qa(prediction, references)
  name = task[:-2] if task.endswith("_e") else task
  if name in LONGBENCH_METRIC or name in _LONGBENCH_ZH:
    return longbench_score(task, prediction, references, all_classes)
  metric = TASK_METRIC.get(task, task)
  if metric not in METRICS:
    raise ValueError(f"unknown task {task!r}; known: {', '.join(known_tasks())}.")
  return METRICS[metric](prediction, references)


def score_sample(task: str, prediction: str, sample) -> float:
  """Score of one eval sample (a TaskSample): by the row's own task when its file named one
  (metadata "dataset": a LongBench dataset or ruler_squadqa / ruler_hotpotqa), else by the
  task's metric."""
  meta = getattr(sample, "metadata", None) or {}
  if meta.get("dataset"):
    return score_row(str(meta["dataset"]), prediction, sample.answers, meta.get("all_classes"))
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
    "ruler_qa": ruler_qa,
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
