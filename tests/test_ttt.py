"""Test-time training: the caller's weights stay bit-identical, batches are independent
without carry-over (and not with it), the update is the hand-made one, and the stage resumes
per batch."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import ttt as ttt_config  # pylint: disable=g-import-not-at-top
from refine_jax.config import default_ttt_config
from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.models import build_model
from refine_jax.train import losses, ttt

TOK = ByteTokenizer()


def tiny_config(**over):
  c = ttt_config.get_config()
  c.model.hidden, c.model.layers, c.model.heads, c.model.chunk_size = 32, 1, 2, 16
  c.data.seq_len = 64
  c.refine.num_chunks, c.refine.rollout_len, c.refine.margin = 2, 3, 4
  c.ttt.steps, c.ttt.batch_size, c.ttt.bucket, c.ttt.lr = 2, 2, 32, 1e-2
  c.ttt.warmup_steps = 0
  c.eval.num_samples, c.eval.plots = 2, False
  c.update_from_flattened_dict(over)
  return c


def prompts(seed, n=2):
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(list("abcdefgh ijklmnop"), size=int(rng.integers(36, 60))))
          for _ in range(n)]


def params_of(model):
  return jax.tree.map(np.array, nnx.state(model, nnx.Param))


def test_prompt_batch_layout():
  b = ttt.prompt_batch([[5, 6, 7], [1, 2, 3, 4, 9]], 8, pad_id=0)
  assert b["inputs"].shape == (2, 8)
  np.testing.assert_array_equal(b["inputs"][1, :5], [1, 2, 3, 4, 0])
  np.testing.assert_array_equal(b["targets"][0, :3], [6, 7, 0])
  np.testing.assert_array_equal(b["loss_mask"].sum(1), [2, 4])
  np.testing.assert_array_equal(b["lengths"], [2, 4])  # ReFINE chunks these, not 8


def test_adapt_leaves_weights_identical_and_matches_manual_sft_step():
  config = tiny_config(**{"ttt.mode": "sft", "ttt.steps": 1, "ttt.grad_clip": 0.0})
  model = build_model(config.model, rngs=nnx.Rngs(0))
  before = params_of(model)
  ids = [[TOK.bos_id] + TOK.encode(p) for p in prompts(0)]
  new = ttt.adapt(model, config, ids)
  jax.tree.map(np.testing.assert_array_equal, params_of(model), before)  # bit-identical
  # One AdamW step on the prompts' NTP loss, by hand.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch = ttt.prompt_batch(ids, 32, TOK.pad_id)
  g = jax.jit(jax.grad(lambda p: losses.ntp_loss(nnx.merge(graphdef, p, rest), batch,
                                                 None)[0]))(params)
  tx = optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=0.0)
  u, _ = tx.update(g, tx.init(params), params)
  want = optax.apply_updates(params, u)
  jax.tree.map(lambda a, w, p, gr: _assert_first_adam_step(a, w, p, gr, lr=1e-2),
               params_of(new), jax.tree.map(np.asarray, want), jax.tree.map(np.asarray, params),
               jax.tree.map(np.asarray, g))
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(params_of(new)),
                                                 jax.tree.leaves(before))) > 1e-3


def _assert_first_adam_step(got, want, before, grad, *, lr):
  """Adam's first step moves each weight by about lr * g / |g|: a gradient near zero (within
  rounding of another CPU's XLA) can flip its update between -lr and +lr. So every update
  must be at most lr, and where |g| stands clear of rounding (>= 1e-3 of the leaf's largest)
  it must match the hand-computed one to 1e-3 of lr."""
  step, want_step = got - before, want - before
  assert np.abs(step).max() <= lr * (1 + 1e-3)
  clear = np.abs(grad) >= 1e-3 * np.abs(grad).max()
  np.testing.assert_allclose(step[clear], want_step[clear], rtol=0, atol=1e-3 * lr)


def _session_run(config, model, batches):
  s = ttt.Session(model, config, TOK)
  answers = [s.answer(b, max_new_tokens=6) for b in batches]
  return answers, params_of(s.last_adapted)


def test_reset_batches_are_independent_and_carry_over_is_not():
  config = tiny_config()
  model = build_model(config.model, rngs=nnx.Rngs(1))
  before = params_of(model)
  b1, b2 = prompts(1), prompts(2)
  (a_alone,), p_alone = _session_run(config, model, [b2])
  (_, a_after), p_after = _session_run(config, model, [b1, b2])
  assert a_alone == a_after
  jax.tree.map(np.testing.assert_array_equal, p_alone, p_after)
  jax.tree.map(np.testing.assert_array_equal, params_of(model), before)
  # With carry-over, batch 2 starts from batch 1's weights: the adapted weights differ.
  config.ttt.carry_over = True
  _, p_carry = _session_run(config, model, [b1, b2])
  diff = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(p_carry),
                                                 jax.tree.leaves(p_alone)))
  assert diff > 1e-4
  jax.tree.map(np.testing.assert_array_equal, params_of(model), before)


def test_answer_with_ttt_matches_session_batches():
  config = tiny_config()
  model = build_model(config.model, rngs=nnx.Rngs(2))
  ps = prompts(3, n=3)
  got = ttt.answer_with_ttt(model, config, ps, tokenizer=TOK, max_new_tokens=5)
  s = ttt.Session(model, config, TOK)
  want = s.answer(ps[:2], 5) + s.answer(ps[2:], 5)
  assert got == want and len(got) == 3


def test_run_writes_results_and_resumes_per_batch(tmp_path, monkeypatch):
  data = tmp_path / "test.jsonl"
  with open(data, "w") as f:
    for i, p in enumerate(prompts(4, n=4)):
      f.write(json.dumps({"prompt": p, "answer": "ab"[i % 2]}) + "\n")
  config = tiny_config(**{"ttt.data_path": str(data), "eval.num_samples": 4})
  workdir = str(tmp_path / "run")
  first = ttt.run(config, workdir)
  assert set(first["ttt"]) == set(first["no_adaptation"]) == {"qa"}
  with open(os.path.join(workdir, "eval", "ttt_progress.jsonl")) as f:
    assert len(f.read().splitlines()) == 2  # 4 prompts, batches of 2
  # Rerun: every batch is in the progress file, so no adaptation runs again.
  os.remove(os.path.join(workdir, "eval", "results.json"))
  monkeypatch.setattr(ttt, "adapt", lambda *a, **k: pytest.fail("batch adapted again"))
  second = ttt.run(config, workdir)
  assert second["ttt"] == first["ttt"]
  assert os.path.exists(os.path.join(workdir, "eval", "results.json"))


def test_bad_mode_is_one_clear_error():
  with pytest.raises(ValueError, match="ttt.mode"):
    ttt.validate(tiny_config(**{"ttt.mode": "dpo"}))


def test_resolve_config_for_other_stages():
  """generate.py passes the checkpoint's own config (e.g. pretrain: empty refine.*)."""
  from configs import pretrain  # pylint: disable=g-import-not-at-top
  c = ttt.resolve_config(pretrain.get_config())
  assert c.refine.reward == "binary" and c.refine.lambda_rl == 0.4
  assert c.ttt.steps == default_ttt_config().steps and c.refine.num_chunks == 8
  own = tiny_config()
  assert ttt.resolve_config(own) is own


def test_refine_adaptation_honours_ppo_epochs_and_minibatches():
  """refine.ppo_epochs x ppo_minibatches > 1: each TTT step collects rollouts once and makes
  that many clipped updates (the ratio moves off 1, so the clip acts); 1 x 1 is the fused
  step, whose ratio is exactly 1."""
  model = build_model(tiny_config().model, rngs=nnx.Rngs(0))
  ids = [[TOK.bos_id] + TOK.encode(p) for p in prompts(0)]

  def run(**over):
    # cosine reward: a random model's binary rewards are all 0, so no advantage to clip.
    config = tiny_config(**{"ttt.steps": 1, "ttt.lr": 0.05, "refine.reward": "cosine", **over})
    new, rows = ttt.adapt(model, config, ids, return_metrics=True)
    return params_of(new), rows[0]

  p1, m1 = run()
  p6, m6 = run(**{"refine.ppo_epochs": 3, "refine.ppo_minibatches": 2})
  assert m1["clip_frac"] == 0.0 and m6["clip_frac"] > 0.0
  # Six Adam updates of ~lr each move the weights further than one.
  before = params_of(model)
  dist = lambda p: max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(p),
                                                           jax.tree.leaves(before)))
  assert dist(p6) > 2 * dist(p1)
