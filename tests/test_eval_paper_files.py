"""`python -m refine_jax.eval` with the paper's eval configs on files laid out as the ReFINE
release ships them: a real checkpoint, greedy decoding with each row's own answer budget,
each row scored by its task, results in eval/<config name>/ beside (never over) the run's
training-time eval, and the saved scores reproduced by the re-scoring command."""

import json
import os

from flax import nnx

from conftest import run_python
from refine_jax.eval import qa_files, score
from refine_jax.models import build_model
from test_eval_qa_files import longbench_parquet, ruler_parquet
from test_interop_generate import _run_dir, _tiny_config


def _ruler_rows(n, length):
  return [(i, f"Passage {i} about item {i}. " * 3 + f"Question: item {i}?\nAnswer:",
           [f"item {i}"], "ruler_squadqa" if i % 2 else "ruler_hotpotqa") for i in range(n)]


def test_eval_command_on_the_papers_files(tmp_path, capsys):
  cfg = _tiny_config()
  run = _run_dir(tmp_path, cfg, build_model(cfg.model, rngs=nnx.Rngs(0)))
  data = tmp_path / "data"
  data.mkdir()
  ruler_parquet(data / "ruler_squadqa_delta_net_4096_200_test.parquet", _ruler_rows(3, 4096))
  longbench_parquet(data / "trec_16384.parquet",
                    [("Question: Where was it ?\nType:", ["Other location"], "trec", 6),
                     ("Question: Who was it ?\nType:", ["Individual"], "trec", 3)])
  files = f"{data}/ruler_*_test.parquet,{data}/trec_16384.parquet"
  training_eval = os.path.join(run, "eval", "results.json")
  os.makedirs(os.path.dirname(training_eval))
  with open(training_eval, "w") as f:
    f.write('{"perplexity": {"256": 9.0}}')

  args = ["-m", "refine_jax.eval", "--config=configs/eval_ruler_qa.py",
          f"--config.checkpoint={run}", f"--config.eval.qa_path={files}",
          "--config.eval.progress=False"]
  run_python(args)
  out = os.path.join(run, "eval", "eval_ruler_qa")
  with open(training_eval) as f:
    assert f.read() == '{"perplexity": {"256": 9.0}}'  # the training-time eval is untouched
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  # One row per task, at each row's own length (max_seq_length; the file's _16384).
  assert {t: sorted(r) for t, r in results.items()} == {
      "ruler_hotpotqa": ["4096"], "ruler_squadqa": ["4096"], "trec": ["16384"]}
  with open(os.path.join(out, "predictions.jsonl")) as f:
    saved = [json.loads(l) for l in f]
  rows = qa_files.load(files)
  assert [(s["source"], s["row"], s["task"]) for s in saved] == [
      (r.source, r.row, r.task) for r in rows]
  for s, r in zip(saved, rows):  # the saved score is the scorer's on the raw prediction
    assert s["score"] == r.score(s["prediction"])
  assert score.main(["--data", files, "--predictions", os.path.join(out, "predictions.jsonl"),
                     "--out", str(tmp_path / "scores.jsonl")]) == 0
  with open(tmp_path / "scores.jsonl") as f:
    assert [json.loads(l)["score"] for l in f] == [s["score"] for s in saved]
  capsys.readouterr()

  again = run_python(args, check=False)  # an eval never overwrites another's results
  errors = [l for l in again.stderr.splitlines() if "error: " in l]
  assert again.returncode == 2 and len(errors) == 1, again.stderr[-2000:]
  assert "already holds" in errors[0] and "--config.overwrite=True" in errors[0]
