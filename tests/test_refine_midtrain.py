"""The midtrain stage end to end through `python -m refine_jax.main` (slow: several compiles)."""
import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _final_model(wd):
  import refine_jax  # pylint: disable=g-import-not-at-top
  from refine_jax.train import loop  # pylint: disable=g-import-not-at-top
  model, config = refine_jax.load_pretrained(os.path.join(wd, "checkpoints", "4"))
  batches = loop.default_eval_batches(config, max(1, int(config.train.eval_batches)))
  return model, config, batches


def _forward(model):
  """jit(model) over padded [rows, L] token arrays: (logits, final-norm hidden states). The
  model is causal, so padding after a row's real tokens changes nothing before them."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(ids):
    out = nnx.merge(graphdef, state)(ids)
    return out.logits, out.hidden_states
  return lambda ids: tuple(np.asarray(x, np.float64) for x in f(jnp.asarray(ids, jnp.int32)))


def _greedy_match_by_reprefill(model, rcfg, batches):
  """The summary's next_sequence_match, recomputed: the argmax-entropy positions, then at each
  one the k-token greedy continuation decoded by re-running the whole prefix every token (no
  cache, unlike the stage's decoder) and compared token by token with the truth."""
  from refine_jax.refine import step as refine_step  # pylint: disable=g-import-not-at-top
  rc = copy.deepcopy(rcfg)
  with rc.unlocked():
    rc.temperature, rc.selection, rc.reward = 0.0, "argmax", "binary"
  k, scores, fwd = int(rc.rollout_len), [], _forward(model)
  for b in batches:
    col = refine_step.collect(model, b, jax.random.key(0), rc)
    pos, valid = np.asarray(col.positions_Bc), np.asarray(col.valid_Bc)
    T = b["inputs"].shape[1]
    rows, ps = zip(*[(r, int(pos[r, i])) for r in range(pos.shape[0])
                     for i in range(pos.shape[1]) if valid[r, i]])
    assert max(ps) + k <= T
    seqs = np.zeros((len(ps), T + k), np.int32)
    for j, (r, p) in enumerate(zip(rows, ps)):
      seqs[j, :p + 1] = b["inputs"][r, :p + 1]
    for t in range(k):  # token t of every continuation: argmax after prefix + t tokens
      logits = fwd(seqs)[0]
      for j, p in enumerate(ps):
        seqs[j, p + 1 + t] = logits[j, p + t].argmax()
    hits = [np.mean(seqs[j, p + 1:p + 1 + k] == b["targets"][r, p:p + k])
            for j, (r, p) in enumerate(zip(rows, ps))]
    scores.append(np.mean(hits))
  return float(np.mean(scores))


def _check_logged_cosine_rewards(model, config, batch, rolls):
  """Step 4's logged rollouts (the final weights): re-sampled with the logger's key they are
  the logged ones, and each logged reward equals the mean over the k tokens of
  cos(h(prefix + rollout), h(prefix + truth)) from full forward passes (final-norm states)."""
  from refine_jax.refine import step as refine_step  # pylint: disable=g-import-not-at-top
  rc = config.refine
  n, c, k = int(rc.rollouts_per_position), int(rc.num_chunks), int(rc.rollout_len)
  rows = {key: np.asarray(v)[:max(1, int(rc.num_logged_rollouts))] for key, v in batch.items()}
  col = refine_step.collect(model, rows, jax.random.key(4), rc)
  logged = [r for r in rolls if r["step"] == 4]
  want = [(b, i) for b in range(rows["inputs"].shape[0]) for i in range(c)
          if col.valid_Bc[b, i]]
  assert logged and [(r["seq"], r["position"]) for r in logged] == [
      (b, int(col.positions_Bc[b, i])) for b, i in want]
  T = rows["inputs"].shape[1]
  seqs = np.zeros((2 * len(want), T + k), np.int32)
  for j, (b, i) in enumerate(want):
    p, g = int(col.positions_Bc[b, i]), (b * c + i) * n
    for row, cont in ((2 * j, col.tokens_Gk[g]), (2 * j + 1, rows["targets"][b, p:p + k])):
      seqs[row, :p + 1] = rows["inputs"][b, :p + 1]
      seqs[row, p + 1:p + 1 + k] = np.asarray(cont)
  hidden = _forward(model)(seqs)[1]
  for j, rec in enumerate(logged):
    p = rec["position"]
    h_roll, h_true = hidden[2 * j, p + 1:p + 1 + k], hidden[2 * j + 1, p + 1:p + 1 + k]
    cos = (h_roll * h_true).sum(-1) / (np.linalg.norm(h_roll, axis=-1) *
                                       np.linalg.norm(h_true, axis=-1))
    assert rec["reward"] == pytest.approx(cos.mean(), rel=1e-3, abs=1e-4), rec


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
  for r in rows:  # warmed up: rollouts already resemble the truth; ln 259 = 5.6
    assert r["reward_mean"] > 0.0 and r["ntp_loss"] < 4.0
    assert "clip_frac" in r and "entropy_selected" in r and r["valid_frac"] > 0.5
  rolls = [json.loads(l) for l in open(os.path.join(wd, "rollouts.jsonl"))]
  assert {r["step"] for r in rolls} == {2, 4}
  assert all(len(r["truth"]) > 0 and r["position"] >= 20 for r in rolls)
  summary = json.load(open(os.path.join(wd, "midtrain_summary.json")))
  assert summary["warmup"]["steps"] == 30 and summary["refine"]["steps"] == 4
  model, config, batches = _final_model(wd)
  assert summary["next_sequence_match"] == pytest.approx(
      _greedy_match_by_reprefill(model, config.refine, batches), abs=1e-6)
  _check_logged_cosine_rewards(model, config, batches[0], rolls)
  assert os.path.isdir(os.path.join(wd, "warmup", "checkpoints"))
  # Rerunning resumes: nothing left to do, the warm-up is not repeated.
  python_subprocess(args, timeout=900)
  assert len(open(os.path.join(wd, "metrics.jsonl")).readlines()) == 4
