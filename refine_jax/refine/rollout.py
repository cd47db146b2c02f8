"""Rollouts: sample k tokens from cached per-layer states with a lax.scan decoder.

The fast path starts from `model.cache_at(captured, positions)` -- caches cut out of the one
full-sequence forward pass -- so no prefix is ever re-run. `rollout_reprefill` is the slow
reference (what the PyTorch reference code does: re-feed every prefix from token 0); it uses
the same decoder, so with the same key both give the same tokens and log-probs.

Row layout everywhere: G = B * c * n rollouts, row (b * c + i) * n + j is sample j from the
i-th selected position of sequence b.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Rollout(NamedTuple):
  tokens_Gk: jax.Array     # int32 sampled tokens
  logp_Gk: jax.Array       # float32 log pi(token | prefix, earlier rollout tokens), tempered
  hidden_GkD: jax.Array    # final-norm hidden state of each rollout token (fed from the cache)


def tempered_logits(logits_GV, temperature):
  """logits / temperature in float32; temperature <= 0 means greedy and leaves logits as is."""
  logits = logits_GV.astype(jnp.float32)
  return logits / temperature if temperature > 0 else logits


def filter_logits(logits_GV, *, top_k=0, top_p=1.0):
  """Masks (to -inf) tokens outside the top-k and outside the top-p nucleus; 0 / 1.0 = off."""
  V = logits_GV.shape[-1]
  if top_k and 0 < top_k < V:
    kth_G1 = jax.lax.top_k(logits_GV, top_k)[0][..., -1:]
    logits_GV = jnp.where(logits_GV < kth_G1, -jnp.inf, logits_GV)
  if top_p is not None and top_p < 1.0:
    sorted_GV = jnp.sort(logits_GV, axis=-1)[..., ::-1]
    probs_GV = jax.nn.softmax(sorted_GV, axis=-1)
    # Keep a token while the mass strictly before it is < top_p (the top token always stays).
    before_GV = jnp.cumsum(probs_GV, axis=-1) - probs_GV
    keep_GV = before_GV < top_p
    cutoff_G1 = jnp.min(jnp.where(keep_GV, sorted_GV, jnp.inf), axis=-1, keepdims=True)
    logits_GV = jnp.where(logits_GV < cutoff_G1, -jnp.inf, logits_GV)
  return logits_GV


def fold_in(rng, data):
  """jax.random.fold_in for one key or an array of keys (one per row)."""
  if jnp.ndim(rng) == 0:
    return jax.random.fold_in(rng, data)
  return jax.vmap(lambda r: jax.random.fold_in(r, data))(rng)


def row_keys(rng, row_ids):
  """One key per row: fold_in(rng, row id). A row's draws then depend on its id in the whole
  batch only, not on how the batch is cut into microbatches or minibatches."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(row_ids, jnp.int32))


def sample_tokens(rng, logits_GV, *, temperature=1.0, top_k=0, top_p=1.0):
  """Samples one token per row (greedy when temperature <= 0). No gradient. rng: one key, or
  [G] keys (one per row)."""
  logits = jax.lax.stop_gradient(tempered_logits(logits_GV, temperature))
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits, top_k=top_k, top_p=top_p)
  if jnp.ndim(rng) == 0:
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
  return jax.vmap(lambda r, l: jax.random.categorical(r, l))(rng, logits).astype(jnp.int32)


def token_logprob(logits_GV, tokens_G, temperature=1.0):
  """log softmax(logits / temperature)[token]; differentiable in logits.

  The truncation of top-k / top-p is deliberately not applied: the policy being optimised is
  the tempered softmax, as in verl (a filtered-out token can't be sampled anyway)."""
  logp = jax.nn.log_softmax(tempered_logits(logits_GV, temperature), axis=-1)
  return jnp.take_along_axis(logp, tokens_G[:, None].astype(jnp.int32), axis=-1)[:, 0]


def repeat_rows(tree, n):
  """Repeats every leaf n times along axis 0 (row r -> rows r*n .. r*n+n-1)."""
  if n == 1:
    return tree
  return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), tree)


def rollout_from_cache(model, cache, first_logits_GV, rng, *, length, temperature=1.0,
                       top_k=0, top_p=1.0):
  """Samples `length` tokens per row starting from `cache` (batch G).

  first_logits_GV are the logits at the branch position (from the full pass), so step j
  samples token j from the current logits, then feeds it to get the next logits and its
  hidden state. The log-probs stay differentiable w.r.t. the model parameters and the cache
  (sampling itself is stop_gradient), so one scan serves both behaviour and first-epoch
  policy log-probs. Step j draws with fold_in(rng, j) (rng: one key, or [G] row keys).
  """
  graphdef, state = nnx.split(model)

  def step(carry, j):
    cache, logits_GV = carry
    tok_G = sample_tokens(fold_in(rng, j), logits_GV, temperature=temperature,
                          top_k=top_k, top_p=top_p)
    logp_G = token_logprob(logits_GV, tok_G, temperature)
    out = nnx.merge(graphdef, state)(tok_G[:, None], cache=cache)
    return (out.cache, out.logits[:, 0]), (tok_G, logp_G, out.hidden_states[:, 0])

  _, (tok_kG, logp_kG, hid_kGD) = jax.lax.scan(step, (cache, first_logits_GV),
                                               jnp.arange(length))
  return Rollout(jnp.moveaxis(tok_kG, 0, 1), jnp.moveaxis(logp_kG, 0, 1),
                 jnp.moveaxis(hid_kGD, 0, 1))


def feed_tokens(model, cache, tokens_Gk, *, one_call=False):
  """Teacher-forces tokens_Gk from `cache`. Returns (hidden_GkD, logits_GkV): the hidden state
  of each fed token and the logits after it. Differentiable w.r.t. the model and the cache.

  Default: one token at a time, the decode path `rollout_from_cache` samples with (so the
  values repeat the sampler's arithmetic). one_call=True (for a model whose
  `multi_token_decode` holds): all k tokens in one call from the cache, the same maths on
  the chunked path; under a gradient it keeps the cache once instead of once per token (for
  Gated DeltaNet-1.3B, 8 rollouts x 21 layers of states are 0.5 GB per copy)."""
  if one_call:
    out = model(tokens_Gk, cache=cache)
    return out.hidden_states, out.logits
  graphdef, state = nnx.split(model)

  def step(cache, tok_G):
    out = nnx.merge(graphdef, state)(tok_G[:, None], cache=cache)
    return out.cache, (out.hidden_states[:, 0], out.logits[:, 0])

  _, (hid_kGD, logits_kGV) = jax.lax.scan(step, cache, jnp.moveaxis(tokens_Gk, 1, 0))
  return jnp.moveaxis(hid_kGD, 0, 1), jnp.moveaxis(logits_kGV, 0, 1)


def first_logits_at(logits_BTV, positions_Bc):
  """logits[b, positions[b, i]] -> [B*c, V] (row b*c + i)."""
  B, c = positions_Bc.shape
  rows = jnp.take_along_axis(logits_BTV, positions_Bc[:, :, None].astype(jnp.int32), axis=1)
  return rows.reshape(B * c, logits_BTV.shape[-1])


def continuation_at(tokens_BT, positions_Bc, length):
  """tokens[b, p : p+length] for every selected p -> [B*c, length] (clipped at the end)."""
  B, T = tokens_BT.shape
  idx_Bck = jnp.clip(positions_Bc[:, :, None] + jnp.arange(length), 0, T - 1)
  return jnp.take_along_axis(tokens_BT[:, None, :], idx_Bck, axis=2).reshape(-1, length)


def rollouts_from_capture(model, out, positions_Bc, rng, *, n, length, max_len,
                          temperature=1.0, top_k=0, top_p=1.0):
  """The fast path: caches from `out.captured` (one forward with capture=True) at the
  selected positions, repeated n times, then `rollout_from_cache`. Returns (Rollout, cache_Bc).
  """
  cache_Bc = model.cache_at(out.captured, positions_Bc, max_len)
  first_G = repeat_rows(first_logits_at(out.logits, positions_Bc), n)
  roll = rollout_from_cache(model, repeat_rows(cache_Bc, n), first_G, rng, length=length,
                            temperature=temperature, top_k=top_k, top_p=top_p)
  return roll, cache_Bc


def prefill_cache(model, prefix_1L, max_len):
  """Reference: runs a prefix from an empty cache; returns (cache, logits at its last token)."""
  out = model(prefix_1L, cache=model.init_cache(prefix_1L.shape[0], max_len))
  return out.cache, out.logits[:, -1]


@functools.lru_cache(maxsize=16)
def _jitted_prefill(graphdef, max_len):
  return jax.jit(lambda state, prefix_1L: prefill_cache(nnx.merge(graphdef, state), prefix_1L,
                                                        max_len))


@functools.lru_cache(maxsize=16)
def _jitted_decode(graphdef, length, temperature, top_k, top_p):
  return jax.jit(lambda state, cache, first, rng: rollout_from_cache(
      nnx.merge(graphdef, state), cache, first, rng, length=length, temperature=temperature,
      top_k=top_k, top_p=top_p))


def rollout_reprefill(model, inputs_BT, positions_Bc, rng, *, n, length, max_len,
                      temperature=1.0, top_k=0, top_p=1.0):
  """Reference implementation: every selected prefix inputs[b, :p+1] is re-run from token 0
  (one jitted call per prefix; prefixes differ in length, so each length compiles once), then
  the same decoder as the fast path. A host loop: for tests and the benchmark baseline."""
  pos = np.asarray(positions_Bc)
  B, c = pos.shape
  graphdef, state = nnx.split(model)
  prefill = _jitted_prefill(graphdef, max_len)
  caches, firsts = [], []
  for b in range(B):
    for i in range(c):
      cache, logits = prefill(state, inputs_BT[b:b + 1, :int(pos[b, i]) + 1])
      caches.append(cache)
      firsts.append(logits)
  cache_Bc = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *caches)
  first_Bc = jnp.concatenate(firsts, axis=0)
  decode = _jitted_decode(graphdef, length, float(temperature), int(top_k or 0),
                          float(1.0 if top_p is None else top_p))
  return decode(state, repeat_rows(cache_Bc, n), repeat_rows(first_Bc, n), rng)
