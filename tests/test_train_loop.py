"""Training loop on TinyLM (1 CPU device): exact resume, NaN guard, init_checkpoint, losses."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax.train import loop, losses, optim, update
from refine_jax.train.metrics import read_metrics

import tiny as T


def _loss_with_poison(model, batch, rng):
  loss, m = losses.ntp_loss(model, batch, rng)
  return loss + jnp.where(batch["poison"].max() > 0, jnp.nan, 0.0), m


def _run(workdir, config, *, poison_at=(), on_step=None, loss_fn=losses.ntp_loss):
  it = T.SyntheticIterator(config.train.batch_size, config.data.seq_len, poison_at=poison_at)
  return loop.run_training(config, str(workdir), update.loss_spec(loss_fn), eval_fn=None,
                           model_fn=lambda: T.TinyLM(rngs=nnx.Rngs(config.seed)),
                           train_iter=it, on_step=on_step)


def _losses(workdir):
  return [r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]


def _params(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_exact_resume_after_crash(tmp_path):
  config = T.tiny_config(steps=6, every=3)
  straight = _run(tmp_path / "a", config)
  ref = _losses(tmp_path / "a")
  assert len(ref) == 6 and ref[-1] < ref[0]  # it learns

  class Crash(Exception):
    pass

  def crash_at_5(step, row, state):
    if step == 5:
      raise Crash()

  with pytest.raises(Crash):
    _run(tmp_path / "b", config, on_step=crash_at_5)
  # Steps 4-5 ran after checkpoint 3; their lines are dropped on resume and re-run.
  resumed = _run(tmp_path / "b", config)
  got = _losses(tmp_path / "b")
  assert [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_array_equal(got, ref)
  for x, y in zip(_params(straight.model), _params(resumed.model)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
  config = T.tiny_config(steps=6, every=3)
  _run(tmp_path, config)
  ref = _losses(tmp_path)
  params_dir = tmp_path / "checkpoints" / "6" / "params"
  for root, _, files in os.walk(params_dir):
    for name in files:  # truncate every data file of the newest step
      if os.path.getsize(os.path.join(root, name)) > 64:
        open(os.path.join(root, name), "wb").close()
  caplog.set_level(logging.WARNING)
  config.train.steps = 6
  _run(tmp_path, config)
  assert any("failed to restore" in r.getMessage() for r in caplog.records)
  assert os.path.isdir(str(tmp_path / "checkpoints") + ".corrupt")
  # Resumed from step 3: steps 4..6 re-run and reproduce the original losses.
  np.testing.assert_array_equal(_losses(tmp_path), ref)
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [3, 6]


def test_nan_guard_stops_and_keeps_last_checkpoint(tmp_path):
  config = T.tiny_config(steps=8, every=2)
  with pytest.raises(FloatingPointError, match="step 5"):
    _run(tmp_path, config, poison_at=(4,), loss_fn=_loss_with_poison)  # batch 4 = step 5
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [2, 4]
  rows = read_metrics(tmp_path / "metrics.jsonl")
  assert rows[-1]["step"] == 5 and rows[-1]["nonfinite"] and rows[-1]["loss"] is None
  # The last good checkpoint restores: a rerun without poison resumes at step 5.
  _run(tmp_path, config)
  assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 9))


def test_init_checkpoint_loads_params_only(tmp_path):
  config = T.tiny_config(steps=3, every=3)
  src = _run(tmp_path / "src", config)
  config2 = T.tiny_config(steps=1, every=1, lr=1e-30)
  config2.seed = 7  # a different fresh init, overwritten by the loaded params
  config2.init_checkpoint = str(tmp_path / "src")
  dst = _run(tmp_path / "dst", config2)
  rows = read_metrics(tmp_path / "dst" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1]  # fresh step count: optimiser/data not restored
  for x, y in zip(_params(src.model), _params(dst.model)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-12)
  # ... and the loaded model is the trained one, not the seed-7 init.
  fresh = T.TinyLM(rngs=nnx.Rngs(7))
  assert not np.allclose(np.asarray(_params(fresh)[0]), np.asarray(_params(dst.model)[0]))


def test_ntp_loss_matches_naive():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 5))
  mask = (rng.random((2, 5)) > 0.3).astype(np.float32)
  model = lambda x: type("Out", (), {"logits": jnp.asarray(logits)})
  loss, m = losses.ntp_loss(model, {"inputs": targets, "targets": targets, "loss_mask": mask},
                            None)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  nll = -np.log(np.take_along_axis(p, targets[..., None], -1)[..., 0])
  want = (nll * mask).sum() / mask.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(m["loss_tokens"]) == mask.sum()


def test_schedule_warmup_then_cosine():
  config = T.tiny_config(steps=110, lr=1.0)
  config.train.warmup_steps, config.train.min_lr_ratio = 10, 0.1
  sched = optim.make_schedule(config.train)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 5, 10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(float(sched(60)), 0.1 + 0.9 * 0.5, rtol=1e-5)  # half-way cosine
  np.testing.assert_allclose(float(sched(110)), 0.1, rtol=1e-5)


@pytest.mark.parametrize("updates_per_step", [1, 3])
def test_lr_follows_train_steps_when_a_step_makes_several_updates(updates_per_step):
  """With a constant gradient Adam's step is exactly the lr, so each update's size shows the
  lr optax used: update u of train step s (0-based) must use schedule(s), not schedule(u)."""
  config = T.tiny_config(steps=8, lr=1.0)
  config.train.warmup_steps, config.train.schedule = 4, "linear"
  config.train.weight_decay, config.train.grad_clip, config.train.eps = 0.0, 0.0, 0.0
  tx, sched = optim.make_optimizer(config.train, updates_per_step)
  params = {"w": jnp.zeros((2, 2))}
  state = tx.init(params)
  got, want = [], []
  for step in range(6):
    for _ in range(updates_per_step):
      updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
      got.append(-float(updates["w"][0, 0]))
      want.append(float(sched(step)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert want[-1] > 0.5  # still mid-schedule: the steps, not the 18 updates, set the lr
  with pytest.raises(ValueError, match="updates_per_step"):
    optim.make_optimizer(config.train, 0)


def test_weight_decay_skips_vectors():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  config = T.tiny_config(lr=0.1)
  config.train.schedule, config.train.warmup_steps = "constant", 0
  config.train.weight_decay, config.train.grad_clip = 0.5, 0.0
  tx, _ = optim.make_optimizer(config.train)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(updates["b"]), 0.0)
  config.train.decay_all = True  # the official code's AdamW: every parameter decays
  tx, _ = optim.make_optimizer(config.train)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["b"]), -0.1 * 0.5 * np.ones(2), rtol=1e-6)
