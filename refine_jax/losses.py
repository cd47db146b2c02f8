"""Losses as (sum, weight) pairs, so an objective is the same whatever the batch is cut into.

Every training objective here is a weighted mean: NTP is a mean over the masked tokens, the
GRPO term a mean over valid rollout tokens (or rollouts), answer SFT a mean over answer
tokens. Averaging microbatch *means* (or PPO-minibatch, device or process means) would weight a
microbatch with 3 answer tokens like one with 300, so the objective would change with
`train.microbatches`. Instead a loss reports `Term(sum, weight)` per piece, and an optimiser
update divides each piece's sum ONCE by the total weight of the update's whole batch:

    loss = sum_t coef_t * (sum over microbatches of S_t) / max(W_t, 1)

with W_t = `Objective.weights(batch)[t]`, computed from the whole batch before any microbatch
runs (weights depend on masks only, never on the model). Metrics are `Term`s too and are
finalised the same way (`finalize`).

This module sits below refine/, eval/ and train/ (it imports only jax).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp


class Term(NamedTuple):
  """One additive piece of a loss or metric: value = sum / max(weight, 1)."""
  sum: jax.Array
  weight: jax.Array


def masked(x, w) -> Term:
  """Term of x weighted by w (same shape, or broadcastable): (sum(x * w), sum(w)), float32."""
  w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), jnp.shape(x))
  return Term(jnp.sum(jnp.asarray(x, jnp.float32) * w), jnp.sum(w))


def mean(t: Term):
  """The weighted mean a Term stands for (0 when it has no weight)."""
  return t.sum / jnp.maximum(t.weight, 1.0)


def token_nll(logits_BTV, targets_BT):
  """-log p(target) per position, float32 (the one token NLL: training, eval, perplexity).
  optax.losses.softmax_cross_entropy_with_integer_labels is the same value by another rounding
  (logsumexp - logit: ~30% of positions differ by 1 ulp), so runs logged before would not
  reproduce bit for bit; tests/test_losses_weighting.py checks the two agree."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp_BTV, targets_BT[..., None].astype(jnp.int32), axis=-1)[..., 0]


def loss_mask(batch):
  """float32 [B, T] loss_mask of an LM batch (all ones when the batch has none)."""
  if batch.get("loss_mask") is not None:
    return jnp.asarray(batch["loss_mask"], jnp.float32)
  return jnp.ones(jnp.shape(batch["targets"]), jnp.float32)


def segments(batch):
  """The batch's segment_ids (packed documents the model keeps apart), or None: a batch
  without them (data.reset_at_documents=False drops them) runs every row whole."""
  seg = batch.get("segment_ids")
  return None if seg is None else jnp.asarray(seg, jnp.int32)


def forward(model, inputs_BT, segment_ids_BT=None, *, capture=False, capture_at=None,
            capture_stride=None, branch_tokens=None):
  """model(inputs) with documents kept apart when segment_ids are given; capture_at [B, n]:
  capture only what cache_at needs for those positions; capture_stride: a strided capture;
  branch_tokens: tokens scored after the capture_at positions (LM.__call__)."""
  kw = {"capture": True} if capture else {}
  if capture_stride is not None:
    kw["capture_stride"] = capture_stride
  if branch_tokens is not None:
    kw["branch_tokens"] = branch_tokens
  if capture_at is not None:
    kw["capture_at"] = capture_at
  if segment_ids_BT is not None:
    kw["segment_ids"] = segment_ids_BT
  return model(inputs_BT, **kw)


def ntp_terms(logits_BTV, targets_BT, mask_BT):
  """(NTP Term, accuracy Term) over the tokens with mask > 0 (mask values weight them)."""
  nll = masked(token_nll(logits_BTV, targets_BT), mask_BT)
  correct = (jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)
  return nll, masked(correct, mask_BT)


def ntp_loss(logits_BTV, targets_BT, mask_BT):
  """Mean next-token cross-entropy of one whole batch (the Term's mean)."""
  return mean(masked(token_nll(logits_BTV, targets_BT), mask_BT))


def combine(terms: Mapping[str, Term], coefs: Mapping[str, float], norms: Mapping[str, Any]):
  """sum_t coef_t * S_t / max(norm_t, 1): the scalar a (micro)batch contributes to its
  update's loss, with norm_t the update's total weight of term t."""
  total = jnp.zeros((), jnp.float32)
  for name, c in coefs.items():
    if c:
      total = total + float(c) * terms[name].sum / jnp.maximum(norms[name], 1.0)
  return total


class Objective(NamedTuple):
  """What a stage optimises.

  terms(model, batch, rng) -> (terms: {name: Term}, metrics: {name: Term or array})
  coefs: {name: coefficient} of the loss terms
  weights(batch) -> {name: total weight of term `name` in `batch`} -- must equal the sum of
      terms[name].weight over any row split of `batch` (tests check it); depends on the
      batch's masks only.
  share_of: names of terms whose part of the update's gradient is logged as "grad_share" =
      |g_S| / (|g_S| + |g - g_S|) (train/update.py; costs one more backward pass; () = off).
  Calling an Objective on a whole batch gives the plain (loss, metrics) of that batch.
  """
  terms: Callable
  coefs: Mapping[str, float]
  weights: Callable
  share_of: tuple = ()

  def __call__(self, model, batch, rng):
    terms, metrics = self.terms(model, batch, rng)
    loss = combine(terms, self.coefs, self.weights(batch))
    return loss, finalize(terms, metrics, self.coefs, loss)


def finalize(terms, metrics, coefs, loss):
  """Logged metrics from accumulated Terms: each term's mean under its name, each metric Term's
  mean ("X_sq" with "X_mean" -> "X_std"), plain arrays as they are, and "loss"."""
  out = {name: mean(t) for name, t in terms.items()}
  for name, v in metrics.items():
    out[name] = mean(v) if isinstance(v, Term) else v
  for name in [n for n in out if n.endswith("_sq")]:
    base = name[:-3]
    sq = out.pop(name)
    if f"{base}_mean" in out:
      out[f"{base}_std"] = jnp.sqrt(jnp.maximum(sq - out[f"{base}_mean"] ** 2, 0.0))
  out["loss"] = loss
  return out


def on_view(obj: Objective, view: Callable) -> Objective:
  """The same objective on view(batch) (e.g. post-training's prompt-only inner update)."""
  return Objective(lambda model, batch, rng: obj.terms(model, view(batch), rng), obj.coefs,
                   lambda batch: obj.weights(view(batch)), obj.share_of)


def per_row(loss_fn: Callable) -> Objective:
  """A plain loss_fn(model, batch, rng) -> (per-row mean loss, metrics) as an Objective that
  weights every row equally (exact for losses that are a mean over rows)."""
  def terms(model, batch, rng):
    loss, metrics = loss_fn(model, batch, rng)
    rows = jnp.float32(_rows(batch))
    return ({"loss_value": Term(loss * rows, rows)},
            {k: Term(v * rows, rows) for k, v in metrics.items()})
  return Objective(terms, {"loss_value": 1.0}, lambda batch: {"loss_value": _rows(batch)})


def as_objective(fn) -> Objective:
  return fn if isinstance(fn, Objective) else per_row(fn)


def _rows(batch):
  return jax.tree.leaves(batch)[0].shape[0]
