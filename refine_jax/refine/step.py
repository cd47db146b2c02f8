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

from refine_jax import losses
from refine_jax.refine import grpo, reward, rollout, selection
from refine_jax.refine.policy import policy_forward


GROUPS = ("auto", "position", "sequence")
CAPTURES = ("all", "strided", "selected")


def _share_of(rcfg) -> tuple:
  return ("pg_loss", "kl") if rcfg.log_grad_share else ()


def group_of(rcfg) -> str:
  """The GRPO group in effect: "position" (n samples of one position) or "sequence"."""
  group = rcfg.group
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
  if rcfg.group not in GROUPS:
    raise ValueError(f"refine.group={rcfg.group!r}; choose one of {GROUPS}.")
  if rcfg.capture not in CAPTURES:
    raise ValueError(f"refine.capture={rcfg.capture!r}; choose one of {CAPTURES}.")
  if rcfg.capture_stride < 1:
    raise ValueError(f"refine.capture_stride={rcfg.capture_stride} must be >= 1 (chunks per "
                     "kept state with refine.capture='strided').")
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


# The one token NLL and NTP loss live in refine_jax.losses (below refine/ and eval/).
token_nll = losses.token_nll
ntp_loss = losses.ntp_loss


def _batch_arrays(batch):
  inputs = jnp.asarray(batch["inputs"])
  targets = jnp.asarray(batch["targets"])
  return inputs, targets, losses.loss_mask(batch)


segments = losses.segments
forward = losses.forward


def row_ids(batch):
  """Each row's index in the update's whole batch (loop adds "row_ids" before cutting it into
  microbatches / minibatches; a whole batch without them counts from 0)."""
  if batch.get("row_ids") is not None:
    return jnp.asarray(batch["row_ids"], jnp.int32)
  return jnp.arange(jnp.shape(batch["inputs"])[0], dtype=jnp.int32)


def _select(rng, logits_BTV, mask_BT, rcfg, lengths_B=None, segment_ids_BT=None):
  ent_BT = selection.token_entropy(jax.lax.stop_gradient(logits_BTV))
  pos_Bc, valid_Bc, _ = selection.select_positions(
      rng, ent_BT, num_chunks=rcfg.num_chunks, rollout_len=rcfg.rollout_len,
      mode=rcfg.selection, tau=rcfg.tau, smooth_kernel=rcfg.smooth_kernel or None,
      margin=rcfg.margin, loss_mask_BT=mask_BT, lengths_B=lengths_B,
      segment_ids_BT=segment_ids_BT)
  ent_Bc = jnp.take_along_axis(ent_BT, pos_Bc, axis=1)
  return pos_Bc, valid_Bc, ent_Bc


def valid_chunks(batch, rcfg):
  """[B, c] bool: which selected positions will be valid, from the batch's masks alone (the
  same test `_select` applies), so the GRPO term's weight is known before the forward pass."""
  B, T = jnp.shape(batch["inputs"])
  return selection.allowed(B, T, num_chunks=rcfg.num_chunks, rollout_len=rcfg.rollout_len,
                           margin=rcfg.margin, loss_mask_BT=losses.loss_mask(batch),
                           lengths_B=batch.get("lengths"),
                           segment_ids_BT=segments(batch)).any(-1)


def rl_weight(valid_Bc, rcfg):
  """The GRPO term's weight for these valid positions (refine.aggregation's denominator)."""
  B, c = valid_Bc.shape
  valid_BG = jnp.repeat(valid_Bc, rcfg.rollouts_per_position, axis=1)
  return grpo.weight(jnp.broadcast_to(valid_BG[..., None], (B, valid_BG.shape[1],
                                                              rcfg.rollout_len)),
                     rcfg.aggregation)


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


def _rl_terms(rcfg, B, logp_Gk, old_logp_Gk, adv_BG, valid_BG, ref_logp_Gk=None):
  """(pg Term, kl Term, (clip-fraction Term, |ratio - 1| Term)) of the clipped GRPO surrogate."""
  k = rcfg.rollout_len
  G = adv_BG.shape[1]
  mask_BGk = jnp.broadcast_to(valid_BG[..., None], (B, G, k))
  pg, clip_frac = grpo.ppo_loss(logp_Gk.reshape(B, G, k), old_logp_Gk.reshape(B, G, k), adv_BG,
                                mask_BGk, clip_eps=rcfg.clip_eps, dual_clip=rcfg.dual_clip,
                                aggregation=rcfg.aggregation)
  # |ratio - 1| per valid token: exactly 0 in a first PPO epoch (old = current weights), in
  # any precision, when the policy recomputation repeats the sampling pass's arithmetic.
  dev = jnp.abs(jnp.exp(jax.lax.stop_gradient(logp_Gk - old_logp_Gk)) - 1.0)
  clip = (clip_frac, losses.masked(dev.reshape(B, G, k), mask_BGk))
  kl = losses.Term(jnp.zeros(()), pg.weight)
  if ref_logp_Gk is not None:
    kl = grpo.kl_penalty(logp_Gk.reshape(B, G, k), ref_logp_Gk.reshape(B, G, k), mask_BGk,
                         rcfg.aggregation)
  return pg, kl, clip


def _ref_logprobs(ref_model, inputs_BT, seg_BT, positions_Bc, tokens_Gk, rcfg):
  if ref_model is None:
    return None
  _, lp = policy_forward(ref_model, inputs_BT, seg_BT, positions_Bc, tokens_Gk, rcfg)
  return jax.lax.stop_gradient(lp)


def _terms(rcfg, ntp, pg, kl, clip, rewards_BG, valid_BG, ent_Bc, valid_Bc):
  """The ReFINE objective's Terms and metric Terms (all sums over this (micro)batch)."""
  terms = {"ntp_loss": ntp, "pg_loss": pg, "kl": kl}
  r = rewards_BG.astype(jnp.float32)
  metrics = {"rl_loss": losses.Term(pg.sum + rcfg.kl_coef * kl.sum, pg.weight),
             "clip_frac": clip[0], "ratio_dev": clip[1],
             "reward_mean": losses.masked(r, valid_BG), "reward_sq": losses.masked(r * r, valid_BG),
             "entropy_selected": losses.masked(ent_Bc, valid_Bc),
             "valid_frac": losses.masked(valid_Bc.astype(jnp.float32), 1.0)}
  return terms, metrics


def _coefs(rcfg):
  """loss = lambda_ntp * NTP + lambda_rl * (GRPO + kl_coef * KL)."""
  return {"ntp_loss": float(rcfg.lambda_ntp), "pg_loss": float(rcfg.lambda_rl),
          "kl": float(rcfg.lambda_rl) * float(rcfg.kl_coef)}


def _forward_and_select(model, batch, r_sel, rcfg):
  """(out, positions, valid, entropies) of the pass that feeds the loss: with refine.capture
  "all" / "strided" one capture pass, positions picked from its logits; "selected" a first
  pass without capture picks them, then a pass capturing only those positions' pieces (less
  memory, one more forward; the same positions and values up to the rounding of two compiled
  passes)."""
  inputs, _, mask = _batch_arrays(batch)
  seg = segments(batch)
  keys_B = rollout.row_keys(r_sel, row_ids(batch))

  def select(logits):
    return _select(keys_B, logits, mask, rcfg, batch.get("lengths"), seg)

  if rcfg.capture == "selected":
    pos_Bc, valid_Bc, ent_Bc = select(jax.lax.stop_gradient(forward(model, inputs, seg).logits))
    return forward(model, inputs, seg, capture_at=pos_Bc), pos_Bc, valid_Bc, ent_Bc
  stride = rcfg.capture_stride if rcfg.capture == "strided" else None
  out = forward(model, inputs, seg, capture=True, capture_stride=stride)
  return (out,) + select(out.logits)


def _sample_and_score(model, out, batch, r_roll, rcfg, selected):
  """Rollouts from the captured states at the selected positions, rewards and group
  advantages: the part shared by the fused loss and `collect`. Rollout log-probs stay
  differentiable.

  Every random draw of row b uses keys derived from (rng, its row id) only, so a row's
  positions and rollouts do not depend on the microbatch or minibatch it is computed in."""
  _, targets, _ = _batch_arrays(batch)
  B, T = targets.shape
  n, k, c = rcfg.rollouts_per_position, rcfg.rollout_len, rcfg.num_chunks
  rows_B = row_ids(batch)
  pos_Bc, valid_Bc, ent_Bc = selected
  keys_BG = jax.vmap(lambda key: rollout.row_keys(key, jnp.arange(c * n)))(
      rollout.row_keys(r_roll, rows_B))
  roll, cache_Bc = rollout.rollouts_from_capture(
      model, out, pos_Bc, keys_BG.reshape(B * c * n), n=n, length=k, max_len=T + k,
      temperature=rcfg.temperature, top_k=rcfg.top_k, top_p=rcfg.top_p)
  true_Bck = rollout.continuation_at(targets, pos_Bc, k)
  rewards_BG = _rewards(model, rcfg, cache_Bc, roll, true_Bck).reshape(B, c * n)
  valid_BG = jnp.repeat(valid_Bc, n, axis=1)
  adv_BG = advantages(rewards_BG, valid_BG, rcfg)
  return pos_Bc, valid_Bc, ent_Bc, roll, true_Bck, rewards_BG, valid_BG, adv_BG


def objective(rcfg, ref_model=None) -> losses.Objective:
  """The fused one-epoch ReFINE objective (ppo_epochs = ppo_minibatches = 1).

  The sampling scan's log-probs are differentiable, so they are both the behaviour log-probs
  (stop-gradient copy) and the policy log-probs: the first PPO epoch's ratio is exactly 1 with
  the right gradient, and no second rollout-length pass is needed. ref_model: the frozen
  reference policy for refine.kl_coef > 0 (its weights are constants of the jitted step).
  """
  if rcfg.kl_coef > 0 and ref_model is None:
    raise ValueError(f"refine.kl_coef={rcfg.kl_coef} needs a frozen reference model: pass "
                     "make_loss_fn(rcfg, ref_model=...) or set refine.kl_coef=0.")

  def terms(model, batch, rng):
    inputs, targets, mask = _batch_arrays(batch)
    seg = segments(batch)
    r_sel, r_roll = jax.random.split(rng)
    out, *selected = _forward_and_select(model, batch, r_sel, rcfg)
    ntp, _ = losses.ntp_terms(out.logits, targets, mask)
    pos_Bc, valid_Bc, ent_Bc, roll, _, rewards_BG, valid_BG, adv_BG = _sample_and_score(
        model, out, batch, r_roll, rcfg, selected)
    ref_lp = (_ref_logprobs(ref_model, inputs, seg, pos_Bc, roll.tokens_Gk, rcfg)
              if rcfg.kl_coef > 0 else None)
    pg, kl, clip = _rl_terms(rcfg, inputs.shape[0], roll.logp_Gk,
                             jax.lax.stop_gradient(roll.logp_Gk), adv_BG, valid_BG, ref_lp)
    return _terms(rcfg, ntp, pg, kl, clip, rewards_BG, valid_BG, ent_Bc, valid_Bc)

  def weights(batch):
    w = rl_weight(valid_chunks(batch, rcfg), rcfg)
    return {"ntp_loss": jnp.sum(losses.loss_mask(batch)), "pg_loss": w, "kl": w}

  return losses.Objective(terms, _coefs(rcfg), weights, _share_of(rcfg))


make_loss_fn = objective  # the stages' name for it


def refine_loss(model, batch, rng, rcfg, ref_model=None):
  """(loss, metrics) of the fused ReFINE objective on one whole batch."""
  return objective(rcfg, ref_model)(model, batch, rng)


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
  r_sel, r_roll = jax.random.split(rng)
  out, *selected = _forward_and_select(model, batch, r_sel, rcfg)
  pos_Bc, valid_Bc, ent_Bc, roll, true_Bck, rewards_BG, _, adv_BG = _sample_and_score(
      model, out, batch, r_roll, rcfg, selected)
  col = Collected(pos_Bc, valid_Bc, roll.tokens_Gk,
                  rollout.repeat_rows(true_Bck, rcfg.rollouts_per_position),
                  roll.logp_Gk, rewards_BG, adv_BG, ent_Bc)
  return jax.tree.map(jax.lax.stop_gradient, col)


def policy_objective(rcfg, ref_model=None) -> losses.Objective:
  """The PPO objective of stored rollouts under the current weights, on (batch, Collected)
  pairs holding the same sequences (slice both by sequence for minibatches)."""

  def terms(model, data, rng):
    del rng  # the policy loss of stored rollouts is deterministic
    batch, col = data
    inputs, targets, mask = _batch_arrays(batch)
    seg = segments(batch)
    n = rcfg.rollouts_per_position
    # The positions are known: each layer feeds the rollouts from its own cache there.
    out, logp_Gk = policy_forward(model, inputs, seg, col.positions_Bc, col.tokens_Gk, rcfg)
    ntp, _ = losses.ntp_terms(out.logits, targets, mask)
    old_Gk = col.old_logp_Gk
    if batch.get("update_index") is not None:
      # A step's first update runs at the very weights that collected the rollouts: score it
      # on-policy like the fused step (ratio exactly 1). Recomputing under value_and_grad
      # compiles differently from the sampling pass, which moves log-probs by ~1 ulp.
      first_G = jnp.repeat(jnp.asarray(batch["update_index"]) == 0, col.tokens_Gk.shape[0] //
                           inputs.shape[0])
      old_Gk = jnp.where(first_G[:, None], jax.lax.stop_gradient(logp_Gk), old_Gk)
    valid_BG = jnp.repeat(col.valid_Bc, n, axis=1)
    ref_lp = (_ref_logprobs(ref_model, inputs, seg, col.positions_Bc, col.tokens_Gk, rcfg)
              if rcfg.kl_coef > 0 else None)
    pg, kl, clip = _rl_terms(rcfg, inputs.shape[0], logp_Gk, old_Gk,
                             col.advantages_BG, valid_BG, ref_lp)
    return _terms(rcfg, ntp, pg, kl, clip, col.rewards_BG, valid_BG, col.entropy_Bc,
                  col.valid_Bc)

  def weights(data):
    batch, col = data
    w = rl_weight(col.valid_Bc, rcfg)
    return {"ntp_loss": jnp.sum(losses.loss_mask(batch)), "pg_loss": w, "kl": w}

  return losses.Objective(terms, _coefs(rcfg), weights, _share_of(rcfg))


def policy_loss(model, batch, col: Collected, rcfg, ref_model=None):
  """(loss, metrics) of stored rollouts on one whole batch (policy_objective)."""
  return policy_objective(rcfg, ref_model)(model, (batch, col), None)
