"""The ReFINE step: loss = lambda_rl * GRPO(next-sequence reward) + lambda_ntp * NTP.

`make_loss_fn(rcfg)` returns the `loss_fn(model, batch, rng) -> (loss, metrics)` the training
loop jits and differentiates. One full forward pass (capture=True) gives the NTP loss, the
entropies for selection and the per-layer captured states; rollouts start from
`model.cache_at` caches (no prefix re-run). The GRPO gradient reaches the whole prefix through
those differentiable caches: that is what teaches the fast-weight update.

For ppo_epochs / minibatches > 1 the same pieces run in two halves: `collect` (no gradient:
positions, rollout tokens, old log-probs, advantages) and `policy_loss` (recomputes the
policy log-probs of the stored rollouts differentiably, teacher-forced from the caches).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from refine_jax.refine import grpo, reward, rollout, selection


def default_refine_config() -> ml_collections.ConfigDict:
  """Every refine.* field with the paper's mid-training default."""
  c = ml_collections.ConfigDict()
  c.num_chunks = 8             # c: selected positions (= rollout groups members) per sequence
  c.rollout_len = 5            # k: tokens per rollout
  c.rollouts_per_position = 1  # n: samples per selected position
  # GRPO group: "position" = the n samples of one (sequence, position), as the official code
  # does for n > 1; "sequence" = all c * n rollouts of a sequence; "auto" = position if n > 1.
  c.group = "auto"
  c.temperature = 1.0          # sampling temperature (<= 0: greedy)
  c.top_k = 0                  # 0 = off
  c.top_p = 1.0                # 1.0 = off
  c.selection = "entropy"      # entropy | uniform | argmax | argmin
  c.tau = 1.0                  # selection temperature: softmax(H / tau) inside each chunk
  c.smooth_kernel = 0          # odd average-pool width over the entropy; 0 = k rounded up to odd
  c.margin = 20                # no rollout starts within `margin` tokens of the sequence start
  c.reward = "cosine"          # cosine | binary | hybrid | any reward.register()ed name
  c.lambda_rl = 0.2
  c.lambda_ntp = 1.0
  c.clip_eps = 0.2
  c.dual_clip = 3.0            # <= 1 disables dual clip
  c.aggregation = "token-mean"  # token-mean | seq-mean
  c.kl_coef = 0.0              # > 0 needs a frozen reference model (k3 estimator)
  c.adv_eps = 1e-6
  c.ppo_epochs = 1             # > 1 or minibatches > 1: collect once, several updates
  c.ppo_minibatches = 1
  c.log_rollouts_every = 50    # steps between rollouts.jsonl / TensorBoard text samples; 0 = off
  c.num_logged_rollouts = 4
  return c


GROUPS = ("auto", "position", "sequence")


def group_of(rcfg) -> str:
  """The GRPO group in effect: "position" (n samples of one position) or "sequence"."""
  group = rcfg.get("group", "auto")
  if group == "auto":
    return "position" if rcfg.rollouts_per_position > 1 else "sequence"
  return group


def advantages(rewards_BG, valid_BG, rcfg):
  """Group-standardised advantages [B, G]; G = c * n with the n samples of a position
  adjacent, so a per-position group is a reshape to [B * c, n]."""
  if group_of(rcfg) == "sequence":
    return grpo.group_advantages(rewards_BG, valid_BG, rcfg.adv_eps)
  B, G = rewards_BG.shape
  n = rcfg.rollouts_per_position
  adv = grpo.group_advantages(rewards_BG.reshape(B * G // n, n),
                              valid_BG.reshape(B * G // n, n), rcfg.adv_eps)
  return adv.reshape(B, G)


def validate(rcfg, seq_len):
  """One clear error per bad refine.* field."""
  if rcfg.rollout_len < 1:
    raise ValueError(f"refine.rollout_len={rcfg.rollout_len} must be >= 1.")
  if rcfg.rollouts_per_position < 1:
    raise ValueError(f"refine.rollouts_per_position={rcfg.rollouts_per_position} must be >= 1.")
  if rcfg.get("group", "auto") not in GROUPS:
    raise ValueError(f"refine.group={rcfg.group!r}; choose one of {GROUPS}.")
  if group_of(rcfg) == "position" and rcfg.rollouts_per_position < 2:
    raise ValueError("refine.group='position' needs refine.rollouts_per_position >= 2 (a group "
                     "of one rollout has no baseline); use group='sequence' or raise n.")
  if group_of(rcfg) == "position" and rcfg.temperature <= 0:
    raise ValueError("refine.temperature<=0 (greedy) with refine.group='position': the n "
                     "samples of a position are identical, so their advantages are rounding "
                     "noise; sample (temperature > 0) or use refine.group='sequence'.")
  if not 1 <= rcfg.num_chunks <= seq_len:
    raise ValueError(f"refine.num_chunks={rcfg.num_chunks} must be in [1, data.seq_len={seq_len}].")
  if rcfg.margin + rcfg.rollout_len > seq_len:
    raise ValueError(f"refine.margin ({rcfg.margin}) + refine.rollout_len ({rcfg.rollout_len}) "
                     f"exceeds data.seq_len={seq_len}: no position can be selected; lower them.")
  if rcfg.selection not in selection.MODES:
    raise ValueError(f"refine.selection={rcfg.selection!r}; choose one of {selection.MODES}.")
  if rcfg.aggregation not in grpo.AGGREGATIONS:
    raise ValueError(f"refine.aggregation={rcfg.aggregation!r}; choose one of {grpo.AGGREGATIONS}.")
  if rcfg.tau <= 0:
    raise ValueError(f"refine.tau={rcfg.tau} must be > 0.")
  if rcfg.smooth_kernel and rcfg.smooth_kernel % 2 == 0:
    raise ValueError(f"refine.smooth_kernel={rcfg.smooth_kernel} must be odd (or 0 = auto).")
  if rcfg.ppo_epochs < 1 or rcfg.ppo_minibatches < 1:
    raise ValueError(f"refine.ppo_epochs={rcfg.ppo_epochs} and refine.ppo_minibatches="
                     f"{rcfg.ppo_minibatches} must be >= 1.")
  if rcfg.lambda_rl < 0 or rcfg.lambda_ntp < 0:
    raise ValueError(f"refine.lambda_rl={rcfg.lambda_rl} and refine.lambda_ntp="
                     f"{rcfg.lambda_ntp} must be >= 0 (a negative weight would ascend the loss).")
  if rcfg.lambda_rl == 0 and rcfg.lambda_ntp == 0:
    raise ValueError("refine.lambda_rl and refine.lambda_ntp are both 0: the step would train "
                     "nothing; the paper uses 0.2 and 1.0.")
  if not rcfg.clip_eps > 0:
    raise ValueError(f"refine.clip_eps={rcfg.clip_eps} must be > 0 (paper: 0.2).")
  if rcfg.kl_coef < 0:
    raise ValueError(f"refine.kl_coef={rcfg.kl_coef} must be >= 0.")
  reward.get(rcfg.reward)


def token_nll(logits_BTV, targets_BT):
  """-log p(target) per position, float32."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp_BTV, targets_BT[..., None].astype(jnp.int32), axis=-1)[..., 0]


def ntp_loss(logits_BTV, targets_BT, mask_BT):
  """THE next-token cross-entropy: mean over tokens with mask > 0 (train.losses.ntp_loss, the
  NTP stages' loss_fn, is this on the model's logits)."""
  m = mask_BT.astype(jnp.float32)
  return jnp.sum(token_nll(logits_BTV, targets_BT) * m) / jnp.maximum(jnp.sum(m), 1.0)


def _batch_arrays(batch):
  inputs = jnp.asarray(batch["inputs"])
  targets = jnp.asarray(batch["targets"])
  mask = batch.get("loss_mask")
  mask = jnp.ones(inputs.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  return inputs, targets, mask


def _select(rng, logits_BTV, mask_BT, rcfg, lengths_B=None):
  ent_BT = selection.token_entropy(jax.lax.stop_gradient(logits_BTV))
  pos_Bc, valid_Bc, _ = selection.select_positions(
      rng, ent_BT, num_chunks=rcfg.num_chunks, rollout_len=rcfg.rollout_len,
      mode=rcfg.selection, tau=rcfg.tau, smooth_kernel=rcfg.smooth_kernel or None,
      margin=rcfg.margin, loss_mask_BT=mask_BT, lengths_B=lengths_B)
  ent_Bc = jnp.take_along_axis(ent_BT, pos_Bc, axis=1)
  return pos_Bc, valid_Bc, ent_Bc


def _rewards(model, rcfg, cache_Bc, roll, true_Bck):
  """Reward per rollout [G]; the true continuation is fed from the same (stop-grad) cache."""
  n = rcfg.rollouts_per_position
  true_Gk = rollout.repeat_rows(true_Bck, n)
  if reward.needs_hidden(rcfg.reward):
    cache_sg = jax.tree.map(jax.lax.stop_gradient, cache_Bc)
    true_hid = jax.lax.stop_gradient(rollout.feed_tokens(model, cache_sg, true_Bck)[0])
    true_hid = rollout.repeat_rows(true_hid, n)
  else:
    true_hid = jnp.zeros_like(roll.hidden_GkD)
  inp = reward.RewardInputs(roll.tokens_Gk, true_Gk, jax.lax.stop_gradient(roll.hidden_GkD),
                            true_hid)
  return reward.compute(rcfg.reward, inp)


def policy_logprobs(model, out, positions_Bc, tokens_Gk, rcfg, cache_Bc=None):
  """Teacher-forced log pi(tokens) of stored rollouts, differentiable through the caches.

  Token 0 is scored by the full-pass logits at the branch position; tokens 1..k-1 by feeding
  tokens[:, :k-1] from the cache (decode path, as when sampling). Returns [G, k]."""
  n, k, T = rcfg.rollouts_per_position, rcfg.rollout_len, out.logits.shape[1]
  if cache_Bc is None:
    cache_Bc = model.cache_at(out.captured, positions_Bc, T + k)
  first_G = rollout.repeat_rows(rollout.first_logits_at(out.logits, positions_Bc), n)
  lp0_G = rollout.token_logprob(first_G, tokens_Gk[:, 0], rcfg.temperature)
  if k == 1:
    return lp0_G[:, None]
  _, logits_GkV = rollout.feed_tokens(model, rollout.repeat_rows(cache_Bc, n), tokens_Gk[:, :-1])
  G, km1, V = logits_GkV.shape
  rest = rollout.token_logprob(logits_GkV.reshape(G * km1, V), tokens_Gk[:, 1:].reshape(-1),
                               rcfg.temperature).reshape(G, km1)
  return jnp.concatenate([lp0_G[:, None], rest], axis=1)


def _rl_terms(rcfg, B, logp_Gk, old_logp_Gk, adv_BG, valid_BG, ref_logp_Gk=None):
  k = rcfg.rollout_len
  G = adv_BG.shape[1]
  mask_BGk = jnp.broadcast_to(valid_BG[..., None], (B, G, k))
  pg, clip_frac = grpo.ppo_loss(logp_Gk.reshape(B, G, k), old_logp_Gk.reshape(B, G, k), adv_BG,
                                mask_BGk, clip_eps=rcfg.clip_eps, dual_clip=rcfg.dual_clip,
                                aggregation=rcfg.aggregation)
  kl = jnp.zeros(())
  if ref_logp_Gk is not None:
    kl = grpo.kl_penalty(logp_Gk.reshape(B, G, k), ref_logp_Gk.reshape(B, G, k), mask_BGk,
                         rcfg.aggregation)
  return pg + rcfg.kl_coef * kl, {"clip_frac": clip_frac, "kl": kl, "pg_loss": pg}


def _ref_logprobs(ref_model, inputs_BT, positions_Bc, tokens_Gk, rcfg):
  if ref_model is None:
    return None
  out = ref_model(inputs_BT, capture=True)
  return jax.lax.stop_gradient(policy_logprobs(ref_model, out, positions_Bc, tokens_Gk, rcfg))


def _masked_mean(x, w):
  w = w.astype(jnp.float32)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def _reward_metrics(rewards_BG, valid_BG, ent_Bc, valid_Bc):
  mean = _masked_mean(rewards_BG, valid_BG)
  std = jnp.sqrt(_masked_mean((rewards_BG - mean) ** 2, valid_BG))
  return {"reward_mean": mean, "reward_std": std,
          "entropy_selected": _masked_mean(ent_Bc, valid_Bc),
          "valid_frac": jnp.mean(valid_Bc.astype(jnp.float32))}


def _sample_and_score(model, out, targets_BT, mask_BT, rng, rcfg, lengths_B=None):
  """Selection, rollouts from the captured states, rewards and group advantages: the part
  shared by the fused loss and `collect`. Rollout log-probs stay differentiable."""
  B, T = targets_BT.shape
  n, k, c = rcfg.rollouts_per_position, rcfg.rollout_len, rcfg.num_chunks
  r_sel, r_roll = jax.random.split(rng)
  pos_Bc, valid_Bc, ent_Bc = _select(r_sel, out.logits, mask_BT, rcfg, lengths_B)
  roll, cache_Bc = rollout.rollouts_from_capture(
      model, out, pos_Bc, r_roll, n=n, length=k, max_len=T + k, temperature=rcfg.temperature,
      top_k=rcfg.top_k, top_p=rcfg.top_p)
  true_Bck = rollout.continuation_at(targets_BT, pos_Bc, k)
  rewards_BG = _rewards(model, rcfg, cache_Bc, roll, true_Bck).reshape(B, c * n)
  valid_BG = jnp.repeat(valid_Bc, n, axis=1)
  adv_BG = advantages(rewards_BG, valid_BG, rcfg)
  return pos_Bc, valid_Bc, ent_Bc, roll, true_Bck, rewards_BG, valid_BG, adv_BG


def refine_loss(model, batch, rng, rcfg, ref_model=None):
  """The fused one-epoch step (ppo_epochs = 1): returns (loss, metrics).

  The sampling scan's log-probs are differentiable, so they are both the behaviour log-probs
  (stop-gradient copy) and the policy log-probs: the first PPO epoch's ratio is exactly 1 with
  the right gradient, and no second rollout-length pass is needed.
  """
  inputs, targets, mask = _batch_arrays(batch)
  B = inputs.shape[0]
  out = model(inputs, capture=True)
  ntp = ntp_loss(out.logits, targets, mask)
  pos_Bc, valid_Bc, ent_Bc, roll, _, rewards_BG, valid_BG, adv_BG = _sample_and_score(
      model, out, targets, mask, rng, rcfg, batch.get("lengths"))
  ref_lp = (_ref_logprobs(ref_model, inputs, pos_Bc, roll.tokens_Gk, rcfg)
            if rcfg.kl_coef > 0 else None)
  rl, rl_metrics = _rl_terms(rcfg, B, roll.logp_Gk, jax.lax.stop_gradient(roll.logp_Gk),
                             adv_BG, valid_BG, ref_lp)
  loss = rcfg.lambda_rl * rl + rcfg.lambda_ntp * ntp
  metrics = {"ntp_loss": ntp, "rl_loss": rl, **rl_metrics,
             **_reward_metrics(rewards_BG, valid_BG, ent_Bc, valid_Bc)}
  return loss, metrics


def make_loss_fn(rcfg, ref_model=None):
  """loss_fn(model, batch, rng) -> (loss, metrics) for the training loop (jit it there).
  ref_model: the frozen reference policy for refine.kl_coef > 0 (its weights are closed over,
  i.e. constants of the jitted step)."""
  if rcfg.kl_coef > 0 and ref_model is None:
    raise ValueError(f"refine.kl_coef={rcfg.kl_coef} needs a frozen reference model: pass "
                     "make_loss_fn(rcfg, ref_model=...) or set refine.kl_coef=0.")

  def loss_fn(model, batch, rng):
    return refine_loss(model, batch, rng, rcfg, ref_model)
  return loss_fn


class Collected(NamedTuple):
  """Everything a PPO update needs besides the batch; all constants (no gradient)."""
  positions_Bc: jax.Array
  valid_Bc: jax.Array
  tokens_Gk: jax.Array
  true_Gk: jax.Array
  old_logp_Gk: jax.Array
  rewards_BG: jax.Array
  advantages_BG: jax.Array
  entropy_Bc: jax.Array


def collect(model, batch, rng, rcfg) -> Collected:
  """Selection + rollouts + rewards + advantages with the current weights (no gradient)."""
  inputs, targets, mask = _batch_arrays(batch)
  out = model(inputs, capture=True)
  pos_Bc, valid_Bc, ent_Bc, roll, true_Bck, rewards_BG, _, adv_BG = _sample_and_score(
      model, out, targets, mask, rng, rcfg, batch.get("lengths"))
  col = Collected(pos_Bc, valid_Bc, roll.tokens_Gk,
                  rollout.repeat_rows(true_Bck, rcfg.rollouts_per_position),
                  roll.logp_Gk, rewards_BG, adv_BG, ent_Bc)
  return jax.tree.map(jax.lax.stop_gradient, col)


def policy_loss(model, batch, col: Collected, rcfg, ref_model=None):
  """Differentiable loss of stored rollouts under the current weights: (loss, metrics).
  `batch` and `col` must hold the same sequences (slice both by sequence for minibatches)."""
  inputs, targets, mask = _batch_arrays(batch)
  B = inputs.shape[0]
  n = rcfg.rollouts_per_position
  out = model(inputs, capture=True)
  ntp = ntp_loss(out.logits, targets, mask)
  logp_Gk = policy_logprobs(model, out, col.positions_Bc, col.tokens_Gk, rcfg)
  valid_BG = jnp.repeat(col.valid_Bc, n, axis=1)
  ref_lp = (_ref_logprobs(ref_model, inputs, col.positions_Bc, col.tokens_Gk, rcfg)
            if rcfg.kl_coef > 0 else None)
  rl, rl_metrics = _rl_terms(rcfg, B, logp_Gk, col.old_logp_Gk, col.advantages_BG, valid_BG,
                             ref_lp)
  loss = rcfg.lambda_rl * rl + rcfg.lambda_ntp * ntp
  metrics = {"ntp_loss": ntp, "rl_loss": rl, **rl_metrics,
             **_reward_metrics(col.rewards_BG, valid_BG, col.entropy_Bc, col.valid_Bc)}
  return loss, metrics
