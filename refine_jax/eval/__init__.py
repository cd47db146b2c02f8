"""Evaluation: task scoring (scoring.py), greedy cached decoding (decode.py), the runner over
tasks x context lengths (runner.py: run_eval, eval_stage) and tables/plots (report.py).
runner/decode import the models, so they are not re-exported here (scoring stays light)."""

from refine_jax.eval.scoring import (mqar_accuracy, normalize_answer, perplexity, qa_f1,
                                     score_task, string_match_all, string_match_any)
