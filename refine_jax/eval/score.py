"""python -m refine_jax.eval.score --data=FILES --predictions=PRED.jsonl [--out=SCORES.jsonl]

Re-scores saved predictions (an eval/predictions.jsonl: rows with source, row, task,
context_length, prediction, references, score) against the data files they were made from,
with the paper's scorer (refine_jax.eval.scoring.score_row): each row by its own task, on the
raw prediction, with the references read from the data (not the copies in the predictions).
--data is what eval.qa_path takes: comma-separated files or globs, parquet or jsonl, local or
gs:// (refine_jax/eval/qa_files.py). A prediction's source matches a data file by its path,
or by its file name when exactly one data file has that name; row is 0-based in that file.
Rows whose source is "generated:<task>" (synthetic eval tasks) have no file and are scored
from their own references.

Prints the mean score (percent) per task and over all rows; --out writes one json line per
prediction (source, row, task, score) in the predictions file's order. Mistakes (a missing
file or row, an unknown task, missing fields, a parquet file where jsonl is expected) are one
line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

from refine_jax import cli, paths
from refine_jax.errors import UserError
from refine_jax.eval import qa_files, scoring

REQUIRED = ("source", "row", "prediction")
GENERATED = "generated:"


def read_predictions(path: str) -> list[dict]:
  """The rows of a predictions jsonl (blank lines skipped); each a json object with at least
  source, row and prediction."""
  if not paths.isfile(path):
    raise FileNotFoundError(f"--predictions {path!r} not found.")
  data = paths.as_path(path).read_bytes()
  if qa_files.is_parquet(data):
    raise UserError(f"--predictions {path} is a parquet file; give the predictions.jsonl that "
                    "eval writes (the data files go to --data).")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"--predictions {path} is not UTF-8 jsonl text ({e}).") from e
  rows = []
  for line_no, row in qa_files.json_objects(text, path):
    missing = [k for k in REQUIRED if k not in row]
    if missing:
      raise UserError(f"{path}:{line_no}: no {', '.join(missing)} field; predictions rows "
                      f"need {', '.join(REQUIRED)} (+ task), as eval/predictions.jsonl has.")
    if not isinstance(row["row"], int) or isinstance(row["row"], bool) or row["row"] < 0:
      raise UserError(f"{path}:{line_no}: row={row['row']!r}; give the 0-based row index.")
    if not isinstance(row["prediction"], str):
      raise UserError(f"{path}:{line_no}: prediction is {type(row['prediction']).__name__}, "
                      "not a string.")
    row["_line"] = line_no
    rows.append(row)
  if not rows:
    raise UserError(f"--predictions {path} holds no rows.")
  return rows


class DataIndex:
  """The rows of the --data files, found by (source, row)."""

  def __init__(self, spec: str):
    self.files = {f: qa_files.read_file(f) for f in qa_files.expand(spec)}
    self.by_name = collections.defaultdict(list)
    for f in self.files:
      self.by_name[os.path.basename(f)].append(f)

  def file_of(self, source: str, where: str) -> str:
    if source in self.files:
      return source
    try:
      normed = paths.norm(source)
    except ValueError:
      normed = source
    if normed in self.files:
      return normed
    same_name = self.by_name.get(os.path.basename(source.rstrip("/")), [])
    if len(same_name) == 1:
      return same_name[0]
    why = "several --data files have that name" if same_name else "not among the --data files"
    raise UserError(f"{where}: source {source!r} is {why} ({', '.join(self.files)}).")

  def get(self, source: str, row: int, where: str) -> qa_files.QARow:
    f = self.file_of(source, where)
    rows = self.files[f]
    if row >= len(rows):
      raise UserError(f"{where}: row {row} is not in {f} (it has {len(rows)} rows, 0-based).")
    return rows[row]


def score_predictions(data: str, predictions: str) -> list[dict]:
  """[{source, row, task, score}] for every prediction row, in order."""
  index = DataIndex(data)
  out = []
  for p in read_predictions(predictions):
    where = f"{predictions}:{p['_line']}"
    task = p.get("task")
    if task is not None and (not isinstance(task, str) or not scoring.known_task(task)):
      raise UserError(f"{where}: unknown task {task!r}; known: "
                      f"{', '.join(scoring.known_tasks())}.")
    if str(p["source"]).startswith(GENERATED):
      refs = p.get("references")
      if task is None or not refs:
        raise UserError(f"{where}: a generated row needs its task and references.")
      score = scoring.score_row(task, p["prediction"], refs)
      out.append({"source": p["source"], "row": p["row"], "task": task, "score": score})
      continue
    r = index.get(str(p["source"]), p["row"], where)
    if task is not None and task != r.task and task != "qa_f1":  # qa_f1: eval's F1 override
      raise UserError(f"{where}: task {task!r}, but {r.source} row {r.row} is a {r.task!r} "
                      "row; the predictions do not belong to this data.")
    task = task or r.task
    score = scoring.score_row(task, p["prediction"], r.answers, r.all_classes)
    out.append({"source": r.source, "row": r.row, "task": task, "score": score})
  return out


def summary(scores: list[dict]) -> str:
  by_task = collections.defaultdict(list)
  for s in scores:
    by_task[s["task"]].append(s["score"])
  width = max(len("all"), *(len(t) for t in by_task))
  lines = [f"{'task':<{width}}  {'rows':>5}  {'score':>7}"]
  for t in sorted(by_task):
    v = by_task[t]
    lines.append(f"{t:<{width}}  {len(v):>5}  {sum(v) / len(v):>7.2f}")
  lines.append(f"{'all':<{width}}  {len(scores):>5}  "
               f"{sum(s['score'] for s in scores) / len(scores):>7.2f}")
  return "\n".join(lines)


def _run(args) -> int:
  scores = score_predictions(args.data, args.predictions)
  print(summary(scores))
  if args.out:
    paths.write_text(args.out, "".join(json.dumps(s) + "\n" for s in scores))
    print(f"wrote {paths.norm(args.out)}")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m refine_jax.eval.score", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True,
                 help="comma-separated data files or globs (parquet or jsonl, local or gs://)")
  p.add_argument("--predictions", required=True, help="predictions jsonl (eval writes one)")
  p.add_argument("--out", default="", help="per-row scores jsonl (source, row, task, score)")
  return cli.guard("refine_jax.eval.score", _run, p.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
