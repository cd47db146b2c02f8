"""ReFINE with real models: cached rollouts == re-prefill, gradients through the prefix,
log-prob consistency, and the fused loss against its two-phase (collect + policy_loss) form."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from refine_jax.models import build_model
from refine_jax.refine import policy, rollout, step
from refine_jax.config import default_model_config, default_refine_config

V, T = 32, 24
ARCHS = ["deltanet", "gated_deltanet", "transformer", "lact"]


def tiny_model(arch="deltanet", seed=0, layers=2):
  cfg = default_model_config()
  cfg.arch, cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads = arch, V, 32, layers, 2
  cfg.chunk_size = 8
  if arch == "lact" and "chunk" in cfg.lact:
    cfg.lact.chunk = 8
    if "window" in cfg.lact:
      cfg.lact.window = 8
  return build_model(cfg, rngs=nnx.Rngs(seed))


def tiny_rcfg(**kw):
  rc = default_refine_config()
  rc.num_chunks, rc.rollout_len, rc.rollouts_per_position, rc.margin = 3, 3, 2, 2
  rc.update(kw)
  return rc


def batch_of(seed=0, B=2):
  x = np.random.default_rng(seed).integers(0, V, (B, T + 1)).astype(np.int32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((B, T), np.float32)}


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_rollout_equals_reprefill(arch):
  """Same key -> same tokens, log-probs and hidden states, from caches cut out of one forward
  pass vs re-running every prefix from token 0. Positions cover a chunk boundary (7: prefix
  of exactly one chunk) and mid-chunk positions."""
  model = tiny_model(arch)
  inputs = jnp.asarray(batch_of()["inputs"])
  pos = jnp.array([[7, 12, 20], [20, 7, 12]], jnp.int32)
  kw = dict(n=2, length=3, max_len=T + 3, temperature=1.0)
  rng = jax.random.key(3)

  @nnx.jit
  def fast(model, inputs, pos, rng):
    return rollout.rollouts_from_capture(model, model(inputs, capture=True), pos, rng, **kw)[0]

  got = fast(model, inputs, pos, rng)
  want = rollout.rollout_reprefill(model, inputs, pos, rng, **kw)
  np.testing.assert_array_equal(got.tokens_Gk, want.tokens_Gk)
  np.testing.assert_allclose(got.logp_Gk, want.logp_Gk, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got.hidden_GkD, want.hidden_GkD, rtol=1e-4, atol=1e-4)
  # The 2 samples per position really are different draws (not one copied).
  assert not np.array_equal(got.tokens_Gk[0::2], got.tokens_Gk[1::2])


def test_teacher_forced_logprobs_equal_sampling_logprobs():
  """policy_logprobs (used for ppo_epochs > 1) recomputes exactly what the sampler saw."""
  model = tiny_model()
  rc = tiny_rcfg(temperature=0.7)
  batch = batch_of(1)

  @nnx.jit
  def both(model, batch, rng):
    col = step.collect(model, batch, rng, rc)
    out = model(jnp.asarray(batch["inputs"]), capture=True)
    return col, policy.policy_logprobs(model, out, col.positions_Bc, col.tokens_Gk, rc)

  col, lp = both(model, batch, jax.random.key(0))
  np.testing.assert_allclose(lp, col.old_logp_Gk, rtol=1e-4, atol=1e-5)


def test_truth_fed_from_cache_equals_full_pass_hidden_states():
  """The true continuation fed from cache_at(p) reproduces the full pass at p+1..p+k, so the
  cosine reward compares like with like (and a rollout equal to the truth scores 1)."""
  model = tiny_model("gated_deltanet")
  inputs = jnp.asarray(batch_of(4)["inputs"])
  pos = jnp.array([[3, 9, 17], [8, 12, 20]], jnp.int32)
  k = 3

  @nnx.jit
  def go(model, inputs, pos):
    out = model(inputs, capture=True)
    cache = model.cache_at(out.captured, pos, T + k)
    true = rollout.continuation_at(inputs, pos + 1, k)
    hid, _ = rollout.feed_tokens(model, cache, true)
    idx = jnp.clip(pos[:, :, None] + 1 + jnp.arange(k), 0, T - 1)
    ref = jnp.take_along_axis(out.hidden_states[:, None], idx[..., None], axis=2)
    return hid, ref.reshape(hid.shape)

  hid, ref = go(model, inputs, pos)
  np.testing.assert_allclose(hid, ref, rtol=1e-4, atol=1e-4)


def _loss_and_grads(model, batch, rc, rng):
  f = nnx.jit(lambda m, b, r: nnx.value_and_grad(step.make_loss_fn(rc), has_aux=True)(m, b, r))
  return f(model, batch, rng)


def test_rl_gradient_reaches_early_prefix_through_the_state():
  """RL term alone (lambda_ntp = 0), rollouts only from late positions (margin 14): the
  embeddings of tokens that occur only in the first 6 positions get gradient. Those tokens are
  far outside the short-conv window of every rollout, so the only path is the fast-weight
  state captured at the branch point -- the cache_at caches must be differentiable."""
  model = tiny_model(layers=1)
  batch = batch_of(2)
  early = np.arange(V - 6, V)
  for key in ("inputs", "targets"):
    batch[key] = np.where(np.isin(batch[key], early), 0, batch[key])
  batch["inputs"][:, :6] = early  # only here
  rc = tiny_rcfg(lambda_ntp=0.0, lambda_rl=1.0, margin=14, num_chunks=2)
  (loss, met), grads = _loss_and_grads(model, batch, rc, jax.random.key(0))
  assert float(met["reward_std"]) > 0  # non-trivial advantages
  g_emb = np.asarray(grads.embeddings.embedding[...])
  g_early = np.abs(g_emb[early]).max()
  g_all = np.abs(g_emb).max()
  assert g_early > 1e-4 * g_all and g_early > 0, (g_early, g_all)
  g_k = np.abs(np.asarray(grads.layers.attn.k_proj.kernel[...])).max()  # scanned: [L, ...]
  assert g_k > 0


def test_fused_loss_equals_two_phase_loss():
  """The one-pass loss_fn and collect + policy_loss give the same loss, metrics and grads."""
  model = tiny_model("gated_deltanet", layers=1)
  rc = tiny_rcfg(reward="hybrid")
  batch = batch_of(3)
  rng = jax.random.key(5)
  (l1, m1), g1 = _loss_and_grads(model, batch, rc, rng)

  @nnx.jit
  def two_phase(model, batch, rng):
    col = step.collect(model, batch, rng, rc)
    return nnx.value_and_grad(lambda m: step.policy_loss(m, batch, col, rc), has_aux=True)(model)

  (l2, m2), g2 = two_phase(model, batch, rng)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for name in ("reward_mean", "reward_std", "ntp_loss", "entropy_selected"):
    np.testing.assert_allclose(m1[name], m2[name], rtol=1e-5, err_msg=name)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)


def test_validate_names_the_field():
  rc = tiny_rcfg(selection="max")
  with pytest.raises(ValueError, match="refine.selection"):
    step.validate(rc, T)
  with pytest.raises(ValueError, match="refine.margin"):
    step.validate(tiny_rcfg(margin=T), T)
  with pytest.raises(ValueError, match="refine.reward"):
    step.validate(tiny_rcfg(reward="nope"), T)


def test_tiny_refine_run_improves_reward():
  """RL alone (lambda_ntp = 0, binary reward) on a periodic token stream: the mean exact-match
  reward of 2-token rollouts climbs from chance (~1/8) in a few dozen steps."""
  cfg = default_model_config()
  cfg.vocab_size, cfg.hidden, cfg.layers, cfg.heads, cfg.chunk_size = 8, 32, 1, 2, 8
  model = build_model(cfg, rngs=nnx.Rngs(0))
  rc = tiny_rcfg(rollouts_per_position=4, rollout_len=2, margin=4, reward="binary",
                 lambda_ntp=0.0, lambda_rl=1.0)
  pattern, B = np.array([3, 1, 4, 1, 5, 6, 2]), 4

  def batch(i):
    phase = np.random.default_rng(i).integers(0, len(pattern), B)
    x = np.stack([np.resize(np.roll(pattern, -p), T + 1) for p in phase]).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((B, T), np.float32)}

  opt = nnx.Optimizer(model, optax.adam(5e-3), wrt=nnx.Param)

  @nnx.jit
  def train(model, opt, b, r):
    (_, m), g = nnx.value_and_grad(step.make_loss_fn(rc), has_aux=True)(model, b, r)
    opt.update(model, g)
    return m

  rewards = [float(train(model, opt, batch(i), jax.random.key(i))["reward_mean"])
             for i in range(30)]
  first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
  assert last > first + 0.3, np.round(rewards, 2)


def test_advantages_group_by_position_or_sequence():
  """n > 1: the default group is the n samples of one (sequence, position), standardised by
  hand here; group="sequence" standardises all c * n rollouts of a row."""
  B, c, n = 2, 3, 4
  r = np.random.default_rng(0).normal(size=(B, c * n)).astype(np.float32)
  valid = np.ones((B, c * n), bool)
  valid[1, 4:8] = False  # a chunk with no valid position: its group gets advantage 0
  rc = tiny_rcfg(rollouts_per_position=n, num_chunks=c)
  assert step.group_of(rc) == "position"
  got = np.asarray(step.advantages(jnp.asarray(r), jnp.asarray(valid), rc))
  want = np.zeros_like(r)
  for b in range(B):
    for j in range(c):
      g = slice(j * n, (j + 1) * n)
      if valid[b, g].all():
        want[b, g] = (r[b, g] - r[b, g].mean()) / (r[b, g].std(ddof=1) + rc.adv_eps)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  rc.group = "sequence"
  got = np.asarray(step.advantages(jnp.asarray(r), jnp.asarray(valid), rc))
  v = valid[0]
  np.testing.assert_allclose(got[0], (r[0] - r[0].mean()) / (r[0].std(ddof=1) + rc.adv_eps),
                             rtol=1e-5, atol=1e-6)
  assert np.abs(got[1][~valid[1]]).max() == 0 and v.all()
  assert step.group_of(tiny_rcfg(rollouts_per_position=1)) == "sequence"
  with pytest.raises(ValueError, match="refine.group='position' needs"):
    step.validate(tiny_rcfg(rollouts_per_position=1, group="position"), T)
  with pytest.raises(ValueError, match="refine.group="):
    step.validate(tiny_rcfg(group="chunk"), T)
  with pytest.raises(ValueError, match="greedy"):
    step.validate(tiny_rcfg(temperature=0.0), T)
  step.validate(tiny_rcfg(temperature=0.0, group="sequence"), T)
