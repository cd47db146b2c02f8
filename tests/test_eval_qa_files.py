"""eval.qa_path reads every layout the paper's data ships in (ReFINE RULER QA / LongBench
parquet, THUDM LongBench jsonl, the project's own), and each row is scored by its own task."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.errors import UserError
from refine_jax.eval import qa_files, runner


def ruler_parquet(path, rows):
  """ReFINE's RULER QA columns."""
  pq.write_table(pa.table({
      "index": [r[0] for r in rows], "prompt": [r[1] for r in rows],
      "answer": [r[2] for r in rows], "prompt_length": [40] * len(rows),
      "max_answer_length": [5] * len(rows), "total_length": [45] * len(rows),
      "max_seq_length": [4096] * len(rows), "task": [r[3] for r in rows]}), path)


def longbench_parquet(path, rows):
  """ReFINE's LongBench columns (lcc's file also carries a pandas index column)."""
  pq.write_table(pa.table({
      "prompt": [r[0] for r in rows], "answers": [r[1] for r in rows],
      "prompt_length": [50] * len(rows), "max_answer_length": [4] * len(rows),
      "total_length": [54] * len(rows), "max_gen_tokens": [r[3] for r in rows],
      "task": [r[2] for r in rows], "__index_level_0__": list(range(len(rows)))}), path)


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def files(tmp_path):
  ruler_parquet(tmp_path / "ruler_squadqa_4096.parquet",
                [(83, "Passage ... Question: When?\nAnswer:", ["early 11th century"],
                  "ruler_squadqa"),
                 (7, "Passage ... Question: Who?\nAnswer:", ["Ann", "Ann Lee"],
                  "ruler_hotpotqa")])
  longbench_parquet(tmp_path / "lb.parquet",
                    [("Question: Where was it ?\nType:", ["Other location"], "trec", 64),
                     ("Next line of code:", ["    return x"], "lcc", 64),
                     ("Who wrote it? Answer:", ["Jane Austen"], "hotpotqa", 32)])
  write_jsonl(tmp_path / "thudm.jsonl",
              [{"context": "Doc. " * 20, "input": "What type?", "answers": ["City"],
                "dataset": "trec", "length": 30, "_id": "x1",
                "all_classes": ["City", "Date", "Other location"]},
               {"context": "Doc. " * 20, "input": "Which author?", "answers": ["Jane Austen"],
                "dataset": "triviaqa", "length": 30, "_id": "x2", "all_classes": None}])
  write_jsonl(tmp_path / "own.jsonl",
              [{"prompt": "Q: capital?\nA:", "answer": "Paris"},
               {"context": "The cat sat. " * 5, "input": "Who sat?", "answers": ["the cat"]}])
  return tmp_path


def test_every_layout_reads_with_its_rows_task(files):
  rows = qa_files.load(",".join(str(files / n) for n in
                                ("ruler_squadqa_4096.parquet", "lb.parquet", "thudm.jsonl",
                                 "own.jsonl")))
  assert [(r.task, r.row) for r in rows] == [
      ("ruler_squadqa", 0), ("ruler_hotpotqa", 1), ("trec", 0), ("lcc", 1), ("hotpotqa", 2),
      ("trec", 0), ("triviaqa", 1), ("qa", 0), ("qa", 1)]
  assert rows[0].answers == ("early 11th century",) and rows[1].answers == ("Ann", "Ann Lee")
  assert rows[0].source == str(files / "ruler_squadqa_4096.parquet")
  assert rows[2].all_classes is None and rows[2].extra["max_gen_tokens"] == 64
  assert rows[5].all_classes == ("City", "Date", "Other location")
  assert rows[5].context.startswith("Doc.") and rows[5].question == "What type?"
  # Each row by its own task's rule, on raw predictions worked out by hand:
  assert rows[0].score("\nearly 11th century") == 0.0          # RULER: raw first line
  assert rows[0].score("In the early 11th century.") == 100.0
  assert rows[2].score("\nOther location\nDate") == 100.0      # trec, 50 default classes
  assert rows[3].score("```\n    return x\n```") == 100.0     # lcc: the code line
  assert rows[4].score("\nJane Austen") == 0.0                 # hotpotqa: cut at the raw \n
  assert rows[4].score("Jane Austen wrote it") == pytest.approx(100 * 2 * (2 / 4) / (1 + 2 / 4))
  assert rows[5].score("City or Date") == 50.0                 # the row's own all_classes
  assert rows[6].score("\n\nJane Austen\nno") == 100.0         # triviaqa: lstrip, first line


def test_globs_order_and_limit(files):
  rows = qa_files.load(str(files / "*.parquet"))  # sorted: lb, ruler_squadqa_4096
  assert [r.task for r in rows] == ["trec", "lcc", "hotpotqa", "ruler_squadqa",
                                    "ruler_hotpotqa"]
  assert len(qa_files.load(f"{files}/*.jsonl,{files}/lb.parquet", limit=3)) == 3


def test_parquet_is_known_by_its_bytes_never_read_as_jsonl(files):
  disguised = files / "really_parquet.jsonl"
  disguised.write_bytes((files / "lb.parquet").read_bytes())
  assert [r.task for r in qa_files.load(str(disguised))] == ["trec", "lcc", "hotpotqa"]
  binary = files / "junk.jsonl"
  binary.write_bytes(b"\x90\x00\xffnot text")
  with pytest.raises(UserError, match="neither parquet .* nor UTF-8 jsonl"):
    qa_files.load(str(binary))


def test_mistakes_are_one_clear_error(files):
  with pytest.raises(FileNotFoundError, match="missing.parquet"):
    qa_files.load(str(files / "missing.parquet"))
  with pytest.raises(FileNotFoundError, match="matches no file"):
    qa_files.load(str(files / "*.arrow"))
  write_jsonl(files / "bad.jsonl", [{"question": "?"}])
  with pytest.raises(UserError, match=r"bad.jsonl:0: fields \['question'\]; expected prompt"):
    qa_files.load(str(files / "bad.jsonl"))
  write_jsonl(files / "odd.jsonl", [{"prompt": "p", "answers": ["a"], "task": "dureader_x"}])
  with pytest.raises(UserError, match="unknown task 'dureader_x'"):
    qa_files.load(str(files / "odd.jsonl"))
  (files / "torn.jsonl").write_text('{"prompt": "p", "answer": "a"}\n{"prompt": \n')
  with pytest.raises(UserError, match="torn.jsonl:2: not a json object"):
    qa_files.load(str(files / "torn.jsonl"))


def test_runner_scores_each_row_by_its_task_and_writes_predictions(files, tmp_path):
  tok = ByteTokenizer()
  cfg = runner.default_eval_config()
  cfg.update(tasks="qa", context_lengths="2000", num_samples=20, progress=False, plots=False,
             qa_path=f"{files}/ruler_squadqa_4096.parquet,{files}/lb.parquet")
  answers = {"When?": "\nearly 11th century", "Who?": "It was Ann Lee.",
             "Where was it": "Other location", "Next line": "    return x",
             "Who wrote": "Jane Austen\nmore"}
  budgets = []

  def predict(prompts, max_new):
    budgets.append(max_new)
    return [next(v for k, v in answers.items() if k in p) for p in prompts]
  out = tmp_path / "eval"
  res = runner.run_eval(None, tok, cfg, str(out), predict_fn=predict)
  # 0 (leading newline) + 100 + 100 + 100 + 100 -> 80.
  assert res["qa"][2000] == pytest.approx(80.0)
  # The RULER rows carry no max_gen_tokens, so the budget is the longest target + 8 tokens:
  # "early 11th century" = 18 bytes -> 26.
  assert budgets == [26]


def test_predictions_rows_name_source_row_and_task(files, tmp_path):
  tok = ByteTokenizer()
  cfg = runner.default_eval_config()
  cfg.update(tasks="qa", context_lengths="2000", num_samples=20, progress=False, plots=False,
             qa_path=f"{files}/lb.parquet")
  out = tmp_path / "eval"
  budgets = []

  def predict(prompts, max_new):
    budgets.append(max_new)
    return ["\nOther location", "x", "Jane Austen"]
  runner.run_eval(None, tok, cfg, str(out), predict_fn=predict)
  assert budgets == [64]  # every row has max_gen_tokens: the largest
  recs = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
  src = str(files / "lb.parquet")
  assert [(r["source"], r["row"], r["task"], r["context_length"]) for r in recs] == [
      (src, 0, "trec", 2000), (src, 1, "lcc", 2000), (src, 2, "hotpotqa", 2000)]
  assert recs[0]["prediction"] == "\nOther location" and recs[0]["score"] == 100.0
  assert recs[2]["references"] == ["Jane Austen"] and recs[2]["score"] == 100.0
  # lcc: "x" vs "    return x": difflib 2 * 1 / 13 = 15.38 % -> 15.
  assert recs[1]["score"] == 15.0


def test_training_qa_data_reads_refine_files_and_keeps_each_rows_task(files):
  """post-training / TTT data (train/qa_data.py) share the reader: ReFINE's LongBench parquet
  (prompt + answers), parquet whatever the file name, the row's task kept for scoring."""
  from refine_jax.eval import scoring  # pylint: disable=g-import-not-at-top
  from refine_jax.train import qa_data  # pylint: disable=g-import-not-at-top
  disguised = files / "lb_parquet.jsonl"
  disguised.write_bytes((files / "lb.parquet").read_bytes())
  got = qa_data.load_samples(f"{disguised},{files}/ruler_squadqa_4096.parquet", ByteTokenizer())
  assert [s.metadata["dataset"] for s in got] == ["trec", "lcc", "hotpotqa", "ruler_squadqa",
                                                 "ruler_hotpotqa"]
  assert got[0].answers == ("Other location",) and got[0].target == "Other location"
  assert scoring.score_sample("qa", "\nearly 11th century", got[3]) == 0.0  # RULER's rule
  assert scoring.score_sample("qa", "\nOther location", got[0]) == 100.0   # trec's rule
