"""Naive token-by-token recurrences: the ground truth every other backend is tested against.

Shapes follow flash-linear-attention: q, k [B, T, H, K]; v [B, T, H, V]; beta, g [B, T, H];
states [B, H, K, V]. g is the per-step log decay (<= 0); g=None means plain DeltaNet.
All math is done in float32.

Documents packed in a row (segment_ids [B, T], FLA's cu_seqlens semantics): a token whose
segment id differs from the previous token's starts a new document, and the state is set to
zero before that token is applied (decay included). `reset_flags` is that rule, the one
definition every path uses.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _ein(spec, a, b):
  # full float32 products (no TF32 on GPU): the XLA decode path must agree with the kernels
  return jnp.einsum(spec, a, b, precision=jax.lax.Precision.HIGHEST)


def reset_flags(segment_ids_BT):
  """float32 [B, T]: 1.0 where token t > 0 starts a new document (its segment id differs
  from token t-1's), else 0.0. Token 0 never resets (it starts from the initial state)."""
  s = segment_ids_BT
  new = s[:, 1:] != s[:, :-1]
  return jnp.concatenate([jnp.zeros_like(new[:, :1]), new], axis=1).astype(jnp.float32)


def _step(S_BHKV, q_BHK, k_BHK, v_BHV, beta_BH, g_BH, reset_B=None):
  """One token of the (gated) delta rule. Returns the new state and the output."""
  if reset_B is not None:  # a new document: nothing of the previous one survives
    S_BHKV = jnp.where(reset_B[:, None, None, None] > 0, 0.0, S_BHKV)
  if g_BH is not None:
    S_BHKV = S_BHKV * jnp.exp(g_BH)[..., None, None]
  # Delta rule: S <- S + beta k (v - S^T k)^T.
  pred_BHV = _ein("bhk,bhkv->bhv", k_BHK, S_BHKV)
  delta_BHV = beta_BH[..., None] * (v_BHV - pred_BHV)
  S_BHKV = S_BHKV + _ein("bhk,bhv->bhkv", k_BHK, delta_BHV)
  return S_BHKV, _ein("bhk,bhkv->bhv", q_BHK, S_BHKV)


def recurrent(q, k, v, beta, g=None, *, scale=None, initial_state=None, segment_ids=None):
  """Returns (o [B,T,H,V], final_state [B,H,K,V]) by a lax.scan over tokens.

  segment_ids [B, T] int (None: one document per row): documents packed back to back, see
  the module docstring. A one-token call has no previous token: segment_ids is ignored."""
  reset = None if segment_ids is None else reset_flags(segment_ids)
  return _recurrent(q, k, v, beta, g, scale=scale, initial_state=initial_state, reset=reset)


def _recurrent(q, k, v, beta, g=None, *, scale=None, initial_state=None, reset=None):
  """`recurrent` with reset flags [B, T] (1.0: zero the state before this token) or None."""
  B, T, H, K = q.shape
  V = v.shape[-1]
  scale = K ** -0.5 if scale is None else scale
  f32 = lambda x: x.astype(jnp.float32)
  S0 = (jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None
        else f32(initial_state))
  xs = (f32(q) * scale, f32(k), f32(v), f32(beta), None if g is None else f32(g))
  if reset is not None:
    xs = xs + (f32(reset),)
  if T == 1:  # a decode step: no scan around one token
    S, o_BHV = _step(S0, *(None if x is None else x[:, 0] for x in xs))
    return o_BHV[:, None].astype(v.dtype), S
  xs = jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), xs)

  def body(S, x):
    return _step(S, *x)

  S, o_TBHV = jax.lax.scan(body, S0, xs)
  return jnp.moveaxis(o_TBHV, 0, 1).astype(v.dtype), S


def recurrent_chunk_states(q, k, v, beta, g=None, *, scale=None, initial_state=None,
                           chunk_size=64, segment_ids=None):
  """Like `recurrent`, plus the state *before* each chunk: [B, ceil(T/C), H, K, V].

  chunk_states[:, c] is the state after tokens [0, c*C) (c = 0: the initial state), whatever
  document token c*C-1 belongs to.
  """
  reset = None if segment_ids is None else reset_flags(segment_ids)
  B, T, H, K = q.shape
  V = v.shape[-1]
  S0 = (jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None
        else initial_state.astype(jnp.float32))
  n = -(-T // chunk_size)
  states, S = [S0], S0
  outs = []
  for c in range(n):
    sl = slice(c * chunk_size, min(T, (c + 1) * chunk_size))
    o_c, S = _recurrent(q[:, sl], k[:, sl], v[:, sl], beta[:, sl],
                        None if g is None else g[:, sl], scale=scale, initial_state=S,
                        reset=None if reset is None else reset[:, sl])
    outs.append(o_c)
    states.append(S)
  return jnp.concatenate(outs, axis=1), S, jnp.stack(states[:-1], axis=1)


def recurrent_advance(state, k, v, beta, g=None, mask=None, segment_ids=None):
  """Advances `state` [B,H,K,V] through tokens k [B,L,H,K], v, beta, g where mask [B,L] is 1.

  Masked-out tokens are exact no-ops (beta = 0 and g = 0 make the update the identity; their
  document resets are dropped too). segment_ids [B, L]: the state is zeroed before a token
  whose segment id differs from the previous token's (never before token 0).
  """
  f32 = lambda x: x.astype(jnp.float32)
  beta = f32(beta)
  reset = None if segment_ids is None else reset_flags(segment_ids)
  if mask is not None:
    beta = beta * mask[..., None]
    if g is not None:
      g = f32(g) * mask[..., None]
    if reset is not None:
      reset = reset * f32(mask)
  B, L, H, K = k.shape
  q = jnp.zeros_like(k)
  _, S = _recurrent(q, k, v, beta, g, scale=1.0, initial_state=state, reset=reset)
  return S
