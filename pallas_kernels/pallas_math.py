"""One chunk of the (gated) delta rule, forward and backward, on in-kernel values.

Shared by the GPU (Triton) and TPU (Mosaic) kernels, so it only uses ops both lowerings
take: 2-D dots, elementwise ops, iota masks and keepdims reductions (no slicing of values,
no cumsum primitive, no scalars extracted from vectors). Per-token scalars travel as [C, 1]
columns; a row [1, C] is made from a column with a masked reduction.

Chunk math (WORKSPACE.md, Layer math), C tokens, entering state S [K, V], gc = cumsum(g) in the chunk:
  D_ij = exp(gc_i - gc_j) for j <= i       (decay from token j to token i)
  A = tril(beta_i (k_i . k_j) D_ij, -1),   X = (I + A)^-1
  U~ = X (beta v),  W~ = X (beta exp(gc) k),  u = U~ - W~ S      (the delta of each token)
  O = (exp(gc) q) S + (q k^T o D, causal) u
  S' = exp(gc_C) S + (k exp(gc_C - gc))^T u
X comes from a blocked forward substitution (see _inverse).

Documents packed in a row (reset flags s [C,1], 1.0 where the state is zeroed before the
token; pallas_entry computes them): n_i = resets among tokens 0..i, M_ij = [n_i == n_j],
r_i = [n_i == 0], l_j = [n_j == n_C]. Then D <- D o M, exp(gc) <- r exp(gc) (q and k rows
that see the entering state), exp(gc_C - gc) <- l exp(gc_C - gc) and the state's decay
exp(gc_C) <- r_C exp(gc_C) (_leave_decay). Those four replacements are the whole change: the
backward's formulas hold as they are (each mask is a constant factor).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

f32 = jnp.float32


def pow2(n) -> bool:
  """n is a positive power of two (Triton block shapes, chunk sizes)."""
  return n > 0 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class MathCfg:
  precision: jax.lax.Precision   # HIGHEST for fp32 inputs, DEFAULT (TF32 / bf16 MXU) else
  explicit_transpose: bool       # Mosaic: transpose operands instead of contracting dim 0
  # Operand dtype of the chunk's dots (float32 accumulation always). bfloat16 for bf16
  # inputs doubles tensor-core throughput over TF32, as FLA does; the triangular solve and
  # everything elementwise stay float32.
  operand_dtype: jnp.dtype = f32


def mm(a, b, cfg: MathCfg, ta=False, tb=False, exact=False):
  """a @ b in float32 accumulation; ta / tb use a^T / b^T. exact: float32 operands."""
  dt = f32 if exact else cfg.operand_dtype
  a = a.astype(dt)
  b = b.astype(dt)
  if cfg.explicit_transpose and ta:
    a, ta = a.T, False
  dims = (((0,) if ta else (1,), (1,) if tb else (0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, precision=cfg.precision,
                             preferred_element_type=f32)


def _iotas(C):
  r = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
  c = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
  return r, c


def _row(x_C1, r, c):
  """[C, 1] column -> [1, C] row."""
  return jnp.sum(jnp.where(r == c, x_C1, 0.0), axis=0, keepdims=True)


def _col(x_1C, r, c):
  """[1, C] row -> [C, 1] column."""
  return jnp.sum(jnp.where(r == c, x_1C, 0.0), axis=1, keepdims=True)


def to_col(x_1C):
  """[1, C] row -> [C, 1] column, in a kernel (no transpose op)."""
  r, c = _iotas(x_1C.shape[1])
  return _col(x_1C, r, c)


def to_row(x_C1):
  """[C, 1] column -> [1, C] row, in a kernel (no transpose op)."""
  r, c = _iotas(x_C1.shape[0])
  return _row(x_C1, r, c)


SOLVE_BLOCK = 16


def _inverse(A_CC, At_CC, r, c, cfg):
  """X = (I + A)^-1 for strictly lower-triangular A, in two stages.

  1. The 16 x 16 diagonal blocks by forward substitution: step s makes row s of every block
     at once (rows of different blocks do not interact), so a 64-chunk needs 15 sequential
     steps, not 63. Row i: X_i = e_i - sum_{m<i} A_im X_m, with A_im taken from At = A^T
     (given, to avoid an in-kernel transpose) as a column so that each row m of X meets the
     A entry of its own block's row.
  2. With A = A_d + A_o (diagonal blocks / below them), I + A = (I + A_d)(I + N) for
     N = X_d A_o, which is nilpotent of order C / 16, so X = sum_j (-N)^j X_d (a few matmuls).
  Only forward substitution within a block: no powers of A itself, whose entries can be huge
  when keys repeat.
  """
  C = A_CC.shape[0]
  bs = next((b for b in (SOLVE_BLOCK, 8) if C % b == 0), C)
  if bs == C:
    rb = cb = jnp.zeros_like(r)
  else:  # block index by a shift (bs is 8 or 16): no vector integer division needed
    sh = bs.bit_length() - 1
    rb, cb = jax.lax.shift_right_logical(r, sh), jax.lax.shift_right_logical(c, sh)
  same = rb == cb
  rin, cin = r - rb * bs, c - cb * bs
  eye = (r == c).astype(f32)

  def body(s, X):
    a_C1 = jnp.sum(jnp.where(same & (cin == s), At_CC, 0.0), axis=1, keepdims=True)
    new_1C = -jnp.sum(a_C1 * X, axis=0, keepdims=True)
    return jnp.where(same & (rin == s), new_1C + eye, X)

  Xd = jax.lax.fori_loop(1, bs, body, eye)
  if bs == C:
    return Xd
  N_CC = mm(Xd, jnp.where(rb > cb, A_CC, 0.0), cfg, exact=True)
  X = Xd
  for _ in range(C // bs - 1):   # Horner: X = Xd - N (Xd - N (Xd - ...))
    X = Xd - mm(N_CC, X, cfg, exact=True)
  return X


def _decays(g_C1, r, c):
  """gc [C,1], D [C,C] (causal incl. diagonal, 0 above), D^T, gL [1,1] = gc of the last token."""
  g_1C = _row(g_C1, r, c)
  gc_C1 = jnp.sum(jnp.where(c <= r, g_1C, 0.0), axis=1, keepdims=True)
  gc_1C = _row(gc_C1, r, c)
  # Mask before exp so the (positive) upper-triangle differences never overflow.
  D_CC = jnp.exp(jnp.where(r >= c, gc_C1 - gc_1C, -jnp.inf))
  Dt_CC = jnp.exp(jnp.where(c >= r, gc_1C - gc_C1, -jnp.inf))
  gL_11 = jnp.sum(g_C1, axis=0, keepdims=True)
  return gc_C1, D_CC, Dt_CC, gL_11


def _segments(s_C1, r, c):
  """Reset flags [C,1] -> (M [C,C] bool same document, r [C,1], l [C,1], r_C [1,1]) as 0/1
  float32 columns (module docstring). Counts are small integers: exact in float32."""
  s_1C = _row(s_C1, r, c)
  n_C1 = jnp.sum(jnp.where(c <= r, s_1C, 0.0), axis=1, keepdims=True)   # resets in 0..i
  n_1C = _row(n_C1, r, c)
  nL_11 = jnp.sum(s_C1, axis=0, keepdims=True)
  keep_C1 = jnp.where(n_C1 == 0.0, 1.0, 0.0)
  last_C1 = jnp.where(n_C1 == nL_11, 1.0, 0.0)
  keepL_11 = jnp.where(nL_11 == 0.0, 1.0, 0.0)
  return n_C1 == n_1C, keep_C1, last_C1, keepL_11


def _prep(q, k, v, beta_C1, g_C1, S_KV, cfg, r, c, s_C1=None):
  """Recomputable per-chunk quantities shared by forward and backward.

  gam (row decay of the entering state) and kdf (decay to the chunk end) are None when they
  would be all ones (no g, no resets); so is _leave_decay(p). Without s the operations are
  those (and in the order) of the single-document code."""
  kk_CC = mm(k, k, cfg, tb=True)
  if g_C1 is None:
    D_CC = (r >= c).astype(f32)
    Dt_CC = (c >= r).astype(f32)
    gam_C1 = None
    gL_11 = None
  else:
    gc_C1, D_CC, Dt_CC, gL_11 = _decays(g_C1, r, c)
    gam_C1 = jnp.exp(gc_C1)
  last_C1 = keepL_11 = None
  if s_C1 is not None:
    M_CC, keep_C1, last_C1, keepL_11 = _segments(s_C1, r, c)
    D_CC = jnp.where(M_CC, D_CC, 0.0)
    Dt_CC = jnp.where(M_CC, Dt_CC, 0.0)                  # M is symmetric
    gam_C1 = keep_C1 if gam_C1 is None else keep_C1 * gam_C1
  kkD_CC = jnp.where(r > c, kk_CC * D_CC, 0.0)          # strictly lower
  A_CC = beta_C1 * kkD_CC
  # A^T directly (k k^T is symmetric): beta as a row, the decays transposed.
  At_CC = jnp.where(c > r, kk_CC * Dt_CC, 0.0) * _row(beta_C1, r, c)
  X_CC = _inverse(A_CC, At_CC, r, c, cfg)
  bv = beta_C1 * v
  bk = beta_C1 * k if gam_C1 is None else (beta_C1 * gam_C1) * k
  U_CV = mm(X_CC, bv, cfg)                               # X (beta v)
  W_CK = mm(X_CC, bk, cfg)                               # X (beta gam k)
  u_CV = U_CV - mm(W_CK, S_KV, cfg)
  P_CC = mm(q, k, cfg, tb=True) * D_CC                   # D is 0 above the diagonal
  if gam_C1 is None:
    qg, kd, kdf_C1 = q, k, None
  else:
    qg = gam_C1 * q
    kdf_C1 = None if gL_11 is None else jnp.exp(gL_11 - gc_C1)   # decay from i to chunk end
    if last_C1 is not None:
      kdf_C1 = last_C1 if kdf_C1 is None else last_C1 * kdf_C1
    kd = kdf_C1 * k
  return dict(kk=kk_CC, D=D_CC, gam=gam_C1, gL=gL_11, keepL=keepL_11, kkD=kkD_CC, A=A_CC,
              X=X_CC, bv=bv, bk=bk, W=W_CK, u=u_CV, P=P_CC, qg=qg, kd=kd, kdf=kdf_C1)


def _leave_decay(p):
  """[1,1] factor of the entering state in the leaving one (exp(gc_C), times r_C with
  documents), or None when it is 1."""
  e = None if p["gL"] is None else jnp.exp(p["gL"])
  if p["keepL"] is not None:
    e = p["keepL"] if e is None else p["keepL"] * e
  return e


def chunk_fwd(q, k, v, beta_C1, g_C1, S_KV, cfg: MathCfg, s_C1=None):
  """q (already scaled) [C,K], k [C,K], v [C,V], beta/g [C,1] (g None: plain DeltaNet),
  S [K,V] float32, s [C,1] reset flags or None (one document). Returns (o [C,V], S' [K,V])
  in float32."""
  r, c = _iotas(q.shape[0])
  q, k, v = q.astype(f32), k.astype(f32), v.astype(f32)
  p = _prep(q, k, v, beta_C1.astype(f32), None if g_C1 is None else g_C1.astype(f32),
            S_KV, cfg, r, c, None if s_C1 is None else s_C1.astype(f32))
  o_CV = mm(p["qg"], S_KV, cfg) + mm(p["P"], p["u"], cfg)
  eL = _leave_decay(p)
  S_new = S_KV if eL is None else eL * S_KV
  S_new = S_new + mm(p["kd"], p["u"], cfg, ta=True)
  return o_CV, S_new


def chunk_bwd(q, k, v, beta_C1, g_C1, S_KV, dO_CV, dSn_KV, cfg: MathCfg, s_C1=None):
  """Gradients of one chunk. dSn is the cotangent of the leaving state; s as in chunk_fwd.

  Returns (dq (w.r.t. the scaled q), dk, dv, dbeta [C,1], dg [C,1] or None, dS [K,V]),
  where dS is the cotangent of the entering state. With a V-block of the state, dq, dk,
  dbeta and dg are this block's partial sums (they add up over V-blocks); dv and dS are exact.
  """
  C = q.shape[0]
  r, c = _iotas(C)
  gated = g_C1 is not None
  q, k, v = q.astype(f32), k.astype(f32), v.astype(f32)
  beta_C1 = beta_C1.astype(f32)
  dO_CV = dO_CV.astype(f32)
  p = _prep(q, k, v, beta_C1, g_C1.astype(f32) if gated else None, S_KV, cfg, r, c,
            None if s_C1 is None else s_C1.astype(f32))
  X, u, P, D = p["X"], p["u"], p["P"], p["D"]

  # Leaving state S' = eL S + kd^T u.
  du = mm(P, dO_CV, cfg, ta=True) + mm(p["kd"], dSn_KV, cfg)
  eL = _leave_decay(p)
  dS = dSn_KV if eL is None else eL * dSn_KV
  dS = dS + mm(p["qg"], dO_CV, cfg, ta=True) - mm(p["W"], du, cfg, ta=True)

  # Output O = qg S + P u.
  dOS_CK = mm(dO_CV, S_KV, cfg, tb=True)
  dq = dOS_CK if p["gam"] is None else p["gam"] * dOS_CK
  dP = mm(dO_CV, u, cfg, tb=True)                       # cotangent of P
  dQK = dP * D                                           # P = (q k^T) o D, D causal
  dq = dq + mm(dQK, k, cfg)
  dk = mm(dQK, q, cfg, ta=True)
  dKd = mm(u, dSn_KV, cfg, tb=True)                      # cotangent of kd
  dk = dk + (dKd if p["kdf"] is None else p["kdf"] * dKd)

  # u = X (beta v) - X (beta gam k) S.
  dW = -mm(du, S_KV, cfg, tb=True)
  dX = mm(du, p["bv"], cfg, tb=True) + mm(dW, p["bk"], cfg, tb=True)
  dbv = mm(X, du, cfg, ta=True)                          # X^T du
  dbk = mm(X, dW, cfg, ta=True)
  dv = beta_C1 * dbv
  dbeta = jnp.sum(v * dbv, axis=1, keepdims=True)
  sk_C1 = jnp.sum(k * dbk, axis=1, keepdims=True)
  if p["gam"] is not None:
    dk = dk + (beta_C1 * p["gam"]) * dbk
    dbeta = dbeta + p["gam"] * sk_C1
  else:
    dk = dk + beta_C1 * dbk
    dbeta = dbeta + sk_C1

  # X = (I + A)^-1: dA = -X^T dX X^T, strictly lower.
  dA = jnp.where(r > c, -mm(mm(X, dX, cfg, ta=True), X, cfg, tb=True), 0.0)
  dbeta = dbeta + jnp.sum(dA * p["kkD"], axis=1, keepdims=True)
  dKK = dA * beta_C1 * D
  dk = dk + mm(dKK, k, cfg) + mm(dKK, k, cfg, ta=True)

  if not gated:
    return dq, dk, dv, dbeta, None, dS

  # Log-decay cotangents, first w.r.t. gc (cumulative), then reverse-cumsum to g.
  dgc = p["gam"] * jnp.sum(q * dOS_CK, axis=1, keepdims=True)   # from qg = gam q
  dgc = dgc + (beta_C1 * p["gam"]) * sk_C1                        # from bk = beta gam k
  L = dP * P + dA * p["A"]                                        # d/d(gc_i - gc_j)
  dgc = dgc + jnp.sum(L, axis=1, keepdims=True) - _col(jnp.sum(L, axis=0, keepdims=True), r, c)
  t_C1 = jnp.sum(dKd * p["kd"], axis=1, keepdims=True)            # kd = exp(gL - gc) k
  dgL = (jnp.sum(t_C1, axis=0, keepdims=True)
         + _leave_decay(p) * jnp.sum(jnp.sum(dSn_KV * S_KV, axis=1, keepdims=True),
                                     axis=0, keepdims=True))
  rC1 = jax.lax.broadcasted_iota(jnp.int32, (C, 1), 0)
  dgc = dgc - t_C1 + jnp.where(rC1 == C - 1, dgL, 0.0)
  dgc_1C = _row(dgc, r, c)
  dg = jnp.sum(jnp.where(c >= r, dgc_1C, 0.0), axis=1, keepdims=True)  # sum over t >= i
  return dq, dk, dv, dbeta, dg, dS
