"""The midtrain stage end to end through `python -m refine_jax.main` (slow: several compiles)."""
import json
import os

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("ppo", [False, True])
def test_midtrain_stage_runs_warmup_refine_and_writes_outputs(tmp_path, python_subprocess, ppo):
  wd = str(tmp_path / "mt")
  args = ["-m", "refine_jax.main", "--config=configs/midtrain.py", f"--workdir={wd}",
          "--config.midtrain.warmup_steps=30", "--config.train.steps=4",
          "--config.data.seq_len=128", "--config.model.hidden=64",
          "--config.refine.num_chunks=4", "--config.refine.log_rollouts_every=2",
          "--config.train.eval_every=4", "--config.checkpoint.every_steps=4",
          "--config.midtrain.run_eval=False", "--config.train.progress_bar=False"]
  if ppo:  # collect once, 2 epochs x 2 minibatches of PPO updates per step
    args += ["--config.refine.ppo_epochs=2", "--config.refine.ppo_minibatches=2"]
  python_subprocess(args, timeout=900)
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for r in rows:
    assert 0.0 < r["reward_mean"] <= 1.0 and r["ntp_loss"] < 4.0  # warmed up (ln 259 = 5.6)
    assert "clip_frac" in r and "entropy_selected" in r and r["valid_frac"] > 0.5
  rolls = [json.loads(l) for l in open(os.path.join(wd, "rollouts.jsonl"))]
  assert {r["step"] for r in rolls} == {2, 4}
  assert all(len(r["truth"]) > 0 and r["position"] >= 20 for r in rolls)
  summary = json.load(open(os.path.join(wd, "midtrain_summary.json")))
  assert summary["warmup"]["steps"] == 30 and summary["refine"]["steps"] == 4
  assert 0.0 <= summary["next_sequence_match"] <= 1.0
  assert os.path.isdir(os.path.join(wd, "warmup", "checkpoints"))
  # Rerunning resumes: nothing left to do, the warm-up is not repeated.
  python_subprocess(args, timeout=900)
  assert len(open(os.path.join(wd, "metrics.jsonl")).readlines()) == 4
