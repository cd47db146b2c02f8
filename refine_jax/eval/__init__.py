"""Evaluation: task scoring (scoring.py; score_row = the paper's scorer per row task), QA files
in every shipped layout (qa_files.py), greedy cached decoding (decode.py), the runner over
tasks x context lengths (runner.py: run_eval, eval_stage), tables/plots (report.py) and
re-scoring saved predictions (`python -m refine_jax.eval.score`).
runner/decode import the models, so they are not re-exported here (scoring stays light)."""

from refine_jax.eval.scoring import (mqar_accuracy, normalize_answer, perplexity, qa_f1,
                                     score_task, string_match_all, string_match_any)
