"""Scoring on hand-made predictions: right answers score 100, wrong ones 0, partial in between."""

import math

import numpy as np
import pytest

from refine_jax.eval import scoring


def test_string_match_all_is_case_insensitive_mean_over_references():
  refs = ["1234567", "Blue-Harbor"]
  assert scoring.string_match_all("the numbers are 1234567 and blue-harbor.", refs) == 100.0
  assert scoring.string_match_all("only 1234567 here", refs) == 50.0
  assert scoring.string_match_all("nothing", refs) == 0.0
  assert scoring.string_match_all("7654321", "1234567") == 0.0


def test_string_match_any():
  assert scoring.string_match_any("It was PARIS.", ["London", "paris"]) == 100.0
  assert scoring.string_match_any("Rome", ["London", "paris"]) == 0.0


def test_qa_f1_normalisation_and_partial_overlap():
  assert scoring.normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
  assert scoring.qa_f1("the Eiffel Tower.", ["Eiffel tower", "a tower"]) == 100.0
  assert scoring.qa_f1("banana", ["Eiffel tower"]) == 0.0
  # pred {eiffel, tower, paris} vs ref {eiffel, tower}: P = 2/3, R = 1, F1 = 0.8.
  assert scoring.qa_f1("Eiffel tower Paris", "Eiffel tower") == pytest.approx(80.0)


def test_mqar_accuracy_counts_only_query_positions():
  targets = np.array([[5, 0, 7, 0], [9, 0, 0, 3]])
  mask = np.array([[1, 0, 1, 0], [1, 0, 0, 1]], np.float32)
  assert scoring.mqar_accuracy(targets, targets, mask) == 100.0
  wrong_off_query = targets.copy()
  wrong_off_query[:, 1] = 42  # not a query position: ignored
  assert scoring.mqar_accuracy(wrong_off_query, targets, mask) == 100.0
  half = targets.copy()
  half[0, 0], half[1, 3] = 1, 1
  assert scoring.mqar_accuracy(half, targets, mask) == 50.0
  assert scoring.mqar_accuracy(np.zeros_like(targets) + 99, targets, mask) == 0.0
  with pytest.raises(ValueError, match="same shape"):
    scoring.mqar_accuracy(targets[:, :2], targets, mask)


def test_perplexity_and_score_task():
  assert scoring.perplexity(4 * math.log(3.0), 4) == pytest.approx(3.0)
  with pytest.raises(ValueError, match="token_count"):
    scoring.perplexity(1.0, 0)
  preds = ["... are 1111111, 2222222.", "are 1111111."]
  refs = [["1111111", "2222222"], ["1111111", "2222222"]]
  assert scoring.score_task("niah_multivalue", preds, refs) == pytest.approx(75.0)
  assert scoring.score_task("qa", ["x 2222222"], [refs[0]]) == 100.0
  with pytest.raises(ValueError, match="no metric"):
    scoring.score_task("unknown_task", preds, refs)
  with pytest.raises(ValueError, match="empty"):
    scoring.string_match_all("x", [])


def test_ruler_qa_scores_the_first_line_only():
  refs = ["Paris"]
  assert scoring.score_task("qa", ["Paris\nand more"], [refs]) == 100.0
  assert scoring.score_task("qa", ["\n\n paris is it"], [refs]) == 100.0  # leading newlines
  assert scoring.score_task("qa", ["London\nno wait, Paris"], [refs]) == 0.0


def test_longbench_metrics_by_dataset():
  """Each dataset's LongBench metric, on values worked out by hand."""
  lb = scoring.longbench_score
  # token F1 (normalised): pred {cat, sat}, ref {cat, sat, on, mat}: P=1, R=1/2 -> 2/3.
  assert lb("hotpotqa", "The cat sat.", ["cat sat on mat"]) == pytest.approx(200 / 3)
  assert lb("hotpotqa_e", "cat sat on mat", ["cat sat on mat"]) == 100.0  # LongBench-E
  # triviaqa cuts to the first line first.
  assert lb("triviaqa", "nothing\ncat sat on mat", ["cat sat on mat"]) == 0.0
  # ROUGE-L F of the `rouge` package: distinct words 5 each side, the LCS "the cat on the mat"
  # holds 4 distinct words -> R = P = 4/5 (F carries the package's 1e-8 in its denominator).
  assert lb("gov_report", "the cat is on the mat", ["the cat sat on the mat"]) == \
      pytest.approx(80.0, abs=1e-5)
  # classification: both "Location" and "Location city" appear; "Location" is only part of
  # the reference's name, so it is dropped -> 1 match -> 100; with another class too -> 50.
  classes = ["Location", "Location city", "Human being", "Date"]
  assert lb("trec", "Location city", ["Location city"], classes) == 100.0
  assert lb("trec", "Location city or Date", ["Location city"], classes) == 50.0
  assert lb("trec", "Date", ["Location city"], classes) == 0.0
  assert lb("trec", "Date", ["Date"]) == 100.0  # no all_classes: LongBench's 50 TREC classes
  # passage count: numbers 3, 4, 3 in the prediction, the answer 3 -> 2/3.
  assert lb("passage_count", "3 or 4, I say 3", ["3"]) == pytest.approx(200 / 3)
  assert lb("passage_retrieval_en", "Paragraph 7", ["Paragraph 7"]) == 100.0
  assert lb("passage_retrieval_en", "Paragraph 7 or 8", ["Paragraph 7"]) == 50.0
  # code: the first line that is not a comment / fence, edit similarity (identical -> 100).
  assert lb("lcc", "```\n# comment\nx = foo(1)\n", ["x = foo(1)"]) == 100.0
  assert 0 < lb("repobench-p", "x = foo(2)", ["x = foo(1)"]) < 100
  with pytest.raises(ValueError, match="Chinese"):
    lb("dureader", "x", ["x"])
  with pytest.raises(ValueError, match="unknown LongBench dataset"):
    lb("nope", "x", ["x"])


def test_score_sample_uses_the_rows_dataset():
  from refine_jax.data.tasks import TaskSample  # pylint: disable=g-import-not-at-top
  row = TaskSample("qa", "p", ("cat sat on mat",), " cat", {"dataset": "hotpotqa"})
  assert scoring.score_sample("qa", "The cat sat.", row) == pytest.approx(200 / 3)
  plain = TaskSample("qa", "p", ("Paris",), " Paris", {})
  assert scoring.score_sample("qa", "Paris\nx", plain) == 100.0


def test_longbench_rows_keep_dataset_and_classes(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from refine_jax.data.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  from refine_jax.eval import qa_files  # pylint: disable=g-import-not-at-top
  from refine_jax.train import qa_data  # pylint: disable=g-import-not-at-top
  row = {"context": "ctx", "input": "q?", "answers": ["Date"], "dataset": "trec",
         "all_classes": ["Date", "Location"]}
  path = tmp_path / "trec.jsonl"
  path.write_text(json.dumps(row) + "\n")
  for s in (qa_files.samples(str(path))[0],
            qa_data.load_samples(str(path), ByteTokenizer())[0]):
    assert s.metadata["dataset"] == "trec" and s.metadata["all_classes"] == ["Date", "Location"]
    assert scoring.score_sample("qa", "Date\nLocation", s) == 100.0  # trec: first line only
