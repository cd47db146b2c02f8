"""python -m refine_jax.eval.score: saved predictions re-scored against their data files."""

import json
import subprocess
import sys

import pytest

from refine_jax.config import default_eval_config
from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.eval import runner, score
from test_eval_qa_files import files, write_jsonl  # noqa: F401  pylint: disable=unused-import


def _table(text):
  """{task: (rows, mean)} from the printed summary."""
  return {p[0]: (p[1], p[2]) for p in (l.split() for l in text.splitlines())
          if len(p) == 3 and p[0] != "task"}


def _preds(path, rows):
  write_jsonl(path, rows)
  return str(path)


def test_rescoring_what_eval_saved_gives_the_same_numbers(files, tmp_path, capsys):
  data = f"{files}/ruler_squadqa_4096.parquet,{files}/lb.parquet,{files}/thudm.jsonl"
  cfg = default_eval_config()
  cfg.update(tasks="qa,qa_f1", context_lengths="3000", num_samples=20, progress=False,
             plots=False, qa_path=data)
  answers = {"When?": "\nearly 11th century", "Who?": "It was Ann Lee.",
             "Where was it": "Other location", "Next line": "x", "Who wrote": "Jane Austen\nx",
             "What type?": "City or Date", "Which author?": "\n\nJane Austen\nno"}

  def predict(prompts):
    return [next(v for k, v in answers.items() if k in p) for p in prompts]
  runner.run_eval(None, ByteTokenizer(), cfg, str(tmp_path / "eval"), predict_fn=predict)
  saved = [json.loads(l) for l in (tmp_path / "eval/predictions.jsonl").read_text().splitlines()]
  assert len(saved) == 14 and {r["task"] for r in saved[7:]} == {"qa_f1"}
  out = tmp_path / "scores.jsonl"
  rc = score.main(["--data", data, "--predictions", str(tmp_path / "eval/predictions.jsonl"),
                   "--out", str(out)])
  assert rc == 0
  got = [json.loads(l) for l in out.read_text().splitlines()]
  assert [(g["source"], g["row"], g["task"], g["score"]) for g in got] == \
      [(s["source"], s["row"], s["task"], s["score"]) for s in saved]
  # The "qa" cell by hand: ruler 0, 100; trec 100, lcc 15, hotpotqa 100; THUDM trec 50 (its
  # own classes City, Date), triviaqa 100.
  assert [g["score"] for g in got[:7]] == [0.0, 100.0, 100.0, 15.0, 100.0, 50.0, 100.0]
  table = _table(capsys.readouterr().out)
  assert table["ruler_squadqa"] == ("1", "0.00") and table["trec"] == ("2", "75.00")
  assert table["all"] == ("14", f"{sum(s['score'] for s in saved) / 14:.2f}")


def test_hand_written_predictions_match_by_file_name(files, tmp_path, capsys):
  moved = tmp_path / "elsewhere"
  moved.mkdir()
  pred = _preds(tmp_path / "p.jsonl", [
      {"source": str(moved / "lb.parquet"), "row": 2, "task": "hotpotqa",
       "prediction": "Jane Austen wrote it"},                                # F1 2/3
      {"source": "lb.parquet", "row": 0, "prediction": "Type: Other location\n"},   # no task
      {"source": "generated:niah_single", "row": 0, "task": "niah_single",
       "prediction": "the value is 12", "references": ["12", "34"]}])         # 1 of 2 found
  out = tmp_path / "s.jsonl"
  assert score.main(["--data", f"{files}/lb.parquet", "--predictions", pred,
                     "--out", str(out)]) == 0
  got = [json.loads(l) for l in out.read_text().splitlines()]
  assert [g["task"] for g in got] == ["hotpotqa", "trec", "niah_single"]
  assert [round(g["score"], 4) for g in got] == [66.6667, 100.0, 50.0]
  assert _table(capsys.readouterr().out)["all"] == ("3", "72.22")


@pytest.mark.parametrize("rows, data, message", [
    ([{"source": "lb.parquet", "row": 3, "prediction": "x"}], "lb.parquet",
     "row 3 is not in .*lb.parquet .it has 3 rows"),
    ([{"source": "nope.parquet", "row": 0, "prediction": "x"}], "lb.parquet",
     "source 'nope.parquet' is not among the --data files"),
    ([{"source": "lb.parquet", "row": 0, "task": "trek", "prediction": "x"}], "lb.parquet",
     "unknown task 'trek'"),
    ([{"source": "lb.parquet", "row": 0, "task": "hotpotqa", "prediction": "x"}], "lb.parquet",
     "task 'hotpotqa', but .* is a 'trec' row"),
    ([{"source": "lb.parquet", "prediction": "x"}], "lb.parquet", "p.jsonl:1: no row field"),
    ([{"source": "lb.parquet", "row": 0, "prediction": "x"}], "missing.parquet",
     "missing.parquet' not found"),
])
def test_mistakes_are_one_line_and_exit_2(files, tmp_path, capsys, rows, data, message):
  pred = _preds(tmp_path / "p.jsonl", rows)
  assert score.main(["--data", f"{files}/{data}", "--predictions", pred]) == 2
  err = capsys.readouterr().err
  assert err.startswith("refine_jax.eval.score: error: ") and err.count("\n") == 1
  assert __import__("re").search(message, err), err


def test_parquet_given_as_predictions_and_the_module_entry(files):
  proc = subprocess.run(
      [sys.executable, "-m", "refine_jax.eval.score", f"--data={files}/lb.parquet",
       f"--predictions={files}/lb.parquet"], capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"refine_jax.eval.score: error: --predictions {files}/lb.parquet is a parquet file; give "
      "the predictions.jsonl that eval writes (the data files go to --data)."]
