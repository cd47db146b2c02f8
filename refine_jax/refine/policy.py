"""Log-probabilities of stored rollouts under the current weights, differentiable: what a PPO
update (and the KL reference) scores. Rows: G = B*c*n, row (b*c + i)*n + j (refine.rollout).
Token 0 of a rollout is scored by the sequence's logits at its position, tokens 1..k-1 by the
logits after feeding tokens[:, :k-1] from the position's caches."""
from __future__ import annotations

import jax.numpy as jnp

from refine_jax import losses
from refine_jax.refine import rollout


def _logprobs(seq_logits_BTV, positions_Bc, rest_logits_GmV, tokens_Gk, rcfg):
  """[G, k] log pi(tokens): token 0 from the sequence's logits, the rest from rest_logits."""
  first_G = rollout.repeat_rows(rollout.first_logits_at(seq_logits_BTV, positions_Bc),
                                rcfg.rollouts_per_position)
  lp0_G = rollout.token_logprob(first_G, tokens_Gk[:, 0], rcfg.temperature)
  if rest_logits_GmV is None:
    return lp0_G[:, None]
  G, m, V = rest_logits_GmV.shape
  rest = rollout.token_logprob(rest_logits_GmV.reshape(G * m, V), tokens_Gk[:, 1:].reshape(-1),
                               rcfg.temperature).reshape(G, m)
  return jnp.concatenate([lp0_G[:, None], rest], axis=1)


def policy_forward(model, inputs_BT, seg_BT, positions_Bc, tokens_Gk, rcfg):
  """(out, log pi(tokens) [G, k]) in one forward pass: the sequence, and tokens[:, :k-1] fed
  layer by layer from each layer's cache at their positions (LM branch_tokens), so no
  layer's caches outlive the layer (under a gradient, feeding from cache_at's caches keeps
  every layer's caches, once per token for a token-by-token feed). The values of
  capture_at + policy_logprobs."""
  branch = tokens_Gk[:, :-1] if rcfg.rollout_len > 1 else None
  out = losses.forward(model, inputs_BT, seg_BT, capture_at=positions_Bc, branch_tokens=branch)
  return out, _logprobs(out.logits, positions_Bc, out.branch_logits, tokens_Gk, rcfg)


def policy_logprobs(model, out, positions_Bc, tokens_Gk, rcfg, cache_Bc=None):
  """log pi(tokens) [G, k] from a captured pass `out` (or given caches at the positions):
  tokens[:, :k-1] fed from the caches, in one call where the model's mixers allow it
  (`multi_token_decode`), else token by token as when sampling."""
  n, k, T = rcfg.rollouts_per_position, rcfg.rollout_len, out.logits.shape[1]
  rest = None
  if k > 1:
    if cache_Bc is None:
      cache_Bc = model.cache_at(out.captured, positions_Bc, T + k)
    _, rest = rollout.feed_tokens(model, rollout.repeat_rows(cache_Bc, n), tokens_Gk[:, :-1],
                                  one_call=model.multi_token_decode)
  return _logprobs(out.logits, positions_Bc, rest, tokens_Gk, rcfg)
