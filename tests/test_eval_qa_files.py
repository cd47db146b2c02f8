"""eval.qa_path reads every layout the paper's data ships in (ReFINE RULER QA / LongBench
parquet, THUDM LongBench jsonl, the project's own), and each row is scored by its own task."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from refine_jax.config import default_eval_config
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
  cfg = default_eval_config()
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
  # Each row's score goes to its own task's row of results.json: RULER's leading newline
  # gives an empty first line (0); the others are right.
  assert res == {"ruler_squadqa": {2000: 0.0}, "ruler_hotpotqa": {2000: 100.0},
                 "trec": {2000: 100.0}, "lcc": {2000: 100.0}, "hotpotqa": {2000: 100.0}}
  # Each row generates its own budget: RULER's max_answer_length (5), LongBench's
  # max_gen_tokens (64, 64, 32); a (prompts, n) predictor is called once per budget.
  assert budgets == [5, 64, 32]


def test_predictions_rows_name_source_row_and_task(files, tmp_path):
  tok = ByteTokenizer()
  cfg = default_eval_config()
  cfg.update(tasks="qa", context_lengths="2000", num_samples=20, progress=False, plots=False,
             qa_path=f"{files}/lb.parquet")
  out = tmp_path / "eval"
  budgets = []

  answers = {"Where was it": "\nOther location", "Next line": "x", "Who wrote": "Jane Austen"}

  def predict(prompts, max_new):
    budgets.append(max_new)
    return [next(v for k, v in answers.items() if k in p) for p in prompts]
  runner.run_eval(None, tok, cfg, str(out), predict_fn=predict)
  assert budgets == [64, 32]  # each row's own max_gen_tokens
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


def test_over_long_prompts_are_cut_in_the_middle_as_longbench_cuts():
  tok = ByteTokenizer()
  # LongBench: keep the first and the last budget // 2 tokens.
  assert qa_files.cut_middle(tok, "abcdefghij", 5) == "abij"
  assert qa_files.cut_middle(tok, "abcdefghij", 6) == "abchij"
  assert qa_files.cut_middle(tok, "abcdefghij", 10) == "abcdefghij"


def test_prompt_and_answer_budget_share_the_context_length(files):
  """A ready prompt plus its own answer budget fit the context length (the ReFINE scripts'
  max_prompt_length = max_seq_length - max_response_length); nothing else is added."""
  tok = ByteTokenizer()
  rows = qa_files.load(str(files / "ruler_squadqa_4096.parquet"))
  prompt = rows[0].prompt  # 37 bytes, max_answer_length 5
  whole = qa_files.to_sample(rows[0], tok, 42)
  assert whole.prompt == prompt and whole.metadata["max_new_tokens"] == 5
  cut = qa_files.to_sample(rows[0], tok, 30)  # 25 prompt tokens left -> 12 + 12
  assert cut.prompt == prompt[:12] + prompt[-12:]
  forced = qa_files.to_sample(rows[0], tok, 30, max_new_tokens=10)  # 20 left -> 10 + 10
  assert forced.prompt == prompt[:10] + prompt[-10:]
  assert forced.metadata["max_new_tokens"] == 10
  with pytest.raises(UserError, match="no room for the prompt"):
    qa_files.to_sample(rows[0], tok, 5)


def test_auto_context_lengths_take_each_rows_own_length(files, tmp_path):
  """eval.context_lengths='auto': RULER rows at their max_seq_length, LongBench rows at their
  file's _<N> suffix, uncut; a file with neither is one clear error."""
  tok = ByteTokenizer()
  (files / "trec_16384.parquet").write_bytes((files / "lb.parquet").read_bytes())
  cfg = default_eval_config()
  cfg.update(tasks="qa", context_lengths="auto", num_samples=0, progress=False, plots=False,
             qa_path=f"{files}/ruler_squadqa_4096.parquet,{files}/trec_16384.parquet")
  seen = []

  def predict(prompts):
    seen.extend(prompts)
    return ["x"] * len(prompts)
  res = runner.run_eval(None, tok, cfg, None, predict_fn=predict)
  assert sorted({n for row in res.values() for n in row}) == [4096, 16384]
  assert set(res["ruler_squadqa"]) == {4096} and set(res["trec"]) == {16384}
  originals = [r.prompt for r in qa_files.load(cfg.qa_path)]
  assert seen == originals  # every row once, as it ships
  cfg.qa_path = str(files / "lb.parquet")
  with pytest.raises(ValueError, match="no max_seq_length and its file name no _<length>"):
    runner.run_eval(None, tok, cfg, None, predict_fn=predict)
