"""train.microbatches: gradient accumulation inside one jitted step equals the un-accumulated
step (NTP, the fused ReFINE step, the PPO builder), runs as a loop, and bad splits are refused.
Ragged masks included: every term is divided once by its weight in the whole update batch
(refine_jax.losses), so microbatches never change the objective (tests/test_losses_weighting.py
covers every stage and the minibatch splits).

The optimiser here is plain SGD: its update is linear in the grads, so a step that summed
instead of averaging the microbatch grads would move the params M times as far (Adam's first
update is nearly scale-free and would hide that)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import pretrain
from refine_jax.models import build_model
from refine_jax.refine import step as refine_step
from refine_jax.train import loop, optim, ppo, update
from refine_jax.train import losses
from refine_jax.train.validate import validate_config
from refine_jax.config import default_model_config, default_refine_config

from refine_jax.train.spec import StepSpec
import tiny as T

V, SEQ = 32, 24


def _split(model):
  return nnx.split(model, nnx.Param, ...)


def _run_step(step, params, tx, rest, batch, rng=jax.random.key(0)):
  return jax.jit(step)(params, tx.init(params), rest, batch, rng)


def _assert_same_update(p0, p1, pm):
  """p_M equals p_1 to 1e-3 of the size of the update itself (not a fixed atol)."""
  moved = max(float(jnp.max(jnp.abs(b - a))) for a, b in zip(jax.tree.leaves(p0),
                                                              jax.tree.leaves(p1)))
  diff = max(float(jnp.max(jnp.abs(b - a))) for a, b in zip(jax.tree.leaves(p1),
                                                             jax.tree.leaves(pm)))
  assert moved > 1e-4, moved  # the step really moved the params
  assert diff <= 1e-3 * moved + 1e-7, (diff, moved)


def _ntp_batch(B=8, T_=16, seed=0, ragged=True):
  """Rows with very different token counts (row i keeps its first 2 + 13 * (i % 2) targets,
  so strided microbatches of 4 hold 8 vs 60 tokens): a mean of microbatch means is then
  far from the token mean."""
  x = np.random.default_rng(seed).integers(0, V, (B, T_)).astype(np.int32)
  mask = np.ones(x.shape, np.float32)
  if ragged:
    mask = (np.arange(T_)[None] < (2 + 13 * (np.arange(B) % 2))[:, None]).astype(np.float32)
  return {"inputs": x, "targets": (x * 3 + 1) % V, "loss_mask": mask}


@pytest.mark.parametrize("microbatches", [2, 4])
def test_ntp_step_equals_unaccumulated(microbatches):
  graphdef, p0, rest = _split(T.TinyLM(vocab=V, rngs=nnx.Rngs(0)))
  tx = optax.sgd(0.5)
  batch = _ntp_batch()
  p1, _, out1 = _run_step(update.make_train_step(graphdef, losses.ntp_loss, tx), p0, tx, rest,
                          batch)
  pm, _, outm = _run_step(update.make_train_step(graphdef, losses.ntp_loss, tx, microbatches), p0,
                          tx, rest, batch)
  np.testing.assert_allclose(float(outm["loss"]), float(out1["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(outm["grad_norm"]), float(out1["grad_norm"]), rtol=1e-4)
  np.testing.assert_allclose(float(outm["accuracy"]), float(out1["accuracy"]), rtol=1e-5)
  _assert_same_update(p0, p1, pm)
  # The test can fail: the equal-weight mean of microbatch means is far from the token mean.
  mbs = [{k: v[i::microbatches] for k, v in batch.items()} for i in range(microbatches)]
  model = nnx.merge(graphdef, p0, rest)
  old = np.mean([float(losses.ntp_loss(model, mb, None)[0]) for mb in mbs])
  assert abs(old - float(out1["loss"])) > 100 * 1e-5 * float(out1["loss"]), (old, out1["loss"])


@pytest.mark.parametrize("microbatches", [1, 2])
def test_ntp_epochs_x_minibatches_equal_sequential_updates(microbatches):
  """train.ntp_epochs=2 x ntp_minibatches=2: four SGD-with-momentum updates in one step, on
  strided minibatches (rows 0,2,.. then 1,3,..) in that order, as written out by hand."""
  graphdef, p0, rest = _split(T.TinyLM(vocab=V, rngs=nnx.Rngs(0)))
  tx = optax.sgd(0.5, momentum=0.9)
  batch = _ntp_batch()
  step = update.loss_step(losses.ntp_loss, 2, 2)(graphdef, tx, microbatches)
  got, opt, out = _run_step(step, p0, tx, rest, batch)

  loss_grad = jax.jit(jax.value_and_grad(
      lambda p, b: losses.ntp_loss(nnx.merge(graphdef, p, rest), b, None)[0]))
  p, o = p0, tx.init(p0)
  nll = tokens = 0.0
  for i in range(4):
    mb = {k: v[i % 2::2] for k, v in batch.items()}
    loss, g = loss_grad(p, mb)
    nll, tokens = nll + float(loss) * mb["loss_mask"].sum(), tokens + mb["loss_mask"].sum()
    u, o = tx.update(g, o, p)
    p = optax.apply_updates(p, u)
  _assert_same_update(p0, p, got)
  # The logged loss weights every update's tokens: sum of NLL over all updates / their tokens.
  np.testing.assert_allclose(float(out["loss"]), nll / tokens, rtol=1e-5)
  c = pretrain.get_config()
  c.train.ntp_minibatches = 3
  with pytest.raises(ValueError, match="train.ntp_minibatches=3"):
    validate_config(c, num_devices=1, process_count=1)


def test_ppo_epochs_apply_the_ntp_term_once_per_update():
  """Decided: each PPO update's loss includes lambda_ntp * NTP on its minibatch. With
  lambda_rl = 0 the PPO step is then exactly ppo_epochs x ppo_minibatches NTP updates."""
  graphdef, p0, rest = _split(_tiny_lm())
  rc = _greedy_rcfg(ppo_epochs=2, ppo_minibatches=2, lambda_rl=0.0)
  tx, batch = optax.sgd(0.5, momentum=0.9), _refine_batch()
  ppo_step = ppo.ppo_step(rc)(graphdef, tx)
  p_ppo, _, out = _run_step(ppo_step, p0, tx, rest, batch)
  ntp = update.loss_step(losses.ntp_loss, 2, 2)(graphdef, tx)
  p_ntp, _, out_ntp = _run_step(ntp, p0, tx, rest, batch)
  _assert_same_update(p0, p_ntp, p_ppo)
  np.testing.assert_allclose(float(out["ntp_loss"]), float(out_ntp["ntp_loss"]), rtol=1e-5)


def test_microbatch_step_is_a_loop_and_rows_round_trip():
  graphdef, p0, rest = _split(T.TinyLM(vocab=V, rngs=nnx.Rngs(0)))
  tx = optax.sgd(0.5)
  batch, rng = _ntp_batch(), jax.random.key(0)
  hlo = {m: jax.jit(update.make_train_step(graphdef, losses.ntp_loss, tx, m)).lower(
      p0, tx.init(p0), rest, batch, rng).as_text() for m in (1, 4)}
  assert "while" not in hlo[1] and "while" in hlo[4]
  # split/merge are inverses, and a microbatch takes every M-th row (each device keeps a share).
  x = np.arange(24).reshape(12, 2)
  x_M = update.split_microbatches(x, 3)
  assert x_M.shape == (3, 4, 2) and list(x_M[1, :, 0]) == [2, 8, 14, 20]
  np.testing.assert_array_equal(update.merge_microbatches(x_M), x)


def _tiny_lm():
  cfg = default_model_config()
  cfg.arch, cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads, cfg.chunk_size = (
      "deltanet", V, 32, 1, 2, 8)
  return build_model(cfg, rngs=nnx.Rngs(0))


def _greedy_rcfg(**kw):
  """Deterministic ReFINE (argmax selection, greedy rollouts): the per-microbatch rng does not
  change anything, so M microbatches must reproduce the full batch."""
  rc = default_refine_config()
  rc.num_chunks, rc.rollout_len, rc.rollouts_per_position, rc.margin = 3, 3, 2, 2
  rc.selection, rc.temperature, rc.lambda_rl = "argmax", 0.0, 1.0
  # Greedy samples of one position are identical: only per-sequence groups have rewards that
  # differ by more than rounding (a per-position group would standardise rounding noise).
  rc.group = "sequence"
  rc.update(kw)
  return rc


def _refine_batch(B=4):
  x = np.random.default_rng(1).integers(0, V, (B, SEQ + 1)).astype(np.int32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((B, SEQ), np.float32)}


@pytest.mark.slow  # all-ones masks; the ragged version is tests/test_losses_weighting.py
def test_refine_fused_step_equals_unaccumulated():
  graphdef, p0, rest = _split(_tiny_lm())
  rc, tx, batch = _greedy_rcfg(), optax.sgd(0.5), _refine_batch()
  loss_fn = refine_step.make_loss_fn(rc)
  p1, _, out1 = _run_step(update.make_train_step(graphdef, loss_fn, tx), p0, tx, rest, batch)
  p2, _, out2 = _run_step(update.make_train_step(graphdef, loss_fn, tx, 2), p0, tx, rest, batch)
  assert float(out1["valid_frac"]) == 1.0  # equal rollout-token counts per microbatch
  assert float(out1["rl_loss"]) != 0.0     # the RL term is really in the update
  for k in ("loss", "rl_loss", "ntp_loss", "reward_mean"):
    np.testing.assert_allclose(float(out2[k]), float(out1[k]), rtol=1e-5, atol=1e-7, err_msg=k)
  _assert_same_update(p0, p1, p2)


@pytest.mark.slow  # all-ones masks; the ragged version is tests/test_losses_weighting.py
def test_ppo_builder_equals_unaccumulated():
  graphdef, p0, rest = _split(_tiny_lm())
  rc, tx, batch = _greedy_rcfg(ppo_epochs=1, ppo_minibatches=2), optax.sgd(0.5), _refine_batch()
  make_step = ppo.ppo_step(rc)
  p1, _, out1 = _run_step(make_step(graphdef, tx, 1), p0, tx, rest, batch)
  p2, _, out2 = _run_step(make_step(graphdef, tx, 2), p0, tx, rest, batch)
  for k in ("loss", "rl_loss", "reward_mean", "grad_norm"):
    np.testing.assert_allclose(float(out2[k]), float(out1[k]), rtol=1e-4, atol=1e-7, err_msg=k)
  _assert_same_update(p0, p1, p2)
  # Minibatches of 2 sequences do not split into 4 microbatches.
  with pytest.raises(ValueError, match=r"train.batch_size=4 .*refine.ppo_minibatches=2.*"
                                       r"train.microbatches=4"):
    _run_step(ppo.ppo_step(rc)(graphdef, tx, 4), p0, tx, rest, batch)


def test_grad_share_is_the_rl_terms_part_of_the_gradient():
  """refine.log_grad_share logs |g_RL| / (|g_RL| + |g_NTP|) of the update's gradient: checked
  against g_NTP from the plain NTP objective and g_RL = g - g_NTP read off an SGD(lr=1) step,
  on a ragged mask; the update itself is bit-identical with the metric off."""
  graphdef, p0, rest = _split(_tiny_lm())
  tx, batch = optax.sgd(1.0), _refine_batch()
  batch["loss_mask"] = (np.arange(SEQ)[None] < np.array([[SEQ], [9], [SEQ], [5]])).astype(
      np.float32)
  plain = refine_step.make_loss_fn(_greedy_rcfg())
  shared = refine_step.make_loss_fn(_greedy_rcfg(log_grad_share=True))
  p1, _, out = _run_step(update.make_train_step(graphdef, plain, tx), p0, tx, rest, batch)
  p2, _, out2 = _run_step(update.make_train_step(graphdef, shared, tx), p0, tx, rest, batch)
  assert "grad_share" not in out
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
  g = jax.tree.map(lambda a, b: a - b, p0, p1)  # SGD, lr 1: the step's gradient
  g_ntp = jax.grad(lambda p: losses.ntp_loss(nnx.merge(graphdef, p, rest), batch, None)[0])(p0)
  g_rl = jax.tree.map(lambda a, b: a - b, g, g_ntp)
  a, b = update.global_norm(g_rl), update.global_norm(g_ntp)
  assert 0.02 < float(a / (a + b)) < 0.98  # both parts really there
  np.testing.assert_allclose(float(out2["grad_share"]), float(a / (a + b)), rtol=2e-3)


@pytest.mark.slow  # one more compile of the step; the share's own check is the test above
def test_grad_share_does_not_depend_on_microbatches():
  graphdef, p0, rest = _split(_tiny_lm())
  tx, batch = optax.sgd(1.0), _refine_batch()
  batch["loss_mask"] = (np.arange(SEQ)[None] < np.array([[SEQ], [9], [SEQ], [5]])).astype(
      np.float32)
  shared = refine_step.make_loss_fn(_greedy_rcfg(log_grad_share=True))
  _, _, out1 = _run_step(update.make_train_step(graphdef, shared, tx), p0, tx, rest, batch)
  _, _, out2 = _run_step(update.make_train_step(graphdef, shared, tx, 2), p0, tx, rest, batch)
  np.testing.assert_allclose(float(out2["grad_share"]), float(out1["grad_share"]), rtol=1e-4)


def test_bad_microbatch_configs_are_refused(tmp_path):
  c = pretrain.get_config()
  c.train.batch_size, c.train.microbatches = 8, 3
  with pytest.raises(ValueError, match=r"train.microbatches=3"):
    validate_config(c, num_devices=1, process_count=1)
  c.train.microbatches = 2  # 8 = 2 microbatches x 4 devices: fine; x 8 devices: not
  validate_config(c, num_devices=4, process_count=1)
  with pytest.raises(ValueError, match=r"train.microbatches=2 .*mesh.data\*mesh.fsdp=8"):
    validate_config(c, num_devices=8, process_count=1)
  c.train.microbatches, c.train.mu_dtype = 1, "float16"
  with pytest.raises(ValueError, match=r"train.mu_dtype='float16'"):
    validate_config(c, num_devices=1, process_count=1)
  # The loop builds the stage's step for config.train.microbatches: no step can disagree.
  c = T.tiny_config(batch_size=8)
  c.train.microbatches, c.train.steps = 2, 1
  seen = []

  def make_step(graphdef, tx, microbatches):
    seen.append(microbatches)
    return update.loss_step(losses.ntp_loss)(graphdef, tx, microbatches)

  loop.run_training(c, str(tmp_path), StepSpec(make_step, 1, {}), eval_fn=None,
                    model_fn=lambda: T.TinyLM(rngs=nnx.Rngs(0)),
                    train_iter=T.SyntheticIterator(8, 8))
  assert seen == [2]


def test_bf16_first_moment():
  c = T.tiny_config()
  params = nnx.state(T.TinyLM(rngs=nnx.Rngs(0)), nnx.Param)
  for name, want in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
    c.train.mu_dtype = name
    tx, _ = optim.make_optimizer(c.train)
    adam = tx.init(params)[1][0]  # chain(clip, adamw) -> adamw -> ScaleByAdamState
    assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(want)}
    assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.float32)}
