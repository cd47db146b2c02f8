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
