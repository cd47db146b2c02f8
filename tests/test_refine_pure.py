"""ReFINE pieces that need no model: selection, rewards, GRPO, sampling filters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refine_jax import losses
from refine_jax.refine import grpo, reward, rollout, selection


def test_entropy_matches_hand_computation():
  logits = jnp.array([[[0.0, 0.0], [np.log(3.0), 0.0]]])
  want = [np.log(2.0), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))]
  np.testing.assert_allclose(selection.token_entropy(logits)[0], want, rtol=1e-6)


def test_smooth_is_centred_average_with_edge_counts():
  x = jnp.array([[1.0, 2.0, 3.0, 4.0, 10.0]])
  got = selection.smooth(x, 3)[0]
  want = [1.5, 2.0, 3.0, 17 / 3, 7.0]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match="smooth_kernel"):
    selection.smooth(x, 4)


@pytest.mark.parametrize("kernel", [5, 7, 9, 11, 31])
def test_smooth_kernel_longer_than_the_sequence(kernel):
  """A window wider than T averages the in-range values (it used to return `kernel` values)."""
  x = np.random.default_rng(kernel).normal(size=(2, 5)).astype(np.float32)
  got = np.asarray(selection.smooth(jnp.asarray(x), kernel))
  h = kernel // 2
  want = np.stack([[x[b, max(0, t - h):t + h + 1].mean() for t in range(5)] for b in range(2)])
  assert got.shape == x.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(x).max())


def test_valid_positions_respect_ends_margin_and_mask():
  T, k = 12, 3
  ok = np.asarray(selection.valid_positions(T, k, margin=2))[0]
  assert ok.tolist() == [False, False] + [True] * 8 + [False, False]
  mask = np.ones((1, T), np.float32)
  mask[0, 6] = 0  # a document boundary: continuations covering target 6 are excluded
  ok = np.asarray(selection.valid_positions(T, k, 2, jnp.asarray(mask)))[0]
  assert [p for p in range(T) if ok[p]] == [2, 3, 7, 8, 9]


def test_selection_distribution_matches_softmax_per_chunk():
  """Chi-square test: each chunk's empirical choice frequencies follow softmax(H/tau)."""
  T, c, k, tau, N = 24, 3, 2, 0.5, 20000
  rng = np.random.default_rng(0)
  H = jnp.asarray(rng.uniform(0, 2, (1, T)), jnp.float32)
  sample = jax.jit(jax.vmap(lambda key: selection.select_positions(
      key, H, num_chunks=c, rollout_len=k, tau=tau, smooth_kernel=1, margin=1)[0][0]))
  pos = np.asarray(sample(jax.random.split(jax.random.key(1), N)))  # [N, c]
  ok = np.asarray(selection.valid_positions(T, k, 1))[0]
  ids = np.asarray(selection.chunk_ids(T, c))
  for i in range(c):
    cand = np.where((ids == i) & ok)[0]
    p = np.exp(np.asarray(H[0, cand]) / tau)
    p /= p.sum()
    counts = np.array([(pos[:, i] == t).sum() for t in cand])
    assert counts.sum() == N, "a position outside its chunk / the valid range was chosen"
    chi2 = np.sum((counts - N * p) ** 2 / (N * p))
    # dof = len(cand) - 1 <= 7: the 0.999 quantile of chi2(7) is 24.3.
    assert chi2 < 24.3, (i, chi2)


def test_selection_modes_argmax_argmin_and_invalid_chunk():
  H = jnp.array([[0.1, 0.9, 0.2, 0.3, 0.8, 0.05, 0.4, 0.7]])
  kw = dict(num_chunks=2, rollout_len=2, smooth_kernel=1, margin=0)
  amax = selection.select_positions(jax.random.key(0), H, mode="argmax", **kw)[0]
  amin = selection.select_positions(jax.random.key(0), H, mode="argmin", **kw)[0]
  assert amax.tolist() == [[1, 4]]
  assert amin.tolist() == [[0, 5]]  # position 7 is excluded (no 2-token continuation)
  # margin 5 leaves chunk 0 (positions 0..3) with nothing valid.
  pos, valid, _ = selection.select_positions(jax.random.key(0), H, num_chunks=2,
                                             rollout_len=2, margin=5, smooth_kernel=1)
  assert valid.tolist() == [[False, True]] and 5 <= int(pos[0, 1]) <= 6
  with pytest.raises(ValueError, match="refine.selection"):
    selection.select_positions(jax.random.key(0), H, mode="bogus", **kw)


def test_rewards_equal_hand_computation():
  tok = jnp.array([[1, 2, 3], [4, 5, 6]])
  true = jnp.array([[1, 0, 3], [0, 0, 0]])
  h_r = jnp.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]],
                   [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
  h_t = jnp.array([[[2.0, 0.0], [1.0, 0.0], [4.0, 3.0]],
                   [[-1.0, -1.0], [1.0, 1.0], [0.0, 5.0]]])
  inp = reward.RewardInputs(tok, true, h_r, h_t)
  cos = np.array([[1.0, 0.0, 24 / 25], [-1.0, 1 / np.sqrt(2), 1.0]]).mean(-1)
  bin_ = np.array([2 / 3, 0.0])
  np.testing.assert_allclose(reward.compute("cosine", inp), cos, rtol=1e-6)
  np.testing.assert_allclose(reward.compute("binary", inp), bin_, rtol=1e-6)
  np.testing.assert_allclose(reward.compute("hybrid", inp), cos + bin_, rtol=1e-6)


def test_reward_registry_hook():
  @reward.register("test_first_token")
  def first(inp):
    return (inp.rollout_tokens_Gk[:, 0] == inp.true_tokens_Gk[:, 0]).astype(jnp.float32)
  tok = jnp.array([[1, 2], [3, 4]])
  inp = reward.RewardInputs(tok, jnp.array([[1, 0], [0, 4]]), None, None)
  assert reward.compute("test_first_token", inp).tolist() == [1.0, 0.0]
  with pytest.raises(ValueError, match="not registered"):
    reward.get("nope")


def test_group_advantages_hand_computation():
  r = jnp.array([[1.0, 2.0, 3.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
  valid = jnp.array([[True, True, True, False], [True, True, True, True]])
  adv = np.asarray(grpo.group_advantages(r, valid))
  # row 0: mean 2, unbiased std 1 over the valid three; the invalid entry gets 0.
  np.testing.assert_allclose(adv[0], [-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6), 0.0], rtol=1e-6)
  np.testing.assert_allclose(adv[1], 0.0, atol=1e-6)
  single = grpo.group_advantages(jnp.array([[3.0, 9.0]]), jnp.array([[True, False]]))
  assert single.tolist() == [[0.0, 0.0]]


def test_ppo_loss_hand_computation():
  """Two rollouts x 2 tokens, covering unclipped, clipped and dual-clipped tokens."""
  old = jnp.zeros((1, 2, 2))
  ratio = np.array([[[1.1, 1.5], [0.5, 5.0]]])
  logp = jnp.log(jnp.asarray(ratio))
  adv = jnp.array([[1.0, -2.0]])
  mask = jnp.ones((1, 2, 2))
  loss, clip = map(losses.mean, grpo.ppo_loss(logp, old, adv, mask, clip_eps=0.2,
                                              dual_clip=3.0))
  # A=+1: max(-1.1, -1.1) = -1.1 ; max(-1.5, -1.2) = -1.2 (clipped)
  # A=-2: max(1.0, 1.6) = 1.6 (clipped) ; max(10, 2.4) = 10 -> dual clip min(6, 10) = 6
  per_tok = np.array([-1.1, -1.2, 1.6, 6.0])
  np.testing.assert_allclose(loss, per_tok.mean(), rtol=1e-5)
  np.testing.assert_allclose(clip, 0.5, rtol=1e-6)  # tokens 2 and 3 have l2 > l1
  # seq-mean with a mask dropping one token of rollout 0.
  mask2 = jnp.array([[[1.0, 0.0], [1.0, 1.0]]])
  loss2, _ = grpo.ppo_loss(logp, old, adv, mask2, aggregation="seq-mean")
  # (sum over rollouts of each one's token mean, rollouts with a valid token)
  np.testing.assert_allclose(loss2.sum, -1.1 + (1.6 + 6.0) / 2, rtol=1e-5)
  assert float(loss2.weight) == 2.0
  np.testing.assert_allclose(losses.mean(loss2), (-1.1 + (1.6 + 6.0) / 2) / 2, rtol=1e-5)
  assert float(grpo.weight(mask2, "seq-mean")) == 2.0
  assert float(grpo.weight(mask2, "token-mean")) == 3.0
  # The gradient at ratio 1 (first epoch) is -A d logp.
  g = jax.grad(lambda lp: losses.mean(grpo.ppo_loss(lp, old, adv, mask)[0]))(
      jnp.zeros((1, 2, 2)))
  np.testing.assert_allclose(g[0], [[-0.25, -0.25], [0.5, 0.5]], rtol=1e-6)


def test_kl_k3_hand_computation():
  lp = jnp.log(jnp.array([[[0.5, 0.25]]]))
  ref = jnp.log(jnp.array([[[0.25, 0.25]]]))
  want = np.mean([0.5 - np.log(0.5) - 1, 0.0])
  np.testing.assert_allclose(losses.mean(grpo.kl_penalty(lp, ref, jnp.ones((1, 1, 2)))), want,
                             rtol=1e-6)


def test_top_k_top_p_filters_and_sampling_frequencies():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  f = np.asarray(rollout.filter_logits(logits, top_k=2))
  assert np.isfinite(f[0]).tolist() == [True, True, False, False]
  f = np.asarray(rollout.filter_logits(logits, top_p=0.7))  # 0.5 < 0.7 -> keep the 2nd too
  assert np.isfinite(f[0]).tolist() == [True, True, False, False]
  f = np.asarray(rollout.filter_logits(logits, top_p=0.85))
  assert np.isfinite(f[0]).tolist() == [True, True, True, False]
  keys = jax.random.split(jax.random.key(0), 20000)
  toks = jax.vmap(lambda kk: rollout.sample_tokens(kk, logits, temperature=1.0, top_k=3))(keys)
  freq = np.bincount(np.asarray(toks).ravel(), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], atol=0.015)
  assert rollout.sample_tokens(None, logits, temperature=0.0).tolist() == [0]
  lp = rollout.token_logprob(logits, jnp.array([1]), temperature=2.0)
  p = np.array([0.5, 0.3, 0.15, 0.05]) ** 0.5
  np.testing.assert_allclose(lp, np.log(p[1] / p.sum()), rtol=1e-5)


def test_continuation_and_first_logits_gather():
  toks = jnp.arange(20).reshape(2, 10)
  pos = jnp.array([[1, 6], [0, 7]])
  assert rollout.continuation_at(toks, pos, 3).tolist() == [
      [1, 2, 3], [6, 7, 8], [10, 11, 12], [17, 18, 19]]
  logits = jnp.arange(2 * 10 * 3, dtype=jnp.float32).reshape(2, 10, 3)
  f = rollout.first_logits_at(logits, pos)
  np.testing.assert_array_equal(f[3], logits[1, 7])


def test_padded_rows_are_chunked_over_their_own_length():
  """A 24-token prompt right-padded to 64: with lengths, its 4 chunks split [0, 24) (one
  position in each sixth); chunking the padded row would leave it 2 valid chunks of 4."""
  T, c, L = 64, 4, 24
  mask = np.ones((2, T), np.float32)
  mask[1, L:] = 0
  ent = jnp.asarray(np.random.default_rng(0).random((2, T)), jnp.float32)
  kw = dict(num_chunks=c, rollout_len=1, smooth_kernel=1, margin=0, mode="uniform",
            loss_mask_BT=jnp.asarray(mask))
  seen = set()
  for i in range(40):
    pos, valid, _ = selection.select_positions(jax.random.key(i), ent,
                                               lengths_B=jnp.array([T, L]), **kw)
    pos, valid = np.asarray(pos), np.asarray(valid)
    assert valid.all()
    for j in range(c):
      assert j * T // c <= pos[0, j] < (j + 1) * T // c  # full row: as without lengths
      assert j * L // c <= pos[1, j] < (j + 1) * L // c
      seen.add((j, int(pos[1, j])))
  assert len(seen) > 2 * c  # sampled, not pinned to one position per chunk
  _, valid, _ = selection.select_positions(jax.random.key(0), ent, **kw)
  assert np.asarray(valid)[1].tolist() == [True, True, False, False]
  pos_a, _, _ = selection.select_positions(jax.random.key(3), ent, **kw)
  pos_b, _, _ = selection.select_positions(jax.random.key(3), ent,
                                           lengths_B=jnp.array([T, T]), **kw)
  np.testing.assert_array_equal(pos_a, pos_b)  # lengths = T changes nothing
