"""End to end through `python -m refine_jax.main` with the real DeltaNet LM and data pipeline:
run dir contents, metrics fields, rerun resumes; bad flags/configs fail with a clear message."""

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import naive_nll
from refine_jax.train.metrics import read_metrics

_TINY = ["--config.model.hidden=32", "--config.model.layers=1", "--config.model.heads=2",
         "--config.model.chunk_size=16", "--config.data.seq_len=32", "--config.train.batch_size=2",
         "--config.train.eval_every=2", "--config.train.eval_batches=1",
         "--config.checkpoint.every_steps=2", "--config.train.progress_bar=False"]


def _main(args, python_subprocess, **kw):
  return python_subprocess(["-m", "refine_jax.main", "--config=configs/pretrain.py"] + args, **kw)


def _naive_ppl(wd, step):
  """exp(mean next-token NLL) of checkpoint `step` on the run's held-out batches."""
  import refine_jax  # pylint: disable=g-import-not-at-top
  from refine_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  model, config = refine_jax.load_pretrained(os.path.join(wd, "checkpoints", str(step)))
  sums = [naive_nll(model, b)
          for b in pipeline.make_eval_batches(config, int(config.train.eval_batches))]
  nll_sum, tokens = sum(s[0] for s in sums), sum(s[1] for s in sums)
  assert tokens > 0
  return math.exp(nll_sum / tokens)


def _first_run(wd, python_subprocess):
  _main(_TINY + ["--config.train.steps=3", f"--workdir={wd}"], python_subprocess)
  assert os.path.isfile(os.path.join(wd, "config.json"))
  assert json.load(open(os.path.join(wd, "config.json")))["train"]["steps"] == 3
  assert glob.glob(os.path.join(wd, "events.out.tfevents.*"))
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) >= ["2", "3"]
  rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3]
  for key in ("loss", "step_time_s", "tokens_per_s", "lr", "grad_norm"):
    assert all(isinstance(r[key], float) for r in rows), key
  # Held-out perplexity at steps 2 and 3 (eval_every=2, and the last step) = exp(mean NLL) of
  # that step's checkpoint on the held-out batch, recomputed here with a float64 log-softmax.
  for row in rows[1:]:
    assert row["eval_ppl"] == pytest.approx(_naive_ppl(wd, row["step"]), rel=1e-4), row
  assert rows[1]["eval_ppl"] != rows[2]["eval_ppl"]  # a step later, other weights
  assert os.listdir(os.path.join(wd, "checkpoints", "3", "data"))  # iterator state saved
  return rows


def test_main_runs(tmp_path, python_subprocess):
  """A first run; its rerun (finished) reports the last logged values (not None); a rerun with
  another model.* is one line naming the fields, and the run's config.json is untouched."""
  wd = str(tmp_path / "run")
  rows = _first_run(wd, python_subprocess)
  last = rows[-1]
  proc = _main(_TINY + ["--config.train.steps=3", f"--workdir={wd}"], python_subprocess)
  assert "nothing to train" in proc.stdout
  assert f"loss {last['loss']}" in proc.stdout and f"eval_ppl {last['eval_ppl']}" in proc.stdout
  before = open(os.path.join(wd, "config.json")).read()
  proc = _main(_TINY + ["--config.train.steps=3", "--config.model.hidden=64",
                        f"--workdir={wd}"], python_subprocess, check=False)
  assert proc.returncode == 2
  assert "holds checkpoints of another model (model.hidden: run 32, config 64)" in proc.stderr
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
  assert open(os.path.join(wd, "config.json")).read() == before


@pytest.mark.slow
def test_main_rerun_resumes_exactly(tmp_path, python_subprocess):
  """3 steps, then the same command with steps=4 == 4 steps straight (real data iterator)."""
  const = ["--config.train.schedule=constant", "--config.train.warmup_steps=0"]
  wd, straight = str(tmp_path / "run"), str(tmp_path / "straight")
  _main(_TINY + const + ["--config.train.steps=3", f"--workdir={wd}"], python_subprocess)
  proc = _main(_TINY + const + ["--config.train.steps=4", f"--workdir={wd}"], python_subprocess)
  assert "resumed" in proc.stdout and "step 3" in proc.stdout
  _main(_TINY + const + ["--config.train.steps=4", f"--workdir={straight}"], python_subprocess)
  rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
  want = read_metrics(os.path.join(straight, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert [r["loss"] for r in rows] == [r["loss"] for r in want]


def test_main_rejects_bad_config(tmp_path, python_subprocess):
  proc = _main(["--config.train.batch_sise=3", f"--workdir={tmp_path}"], python_subprocess,
               check=False)
  assert proc.returncode != 0 and "batch_sise" in proc.stderr
  proc = _main(["--config.train.batch_size=3", "--config.mesh.data=2",
                f"--workdir={tmp_path}"], python_subprocess, devices=2, check=False)
  assert proc.returncode == 2
  assert "train.batch_size=3 is not divisible by the data-parallel size" in proc.stderr


@pytest.mark.slow
def test_kill_9_during_saves_keeps_a_good_checkpoint(tmp_path, python_subprocess):
  """SIGKILL while async saves run every step; the rerun restores a complete step and finishes."""
  ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  wd = str(tmp_path / "run")
  args = _TINY + ["--config.train.steps=40", "--config.checkpoint.every_steps=1",
                  f"--workdir={wd}"]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "refine_jax.main", "--config=configs/pretrain.py"]
                          + args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  ckpt = os.path.join(wd, "checkpoints")
  while time.time() < deadline:  # kill once a few steps are on disk, mid-training
    steps = [p for p in os.listdir(ckpt) if p.isdigit()] if os.path.isdir(ckpt) else []
    if len(steps) >= 2:
      break
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  out = _main(args, python_subprocess)
  assert "resumed" in out.stdout
  rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(1, 41))


def test_main_refuses_an_unsupported_url_workdir(tmp_path, python_subprocess):
  """gs:// works (tests/test_checkpoint_remote.py); another scheme is one line, exit 2."""
  cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "configs", "pretrain.py")
  proc = python_subprocess(["-m", "refine_jax.main", f"--config={cfg}",
                            "--workdir=s3://bucket/run"], cwd=str(tmp_path), check=False)
  assert proc.returncode == 2
  assert "--workdir=s3://bucket/run: s3:// is not supported; use gs://" in proc.stderr
  assert not (tmp_path / "s3:").exists()
