"""GRPO: group-standardised advantages and the PPO clipped (dual-clip) policy loss.

A group is one row of the rewards: refine.step.advantages lays the rows out as one sequence's
c chunks x n samples (refine.group="sequence") or as the n samples of one (sequence, position)
(group="position", the official code's choice for n > 1). Shapes: rewards and valid masks
[rows, G]; per-token arrays [B, G, k].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from refine_jax import losses

AGGREGATIONS = ("token-mean", "seq-mean")


def group_advantages(rewards_BG, valid_BG=None, eps=1e-6):
  """(r - mean) / (std + eps) within each row, over valid entries only.

  std is the unbiased (n - 1) estimate, as torch.std in the reference GRPO; a group with fewer
  than two valid rollouts has no baseline to compare against and gets advantage 0.
  """
  r = rewards_BG.astype(jnp.float32)
  w = jnp.ones_like(r) if valid_BG is None else valid_BG.astype(jnp.float32)
  n_B1 = jnp.sum(w, axis=1, keepdims=True)
  mean_B1 = jnp.sum(r * w, axis=1, keepdims=True) / jnp.maximum(n_B1, 1.0)
  var_B1 = jnp.sum(w * (r - mean_B1) ** 2, axis=1, keepdims=True) / jnp.maximum(n_B1 - 1, 1.0)
  adv = (r - mean_B1) / (jnp.sqrt(var_B1) + eps)
  return jnp.where((n_B1 >= 2) & (w > 0), adv, 0.0)


def aggregate(x_BGk, mask_BGk, mode) -> losses.Term:
  """The loss Term of per-token values. token-mean: (sum over valid tokens, their count);
  seq-mean: (sum over rollouts of each rollout's token mean, the count of rollouts with a valid
  token). Either way the mean over a whole update batch is the Terms' sums over its
  microbatches divided once by their summed weight (refine_jax.losses)."""
  m = mask_BGk.astype(jnp.float32)
  if mode == "token-mean":
    return losses.masked(x_BGk, m)
  if mode == "seq-mean":
    n_BG = jnp.sum(m, axis=-1)
    per_seq = jnp.sum(x_BGk * m, axis=-1) / jnp.maximum(n_BG, 1.0)
    return losses.masked(per_seq, (n_BG > 0).astype(jnp.float32))
  raise ValueError(f"refine.aggregation={mode!r}; choose one of {AGGREGATIONS}.")


def weight(mask_BGk, mode):
  """The weight `aggregate` gives a batch with this mask (no values needed)."""
  return aggregate(jnp.zeros(mask_BGk.shape, jnp.float32), mask_BGk, mode).weight


def ppo_loss(logp_BGk, old_logp_BGk, adv_BG, mask_BGk, *, clip_eps=0.2, dual_clip=3.0,
             aggregation="token-mean"):
  """PPO clipped surrogate with dual clip; returns (loss Term, clip-fraction Term over tokens).

  ratio = exp(logp - old); l1 = -A ratio; l2 = -A clip(ratio, 1-eps, 1+eps); l = max(l1, l2);
  for A < 0 the loss is additionally capped at -A * dual_clip (dual clip keeps a huge ratio on
  a bad action from dominating). dual_clip <= 1 or None turns it off.
  """
  adv = jax.lax.stop_gradient(adv_BG)[..., None]
  ratio = jnp.exp(logp_BGk - jax.lax.stop_gradient(old_logp_BGk))
  l1 = -adv * ratio
  l2 = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  clipped = jnp.maximum(l1, l2)
  if dual_clip is not None and dual_clip > 1.0:
    l3 = -adv * dual_clip
    clipped = jnp.where(adv < 0, jnp.minimum(l3, clipped), clipped)
  loss = aggregate(clipped, mask_BGk, aggregation)
  clip_frac = losses.masked((l2 > l1).astype(jnp.float32), mask_BGk)
  return loss, clip_frac


def kl_penalty(logp_BGk, ref_logp_BGk, mask_BGk, aggregation="token-mean"):
  """k3 estimator of KL(policy || ref): exp(ref - logp) - (ref - logp) - 1 (>= 0, low variance),
  as a Term like `aggregate`."""
  d = jax.lax.stop_gradient(ref_logp_BGk) - logp_BGk
  return aggregate(jnp.exp(d) - d - 1.0, mask_BGk, aggregation)
