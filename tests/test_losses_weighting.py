"""The objective does not depend on memory knobs: every stage's loss, metrics and gradient are
the same for train.microbatches 1, 2, 4 (2 in the slow run; NTP's 2 and 4 in
test_train_microbatch.py) and (at a zero learning rate, so the weights stay put)
for any PPO minibatch split, with ragged masks -- rows whose token counts differ by 30x, so
the old mean of microbatch means would be far off (each test shows that too).

Tolerances: float32 sums of a few hundred terms reordered, so 1e-5 relative on losses and
1e-3 of the update's own size on parameters (tests/test_train_microbatch.py's rule)."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from refine_jax import losses
from refine_jax.models import build_model
from refine_jax.refine import step as refine_step
from refine_jax.train import optim, posttrain, ppo, qa_data, ttt, update
from refine_jax.train import losses as train_losses
from refine_jax.config import default_model_config, default_refine_config

import test_posttrain as PT
import test_ttt as TT

V, SEQ = 32, 32


def _split(model):
  return nnx.split(model, nnx.Param, ...)


def _tiny_lm():
  cfg = default_model_config()
  cfg.arch, cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads, cfg.chunk_size = (
      "deltanet", V, 32, 1, 2, 8)
  return build_model(cfg, rngs=nnx.Rngs(0))


def _ragged_batch(B=8, seed=1):
  """Rows alternate between 3 and all SEQ trained targets; strided microbatches of M = 2 then
  hold 4 x 3 vs 4 x SEQ tokens."""
  x = np.random.default_rng(seed).integers(0, V, (B, SEQ + 1)).astype(np.int32)
  keep = np.where(np.arange(B) % 2 == 0, 3, SEQ)
  mask = (np.arange(SEQ)[None] < keep[:, None]).astype(np.float32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": mask}


def _rcfg(**kw):
  """Sampled ReFINE (entropy selection, temperature 1): per-row keys make the draws the same
  whatever microbatch a row lands in."""
  rc = default_refine_config()
  rc.num_chunks, rc.rollout_len, rc.margin, rc.lambda_rl = 2, 2, 0, 1.0
  rc.update(kw)
  return rc


def _moved(p0, p1):
  return max(float(jnp.max(jnp.abs(b - a))) for a, b in zip(jax.tree.leaves(p0),
                                                            jax.tree.leaves(p1)))


def _assert_same(p0, p1, pm, outs1, outsm, keys):
  for k in keys:
    np.testing.assert_allclose(float(outsm[k]), float(outs1[k]), rtol=1e-5, atol=1e-7,
                               err_msg=k)
  if p1 is not None:
    moved = _moved(p0, p1)
    assert moved > 1e-5, moved
    assert _moved(p1, pm) <= 1e-3 * moved + 1e-7, (_moved(p1, pm), moved)


def _run(step, params, opt, rest, batch, rng=jax.random.key(0)):
  return jax.jit(step)(params, opt, rest, batch, rng)


@pytest.mark.parametrize("microbatches", [pytest.param(2, marks=pytest.mark.slow), 4])
def test_fused_refine_microbatches_ragged(microbatches):
  graphdef, p0, rest = _split(_tiny_lm())
  tx, batch, rc = optax.sgd(0.5), _ragged_batch(), _rcfg()
  obj = refine_step.objective(rc)
  p1, _, out1 = _run(update.make_train_step(graphdef, obj, tx), p0, tx.init(p0), rest, batch)
  pm, _, outm = _run(update.make_train_step(graphdef, obj, tx, microbatches), p0, tx.init(p0),
                     rest, batch)
  assert 0.0 < float(out1["valid_frac"]) < 1.0  # short rows have no valid position: ragged
  assert abs(float(out1["pg_loss"])) > 0.0
  _assert_same(p0, p1, pm, out1, outm, ("loss", "ntp_loss", "pg_loss", "rl_loss", "reward_mean",
                                        "reward_std", "clip_frac", "entropy_selected",
                                        "valid_frac", "grad_norm"))
  # The test can fail: equal-weight microbatch means differ from the batch's token mean.
  model = nnx.merge(graphdef, p0, rest)
  mbs = [{k: v[i::microbatches] for k, v in batch.items()} for i in range(microbatches)]
  old = np.mean([float(losses.ntp_loss(model(mb["inputs"]).logits, mb["targets"],
                                       mb["loss_mask"])) for mb in mbs])
  assert abs(old - float(out1["ntp_loss"])) > 1e-3 * float(out1["ntp_loss"])


def test_objective_weights_equal_the_terms_weights():
  """Objective.weights(batch) (from masks alone) is exactly the sum of the terms' weights over
  any row split: for the fused ReFINE objective in both aggregations, with right-padded lengths
  and packed documents (segment_ids)."""
  model = _tiny_lm()
  batch = _ragged_batch()
  batch["lengths"] = np.array([3, 20, 3, 32, 3, 11, 3, 32], np.int32)
  batch["segment_ids"] = np.where(np.arange(SEQ)[None] < 14, 1, 2) * np.ones((8, 1), np.int32)
  for agg in ("token-mean", "seq-mean"):
    rc = _rcfg(aggregation=agg, margin=2, rollouts_per_position=2, group="sequence")
    obj = refine_step.objective(rc)
    want = obj.weights(batch)
    weights_of = jax.jit(lambda mb, obj=obj: {n: t.weight for n, t in
                                              obj.terms(model, mb, jax.random.key(0))[0].items()})
    for M in (1, 4):
      got = {}
      for i in range(M):
        mb = {k: v[i::M] for k, v in batch.items()}
        mb["row_ids"] = np.arange(8)[i::M]
        for n, w in weights_of(mb).items():
          got[n] = got.get(n, 0.0) + float(w)
      for n in want:
        assert got[n] == float(want[n]), (agg, M, n, got[n], float(want[n]))
    assert 0 < float(want["pg_loss"]) < 8 * 2 * 2 * (2 if agg == "token-mean" else 1)


def test_ppo_microbatches_and_minibatch_split_ragged():
  graphdef, p0, rest = _split(_tiny_lm())
  batch, rc = _ragged_batch(), _rcfg(ppo_epochs=1, ppo_minibatches=1)
  keys = ("loss", "ntp_loss", "pg_loss", "reward_mean", "clip_frac", "valid_frac")
  tx = optax.sgd(0.5)
  p1, _, out1 = _run(ppo.ppo_step(rc)(graphdef, tx, 1), p0,
                     tx.init(p0), rest, batch)
  p2, _, out2 = _run(ppo.ppo_step(rc)(graphdef, tx, 2), p0,
                     tx.init(p0), rest, batch)
  _assert_same(p0, p1, p2, out1, out2, keys + ("grad_norm",))
  # Minibatch splits: each update is its own minibatch's mean; at lr 0 the weights do not move,
  # and the step's logged numbers are the whole batch's whatever the split.
  zero = optax.sgd(0.0)
  outs = {}
  for mbs, M in ((1, 1), (2, 2), (4, 1)):
    rcm = _rcfg(ppo_epochs=2, ppo_minibatches=mbs)
    outs[mbs, M] = _run(ppo.ppo_step(rcm)(graphdef, zero, M), p0,
                        zero.init(p0), rest, batch)[2]
  for key in outs:
    _assert_same(None, None, None, outs[1, 1], outs[key], keys)


def test_ntp_minibatch_split_ragged():
  graphdef, p0, rest = _split(_tiny_lm())
  batch, zero = _ragged_batch(), optax.sgd(0.0)
  out = {mbs: _run(update.loss_step(train_losses.ntp_loss, 2, mbs)(graphdef, zero, 1), p0,
                   zero.init(p0), rest, batch)[2] for mbs in (1, 2, 4)}
  for mbs in (2, 4):
    _assert_same(None, None, None, out[1], out[mbs], ("loss", "accuracy"))


@pytest.mark.parametrize("mode", ["nested_refine", "nested_sft"])
def test_posttrain_microbatches_ragged(mode):
  """Answers of 1 vs 4 tokens and prompts of different lengths: the inner and the outer update
  each divide by their whole batch's tokens."""
  config = PT.tiny_config(mode, **{"train.batch_size": 4})
  samples = PT.samples(0, n=4)
  b = qa_data.qa_batch(PT.TOK, [dataclasses.replace(s, answers=(a,), target=a) for s, a in
                                zip(samples, ("7", "0123", "5", "6789"))], PT.T,
                       int(config.posttrain.answer_cap))
  assert len(set(b["loss_mask"].sum(1))) > 1  # answers of different token counts
  model = build_model(config.model, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  sgd = optax.sgd(1e-1)
  tx = optim.Nested(sgd, sgd)
  outs, ps = {}, {}
  for M in (1, 4):
    c = copy.deepcopy(config)
    c.train.microbatches = M
    step = posttrain.nested_step(c, PT.TOK.pad_id)(graphdef, tx, M)
    ps[M], _, outs[M] = _run(step, params, tx.init(params), rest, b, jax.random.key(3))
  keys = ("loss", "inner_loss", "inner_ntp_loss", "answer_accuracy")
  if mode == "nested_refine":
    keys += ("inner_pg_loss", "inner_reward_mean")
  _assert_same(params, ps[1], ps[4], outs[1], outs[4], keys)


def test_ttt_minibatch_split_ragged():
  """TTT's PPO updates on right-padded prompts of very different lengths: at lr 0 the logged
  loss does not depend on refine.ppo_minibatches."""
  model = build_model(TT.tiny_config().model, rngs=nnx.Rngs(0))
  ids = [[TT.TOK.bos_id] + TT.TOK.encode(p) for p in TT.prompts(0, n=4)]
  ids[1] = ids[1][:12]
  batch = ttt.prompt_batch(ids, 32, TT.TOK.pad_id)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  zero = optax.sgd(0.0)
  outs = {}
  for mbs in (1, 4):
    config = ttt.resolve_config(TT.tiny_config(**{"refine.ppo_epochs": 2,
                                                  "refine.ppo_minibatches": mbs,
                                                  "ttt.batch_size": 4}))
    step = ttt.adapt_step(config)(graphdef, zero)
    outs[mbs] = _run(step, params, zero.init(params), rest, batch)[2]
  _assert_same(None, None, None, outs[1], outs[4], ("loss", "ntp_loss", "pg_loss",
                                                    "valid_frac"))


def test_token_nll_is_optax_cross_entropy_up_to_rounding():
  """losses.token_nll keeps its own rounding (runs reproduce bit for bit) but is optax's
  integer-label cross-entropy: equal to a few float32 ulps of the value, at any logit scale."""
  for scale in (1.0, 8.0, 40.0):
    logits = scale * jax.random.normal(jax.random.key(0), (4, 33, 259))
    t = jax.random.randint(jax.random.key(1), (4, 33), 0, 259)
    ours = np.asarray(losses.token_nll(logits, t), np.float64)
    ref = np.asarray(optax.losses.softmax_cross_entropy_with_integer_labels(logits, t),
                     np.float64)
    ulp = np.finfo(np.float32).eps * (np.abs(ref) + np.abs(np.asarray(logits)).max())
    assert np.all(np.abs(ours - ref) <= 4 * ulp), scale
