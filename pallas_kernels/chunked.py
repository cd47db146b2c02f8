"""XLA chunked (WY / UT) form of the (gated) delta rule.

Per chunk of C tokens, with chunk-start state S, G the within-chunk cumulative log decay
(G = 0 for plain DeltaNet) and u_j the delta-rule "new value" of token j:

    S_i   = exp(G_i) S + sum_{j<=i} exp(G_i - G_j) k_j u_j^T
    (I + A) U = diag(beta) V - diag(beta exp(G)) K S,   A_jl = beta_j exp(G_j - G_l) k_j.k_l  (l < j)

so with W = (I+A)^-1 diag(beta exp(G)) K and U0 = (I+A)^-1 diag(beta) V (no dependence on S;
(I+A)^-1 by blocked doubling, matmuls only, with a custom VJP): U = U0 - W S, S' = exp(G_C) S + (exp(G_C - G) * K)^T U and
O = scale * [exp(G) * Q S + (Q K^T o M) U], M_ij = exp(G_i - G_j) for j <= i.

Only `U = U0 - W S` and the state update are sequential (a lax.scan over chunks); everything
else is batched over a group of chunks. Groups are walked by an outer lax.scan under
jax.checkpoint: the backward stores one K x V state per group (plus the chunk-boundary states
returned anyway), never a per-token state, and recomputes each group's internals.

Every exponent is <= 0 when g <= 0: differences are masked *before* exp, so large decays
underflow to 0 instead of overflowing (positive g is not checked; it is the caller's contract).

Documents packed in a row (segment_ids; reset flags from reference.reset_flags): with n_i the
number of resets among the chunk's tokens 0..i, M_ij = [n_i == n_j] (same document),
r_i = [n_i == 0] (no reset since the chunk start) and l_j = [n_j == n_{C-1}] (the chunk's last
document), A and the causal QK^T mask are multiplied by M (so (I + A)^-1 is block-diagonal per
document), the entering state reaches token i only through r_i (W's and Q's rows), and
S' = r_{C-1} exp(G_C) S + (l exp(G_C - G) K)^T U. Only when segment_ids is given.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import reference as _reference

_HI = jax.lax.Precision.HIGHEST
_REMAT = True  # recompute each group in the backward (saves token x C residual traffic)


def _ein(spec, *xs):
  # Highest precision: this is the reference fallback path; TF32/bf16 passes would make it drift.
  return jnp.einsum(spec, *xs, precision=_HI)


def _to_chunks(x, C):
  """[B, T, H, ...] -> [N, B, H, C, ...] (zero-padded to N*C tokens)."""
  B, T = x.shape[:2]
  N = -(-T // C)
  pad = N * C - T
  if pad:
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape((B, N, C) + x.shape[2:])
  # [B, N, C, H, ...] -> [N, B, H, C, ...]
  return jnp.moveaxis(jnp.moveaxis(x, 1, 0), 2, 3)


def _from_chunks(x_NBHCD, T):
  """[N, B, H, C, D] -> [B, T, H, D]."""
  N, B, H, C, D = x_NBHCD.shape
  x = jnp.moveaxis(jnp.moveaxis(x_NBHCD, 3, 2), 0, 1)  # [B, N, C, H, D]
  return x.reshape(B, N * C, H, D)[:, :T]


def _tril_mask(C, diagonal):
  """Float 0/1 lower-triangular constant. Multiplying by it is much faster than jnp.tril's
  select on CPU, and exact here: every masked operand is finite (positive exponents are
  zeroed *before* exp)."""
  return jnp.asarray(np.tril(np.ones((C, C), np.float32), diagonal))


def _decay_matrix(G_NBHC, strict):
  """exp(G_i - G_j) on (strictly) lower-triangular (i, j), 0 elsewhere; masked before exp."""
  C = G_NBHC.shape[-1]
  mask_CC = _tril_mask(C, -1 if strict else 0)
  diff = G_NBHC[..., :, None] - G_NBHC[..., None, :]
  return jnp.exp(diff * mask_CC) * mask_CC


def _scan_states(S0_BHKV, W_NBHCK, U0_NBHCV, kdec_NBHCK, decC_NBH):
  """Sequential part. Returns (final state, chunk-start states [N,B,H,K,V], U [N,B,H,C,V])."""

  def body(S_BHKV, xs):
    W, U0, kdec, decC = xs
    U_BHCV = U0 - _ein("bhck,bhkv->bhcv", W, S_BHKV)
    S_next = _ein("bhck,bhcv->bhkv", kdec, U_BHCV)
    S_next = S_next + (S_BHKV if decC is None else decC[..., None, None] * S_BHKV)
    return S_next, (S_BHKV, U_BHCV)

  xs = (W_NBHCK, U0_NBHCV, kdec_NBHCK, decC_NBH)
  if W_NBHCK.shape[0] == 1:  # one chunk: no loop
    S, (states, U) = body(S0_BHKV, jax.tree.map(lambda a: a[0], xs))
    return S, states[None], U[None]
  S, (states, U) = jax.lax.scan(body, S0_BHKV, xs)
  return S, states, U


def _unit_lower_inverse(A_XCC):
  """(I + A)^-1 for strictly lower-triangular A [..., C, C], C a power of two.

  Block forward substitution by doubling: the inverse of a 2b x 2b unit-lower block is
  [[D11, 0], [-D22 A21 D11, D22]]. log2(C) levels of batched matmuls (~C^3/3 flops): XLA's
  CPU triangular_solve is ~100x slower than this for small batched matrices.
  """
  *batch, C, _ = A_XCC.shape
  D = jnp.ones((*batch, C, 1, 1), A_XCC.dtype)  # inverses of the 1 x 1 diagonal blocks
  b = 1
  while b < C:
    n = C // (2 * b)
    A6 = A_XCC.reshape(*batch, n, 2, b, n, 2, b)
    # Lower-left b x b block of each 2b x 2b diagonal block: [..., n, b, b]. Pairs (p, p)
    # taken by a strided slice: jnp.diagonal's gather (scatter in the backward) is slow on CPU.
    A_pqij = jnp.moveaxis(A6[..., :, 1, :, :, 0, :], -2, -3).reshape(*batch, n * n, b, b)
    A21 = A_pqij[..., ::n + 1, :, :]
    D11, D22 = D[..., 0::2, :, :], D[..., 1::2, :, :]
    off = -_ein("...ij,...jk,...kl->...il", D22, A21, D11)
    top = jnp.concatenate([D11, jnp.zeros_like(D11)], axis=-1)
    D = jnp.concatenate([top, jnp.concatenate([off, D22], axis=-1)], axis=-2)
    b *= 2
  return D[..., 0, :, :]


@jax.custom_vjp
def _solve_unit_lower(A_XCC, R1_XCD, R2_XCE):
  """(I + A)^-1 R1 and (I + A)^-1 R2 for strictly lower-triangular A (one inverse)."""
  D = _unit_lower_inverse(A_XCC)
  return _ein("...ij,...jd->...id", D, R1_XCD), _ein("...ij,...jd->...id", D, R2_XCE)


def _solve_fwd(A, R1, R2):
  D = _unit_lower_inverse(A)
  X1, X2 = _ein("...ij,...jd->...id", D, R1), _ein("...ij,...jd->...id", D, R2)
  return (X1, X2), (D, X1, X2)


def _solve_bwd(res, cts):
  # X = (I+A)^-1 R  =>  dR = (I+A)^-T dX,  dA = -dR X^T (strictly lower part only). Cheaper
  # than differentiating through the doubling levels of the inverse.
  D, X1, X2 = res
  dX1, dX2 = cts
  dR1 = _ein("...ji,...jd->...id", D, dX1)
  dR2 = _ein("...ji,...jd->...id", D, dX2)
  dA = -(_ein("...id,...jd->...ij", dR1, X1) + _ein("...id,...jd->...ij", dR2, X2))
  return dA * _tril_mask(dA.shape[-1], -1), dR1, dR2


_solve_unit_lower.defvjp(_solve_fwd, _solve_bwd)


def _segments(s_NBXC):
  """Reset flags [n, B, 1, C] -> (M [n,B,1,C,C] same-document 0/1, r [n,B,1,C] no reset since
  the chunk start, l [n,B,1,C] in the chunk's last document, r_last [n,B,1])."""
  n_NBXC = jnp.cumsum(s_NBXC, axis=-1)          # resets among tokens 0..i (exact: small ints)
  M = (n_NBXC[..., :, None] == n_NBXC[..., None, :]).astype(jnp.float32)
  r = (n_NBXC == 0).astype(jnp.float32)
  l = (n_NBXC == n_NBXC[..., -1:]).astype(jnp.float32)
  return M, r, l, r[..., -1]


def _chunk_group(S0_BHKV, q_NBHCK, k_NBHCK, v_NBHCV, b_NBHC, g_NBHC, scale, s_NBXC=None):
  """All the math for n consecutive chunks [n, B, H, C, .] from the state S0 before them.

  s_NBXC: reset flags [n, B, 1, C] (1.0: zero the state before this token) or None.
  Returns (state after them, chunk-start states [n,B,H,K,V], o [n,B,H,C,V] or None when q is
  None). Float32 in, float32 out.
  """
  KK = _ein("nbhik,nbhjk->nbhij", k_NBHCK, k_NBHCK)
  C = k_NBHCK.shape[-2]
  seg = s_NBXC is not None
  if seg:
    M_NBXCC, r_NBXC, l_NBXC, rL_NBX = _segments(s_NBXC)
  if g_NBHC is None:
    G_NBHC = None
    if not seg:
      A_NBHCC = b_NBHC[..., :, None] * KK * _tril_mask(C, -1)
      rhs_k = b_NBHC[..., None] * k_NBHCK
      kdec_NBHCK, decC_NBH = k_NBHCK, None
    else:
      A_NBHCC = b_NBHC[..., :, None] * KK * (_tril_mask(C, -1) * M_NBXCC)
      rhs_k = (b_NBHC * r_NBXC)[..., None] * k_NBHCK
      kdec_NBHCK, decC_NBH = l_NBXC[..., None] * k_NBHCK, rL_NBX
  else:
    G_NBHC = jnp.cumsum(g_NBHC, axis=-1)
    if not seg:
      A_NBHCC = b_NBHC[..., :, None] * KK * _decay_matrix(G_NBHC, strict=True)
      rhs_k = (b_NBHC * jnp.exp(G_NBHC))[..., None] * k_NBHCK
      GC_NBH = G_NBHC[..., -1]
      kdec_NBHCK = jnp.exp(GC_NBH[..., None] - G_NBHC)[..., None] * k_NBHCK
      decC_NBH = jnp.exp(GC_NBH)
    else:
      A_NBHCC = b_NBHC[..., :, None] * KK * (_decay_matrix(G_NBHC, strict=True) * M_NBXCC)
      rhs_k = (b_NBHC * r_NBXC * jnp.exp(G_NBHC))[..., None] * k_NBHCK
      GC_NBH = G_NBHC[..., -1]
      kdec_NBHCK = (l_NBXC * jnp.exp(GC_NBH[..., None] - G_NBHC))[..., None] * k_NBHCK
      decC_NBH = rL_NBX * jnp.exp(GC_NBH)
  W_NBHCK, U0_NBHCV = _solve_unit_lower(A_NBHCC, rhs_k, b_NBHC[..., None] * v_NBHCV)
  S, states_NBHKV, U_NBHCV = _scan_states(S0_BHKV, W_NBHCK, U0_NBHCV, kdec_NBHCK, decC_NBH)
  if q_NBHCK is None:
    return S, states_NBHKV, None
  q_NBHCK = q_NBHCK * scale
  QK = _ein("nbhik,nbhjk->nbhij", q_NBHCK, k_NBHCK)
  if G_NBHC is None:
    if not seg:
      QK, q_inter = QK * _tril_mask(C, 0), q_NBHCK
    else:
      QK, q_inter = QK * (_tril_mask(C, 0) * M_NBXCC), r_NBXC[..., None] * q_NBHCK
  else:
    if not seg:
      QK = QK * _decay_matrix(G_NBHC, strict=False)
      q_inter = jnp.exp(G_NBHC)[..., None] * q_NBHCK
    else:
      QK = QK * (_decay_matrix(G_NBHC, strict=False) * M_NBXCC)
      q_inter = (r_NBXC * jnp.exp(G_NBHC))[..., None] * q_NBHCK
  o_NBHCV = (_ein("nbhck,nbhkv->nbhcv", q_inter, states_NBHKV)
             + _ein("nbhij,nbhjv->nbhiv", QK, U_NBHCV))
  return S, states_NBHKV, o_NBHCV


def _group_size(N, C, tokens=256):
  """Chunks per outer-scan step: the largest divisor of N spanning <= `tokens` tokens."""
  target = max(1, tokens // C)
  return max(d for d in range(1, min(N, target) + 1) if N % d == 0)


def chunked(q, k, v, beta, g=None, *, scale=None, initial_state=None, chunk_size=64,
            segment_ids=None):
  """Chunked (gated) delta rule. Returns (o [B,T,H,V] in v.dtype, final_state [B,H,K,V] f32,
  chunk_states [B,N,H,K,V] f32) with chunk_states[:, c] the state after tokens [0, c*C).

  segment_ids [B, T] int or None: documents packed back to back (reference.reset_flags).
  Any T: the tail chunk is zero-padded (beta = 0, g = 0, no reset: exact no-ops).
  An outer lax.scan walks groups of chunks (~256 tokens: cache-sized working sets) under
  jax.checkpoint, so the backward keeps only each group's start state and recomputes the rest.
  Inputs are not validated here; see ops.py.
  """
  B, T, H, K = q.shape
  V = v.shape[-1]
  C = chunk_size
  scale = K ** -0.5 if scale is None else scale
  S0 = (jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None
        else initial_state.astype(jnp.float32))
  f32 = lambda x: x.astype(jnp.float32)
  N = -(-T // C)
  n = _group_size(N, C)
  G = N // n

  def to_groups(x):
    # [B, T, H, ...] -> [G, B, n*C, H, ...]: contiguous token blocks, a cheap copy; the
    # per-chunk transpose happens inside the step, on a cache-sized block.
    x = jnp.pad(f32(x), [(0, 0), (0, N * C - T)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((B, G, n * C) + x.shape[2:]), 1, 0)

  # reset flags [B, T, 1]: one per token, broadcast over heads.
  reset = None if segment_ids is None else _reference.reset_flags(segment_ids)[..., None]
  xs = tuple(None if x is None else to_groups(x) for x in (q, k, v, beta, g, reset))

  def body(S_BHKV, x):
    x = [None if a is None else _to_chunks(a, C) for a in x]   # [n, B, H, C, ...]
    S_next, states, o_NBHCV = _chunk_group(S_BHKV, *x[:5], scale, x[5])
    return S_next, (states, _from_chunks(o_NBHCV, n * C))       # o: [B, n*C, H, V]

  if _REMAT:
    body = jax.checkpoint(body)

  S, (states, o_GBLHV) = jax.lax.scan(body, S0, xs)
  states_NBHKV = states.reshape((N,) + states.shape[2:])
  o = jnp.moveaxis(o_GBLHV, 0, 1).reshape(B, N * C, H, V)[:, :T].astype(v.dtype)
  return o, S, jnp.moveaxis(states_NBHKV, 0, 1)


def chunked_advance(state, k, v, beta, g=None, mask=None, *, chunk_size=64, segment_ids=None):
  """Advances `state` [B,H,K,V] through k [B,L,H,K], v [B,L,H,V], beta/g [B,L,H] where
  mask [B,L] is 1, by the chunked form. Masked tokens are exact no-ops (beta = 0, g = 0, and
  no document reset). segment_ids [B, L]: documents as in `chunked` (none starts at token 0)."""
  L = k.shape[1]
  f32 = lambda x: x.astype(jnp.float32)
  beta = f32(beta)
  reset = None if segment_ids is None else _reference.reset_flags(segment_ids)[..., None]
  if mask is not None:
    m_BL1 = f32(mask)[..., None]
    beta = beta * m_BL1
    if g is not None:
      g = f32(g) * m_BL1
    if reset is not None:
      reset = reset * m_BL1
  # Short advances (decode-time prefixes) need not pad to a full chunk.
  C = min(chunk_size, 1 << max(L - 1, 0).bit_length())
  xs = [_to_chunks(f32(x), C) for x in (k, v, beta)]
  g_NBHC = None if g is None else _to_chunks(f32(g), C)
  s_NBXC = None if reset is None else _to_chunks(reset, C)
  S, _, _ = _chunk_group(state.astype(jnp.float32), None, *xs, g_NBHC, 1.0, s_NBXC)
  return S
