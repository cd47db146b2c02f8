"""Capturing only what the rollouts need (LM capture_at, refine.capture): the caches, log-probs,
gradients and the ReFINE step equal those of the full capture, on packed ragged rows, for
every mixer, while a fast-weight capture stops growing with the sequence length."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from refine_jax.config import default_model_config, default_refine_config
from refine_jax.models import build_model
from refine_jax.refine import policy, rollout
from refine_jax.refine import step as refine_step
from refine_jax.train import ppo, update

V = 48


def _model(arch, **over):
  cfg = default_model_config()
  cfg.arch, cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads, cfg.chunk_size = (
      arch, V, 32, 2, 2, 8)
  if arch == "lact":
    cfg.lact.chunk, cfg.lact.window = 8, 8
  for k, v in over.items():
    setattr(cfg, k, v)
  return build_model(cfg, rngs=nnx.Rngs(0))


def _packed(B=2, T=40, seed=0):
  """Random tokens in packed rows of ragged documents (starts mid-chunk), positions in them."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(0, V, (B, T)).astype(np.int32)
  seg = np.ones((B, T), np.int32)
  seg[0, 13:] = 2
  seg[1, 5:] = 2
  seg[1, 29:] = 3
  pos = np.array([[3, 12, 20, 35], [4, 9, 30, 31]], np.int32)
  return jnp.asarray(inputs), jnp.asarray(seg), jnp.asarray(pos)


def _nbytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("arch,over", [("deltanet", {}),
                                       pytest.param("gated_deltanet", {}, marks=pytest.mark.slow),
                                       pytest.param("deltanet", {"scan_layers": False},
                                                    marks=pytest.mark.slow),
                                       pytest.param("deltanet", {"use_short_conv": False},
                                                    marks=pytest.mark.slow),
                                       # attention / LaCT ignore capture_at (full capture)
                                       pytest.param("transformer", {}, marks=pytest.mark.slow),
                                       pytest.param("lact", {}, marks=pytest.mark.slow)],
                         ids=["deltanet", "gated", "unrolled", "no-conv", "attention", "lact"])
def test_capture_at_gives_the_full_captures_caches_and_gradients(arch, over):
  model = _model(arch, **over)
  pos = _packed()[2]
  full, lean = _scored(model, dict(capture=True)), _scored(model, dict(capture_at=pos))
  # Gathers are exact: the caches and everything computed from them agree to rounding.
  _assert_same(full, lean, values=1e-6, grads=1e-5)
  # (sizes: test_a_lean_fast_weight_capture_does_not_grow_with_the_sequence)


@pytest.mark.parametrize("arch,stride,over", [
    ("deltanet", 2, {}),
    pytest.param("gated_deltanet", 3, {}, marks=pytest.mark.slow),
    pytest.param("deltanet", 8, {"use_short_conv": False}, marks=pytest.mark.slow),
    pytest.param("deltanet", 2, {"scan_layers": False}, marks=pytest.mark.slow)],
    ids=["deltanet", "gated", "window-past-the-end-no-conv", "unrolled"])
def test_a_strided_capture_gives_the_full_captures_caches_and_gradients(arch, stride, over):
  """capture_stride=S keeps every S-th chunk state and the mixer inputs; cache_at recomputes the
  window's features and advances over up to S chunks. The maths is the full capture's, in
  another order: caches, log-probs, decode states and gradients agree to rounding (relative to
  each quantity's scale), on packed rows whose documents start inside windows."""
  model = _model(arch, **over)
  full = _scored(model, dict(capture=True))
  strided = _scored(model, dict(capture=True, capture_stride=stride))
  _assert_same(full, strided, values=2e-5, grads=1e-4)


def _scored(model, capture_kw):
  """((value, (caches, log-probs, decode hidden states)), grads) of a score that reads the
  caches cut at _packed()'s positions from a pass with capture_kw."""
  inputs, seg, pos = _packed()
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, V, (8, 3)), jnp.int32)
  rc = default_refine_config()
  rc.rollout_len = 3
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def score(params):
    m = nnx.merge(graphdef, params, rest)
    out = m(inputs, segment_ids=seg, **capture_kw)
    cache = m.cache_at(out.captured, pos, inputs.shape[1] + 3)
    lp = policy.policy_logprobs(m, out, pos, tokens, rc, cache_Bc=cache)
    hid, _ = rollout.feed_tokens(m, cache, tokens[:, :2])
    return jnp.sum(lp) + 0.1 * jnp.sum(out.logits[:, ::7]), (cache, lp, hid)

  return jax.jit(jax.value_and_grad(score, has_aux=True))(params)


def _assert_same(want, got, *, values, grads):
  """Every cache / log-prob / hidden value within `values` and every gradient within `grads`
  of its tree's largest magnitude."""
  (v_want, aux_want), g_want = want
  (v_got, aux_got), g_got = got
  for a, b in zip(jax.tree.leaves(aux_want), jax.tree.leaves(aux_got)):
    np.testing.assert_allclose(b, a, rtol=0, atol=values * (1.0 + float(jnp.max(jnp.abs(a)))))
  np.testing.assert_allclose(v_got, v_want, rtol=values)
  for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got)):
    np.testing.assert_allclose(b, a, rtol=0, atol=grads * (1e-3 + float(jnp.max(jnp.abs(a)))))


def test_a_strided_capture_keeps_one_state_in_s_and_the_inputs():
  model = _model("gated_deltanet")
  x = jnp.zeros((1, 160), jnp.int32)              # 20 chunks of 8
  full = jax.eval_shape(lambda x: model(x, capture=True).captured, x)
  strided = jax.eval_shape(lambda x: model(x, capture=True, capture_stride=4).captured, x)
  assert strided["states"].shape[2] == 5 and full["chunk_states"].shape[2] == 20
  assert strided["x"].shape == (2, 1, 160, 32)    # [layers, B, T, hidden]
  assert _nbytes(strided) < _nbytes(full) / 2
  with pytest.raises(ValueError, match="capture_stride=0 must be >= 1"):
    model(x, capture=True, capture_stride=0)


def test_a_lean_fast_weight_capture_does_not_grow_with_the_sequence():
  model = _model("gated_deltanet")
  pos = jnp.array([[3, 12, 20, 35]], jnp.int32)
  sizes = {}
  for T in (40, 160):
    x = jnp.zeros((1, T), jnp.int32)
    lean = jax.eval_shape(lambda x: model(x, capture_at=pos).captured, x)
    full = jax.eval_shape(lambda x: model(x, capture=True).captured, x)
    sizes[T] = _nbytes(lean), _nbytes(full)
  assert sizes[40][0] == sizes[160][0]            # positions x (state + one chunk + conv)
  assert sizes[160][1] > 3 * sizes[40][1]         # every chunk's state and every token


def test_capture_at_rejects_positions_of_the_wrong_shape():
  model = _model("deltanet")
  with pytest.raises(ValueError, match="capture_at must be \\[batch, n\\]"):
    model(jnp.zeros((2, 16), jnp.int32), capture_at=jnp.zeros((3, 2), jnp.int32))


@pytest.mark.parametrize("use_ppo,captures", [
    pytest.param(False, ("selected", "strided"), marks=pytest.mark.slow),
    pytest.param(True, ("selected",), marks=pytest.mark.slow),
    (True, ("strided",))],  # collect+ppo: the presets' path, the PPO updates' branch feed
    ids=["fused", "collect+ppo-selected", "collect+ppo-strided"])
def test_refine_capture_selected_and_strided_are_the_same_step(use_ppo, captures):
  """refine.capture="selected" (a selection pass, then a lean capture pass) and "strided" (every
  2nd chunk state, windows recomputed) vs "all": the same positions, rollouts, loss, metrics
  and update, on packed ragged rows."""
  model = _model("deltanet")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  inputs, seg, _ = _packed(B=4, T=48, seed=3)
  mask = (np.arange(48)[None] < np.array([[48], [40], [48], [31]])).astype(np.float32)
  batch = {"inputs": inputs, "targets": jnp.roll(inputs, -1, axis=1), "segment_ids": seg,
           "loss_mask": jnp.asarray(mask)}
  tx = optax.sgd(0.1)
  outs = {}
  for capture in ("all",) + captures:
    rc = default_refine_config()
    rc.num_chunks, rc.rollout_len, rc.margin, rc.capture = 3, 3, 4, capture
    rc.capture_stride = 2
    if use_ppo:
      rc.ppo_epochs, rc.ppo_minibatches = 2, 2
      col = jax.jit(lambda p: refine_step.collect(nnx.merge(graphdef, p, rest), batch,
                                                  jax.random.key(0), rc))(params)
      make_step = ppo.ppo_step(rc)
    else:
      col = None
      make_step = update.loss_step(refine_step.make_loss_fn(rc))
    step = jax.jit(make_step(graphdef, tx, 1))
    p1, _, metrics = step(params, tx.init(params), rest, batch, jax.random.key(0))
    outs[capture] = col, p1, metrics
  col_a, p_a, m_a = outs["all"]
  for capture in captures:
    col_s, p_s, m_s = outs[capture]
    if use_ppo:
      np.testing.assert_array_equal(col_s.positions_Bc, col_a.positions_Bc)
      np.testing.assert_array_equal(col_s.tokens_Gk, col_a.tokens_Gk)
      np.testing.assert_allclose(col_s.rewards_BG, col_a.rewards_BG, rtol=0, atol=1e-5)
    for k in ("loss", "ntp_loss", "pg_loss", "reward_mean", "entropy_selected", "grad_norm"):
      np.testing.assert_allclose(m_s[k], m_a[k], rtol=1e-5, atol=1e-7, err_msg=f"{capture} {k}")
    # The updates agree to a small part of one update's size.
    for p0, a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_a), jax.tree.leaves(p_s)):
      step_size = float(jnp.abs(a - p0).max())
      assert float(jnp.abs(a - b).max()) <= 1e-4 * step_size + 1e-7, capture



# The PPO update's path (LM branch_tokens, tests/test_lm_branch.py) makes the same multi-token
# calls from a cache by default; this checks policy_logprobs' own use of them.
@pytest.mark.parametrize("arch,over", [pytest.param("gated_deltanet", {}, marks=pytest.mark.slow),
                                       pytest.param("transformer", {}, marks=pytest.mark.slow),
                                       pytest.param("deltanet", {"attn_layers": (1,)},
                                                    marks=pytest.mark.slow)],
                         ids=["gated", "attention", "hybrid"])
def test_feeding_rollout_tokens_in_one_call_equals_token_by_token(arch, over):
  """policy_logprobs feeds the k-1 stored tokens from the caches in one call (the chunked
  path) where every mixer allows it: the hidden states, logits and their gradients equal the
  decode path's, from caches cut out of a packed capture."""
  model = _model(arch, **over)
  assert model.multi_token_decode
  inputs, seg, pos = _packed()
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, V, (8, 4)), jnp.int32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def fed(params, one_call):
    m = nnx.merge(graphdef, params, rest)
    out = m(inputs, segment_ids=seg, capture_at=pos)
    cache = m.cache_at(out.captured, pos, inputs.shape[1] + 4)
    hid, logits = rollout.feed_tokens(m, cache, tokens, one_call=one_call)
    lp = jax.nn.log_softmax(logits)
    return jnp.sum(jnp.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)), (hid, logits)

  run = lambda one: jax.jit(jax.value_and_grad(lambda p: fed(p, one), has_aux=True))(params)
  (v_step, aux_step), g_step = run(False)
  (v_one, aux_one), g_one = run(True)
  for a, b in zip(jax.tree.leaves(aux_step), jax.tree.leaves(aux_one)):
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-5 * (1.0 + float(jnp.max(jnp.abs(a)))))
  np.testing.assert_allclose(v_one, v_step, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_step), jax.tree.leaves(g_one)):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * (1e-3 + float(jnp.max(jnp.abs(a)))))
  assert not _model("lact").multi_token_decode    # LaCT decodes token by token
