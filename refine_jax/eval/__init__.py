"""Evaluation: task scoring (scoring.py); the eval runner, tables and plots live beside it."""

from refine_jax.eval.scoring import (mqar_accuracy, normalize_answer, perplexity, qa_f1,
                                     score_task, string_match_all, string_match_any)
