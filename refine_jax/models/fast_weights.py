"""LaCT's fast weights: the SwiGLU f_W(x) = W1 (silu(W0 x) * (W2 x)) per fast-weight head and
its large-chunk update ("apply, then update"; negative dot-product loss with per-token
softplus learning rates, optional momentum and Muon via Newton-Schulz, rows renormalised
after each update), the chunk scans over a sequence (fw_scan; fw_scan_docs for packed
documents, each on its own chunk grid) and the state at any position (state_at /
doc_state_at). Pure functions of arrays; the LaCT layer (lact.py) holds the params.
Fast weights, momentum, lrs and the update are float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_NS_COEFFS = ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
              (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012))
_TINY = 1e-30  # inside square roots, so all-zero (padding) rows have finite gradients


def row_norm(x, axis=-1):
  return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True) + _TINY)


def l2_norm(x):
  """LaCT's x / (||x|| + 1e-5) over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x / (row_norm(x) + 1e-5)


def newton_schulz5(G):
  """Approximate orthogonal polar factor of G [..., m, n] (Muon's quintic Newton-Schulz)."""
  X = G.astype(jnp.float32)
  tall = X.shape[-2] > X.shape[-1]
  if tall:  # iterate on the wide side: the Gram matrix is the smaller one
    X = jnp.swapaxes(X, -1, -2)
  X = X / (row_norm(X, axis=(-2, -1)) + 1e-7)  # Frobenius norm bounds the spectral norm by 1
  for a, b, c in _NS_COEFFS:
    A = X @ jnp.swapaxes(X, -1, -2)
    X = a * X + (b * A + c * A @ A) @ X
  return jnp.swapaxes(X, -1, -2) if tall else X


# ----------------------------------------------------------------------------- fast weights
# Token tensors are [B, C, H, d]; weights [B, H, out, in]: w0, w2 [dh, dk], w1 [dv, dh].

def _mm(spec, a, b, dt):
  """einsum in the token dtype (bf16 matmuls as LaCT's autocast), result as float32.

  (Not preferred_element_type=float32: XLA:CPU rejects bf16 x bf16 -> f32 dots inside loops.)
  """
  return jnp.einsum(spec, a.astype(dt), b.astype(dt)).astype(jnp.float32)


def fw_apply(w, x_BCHK):
  """f_W(x) = W1 (silu(W0 x) * (W2 x)) per head; float32 result."""
  dt = x_BCHK.dtype
  h = jax.nn.silu(_mm("bchk,bhik->bchi", x_BCHK, w["w0"], dt))
  h = h * _mm("bchk,bhik->bchi", x_BCHK, w["w2"], dt)
  return _mm("bchi,bhvi->bchv", h, w["w1"], dt)


def fw_grad(w, k_BCHK, v_BCHV, lr_BCH3):
  """Ascent direction of sum_t lr_t v_t . f_W(k_t): per matrix, sum_t lr_t * d(v_t.f(k_t))/dW,
  with lr[..., 0/1/2] for W0/W1/W2 (a gradient step on LaCT's negative dot-product loss)."""
  k, v, dt = k_BCHK, v_BCHV, k_BCHK.dtype
  lr0, lr1, lr2 = (lr_BCH3[..., i:i + 1].astype(jnp.float32) for i in range(3))
  g = _mm("bchk,bhik->bchi", k, w["w0"], dt)              # gate pre-activation
  u = _mm("bchk,bhik->bchi", k, w["w2"], dt)              # linear branch
  sg = jax.nn.sigmoid(g)
  dh = _mm("bchv,bhvi->bchi", v, w["w1"], dt)             # W1^T v: d(v.f)/d(hidden)
  du = dh * g * sg                                        # through * silu(g)
  dg = dh * u * sg * (1 + g * (1 - sg))                   # through silu'
  return dict(w0=_mm("bchi,bchk->bhik", dg, k * lr0, dt),
              w1=_mm("bchv,bchi->bhvi", v, g * sg * u * lr1, dt),
              w2=_mm("bchi,bchk->bhik", du, k * lr2, dt))


def fw_step(state, chunk, row_norms, *, use_muon: bool):
  """One chunk update of state {w0,w1,w2[,m0,m1,m2]} from chunk {k,v,lr[,mc]}."""
  w = {n: state[n] for n in ("w0", "w1", "w2")}
  dw = fw_grad(w, chunk["k"], chunk["v"], chunk["lr"])
  new = {}
  if "mc" in chunk:  # momentum: dw += mean_chunk(coef) * previous dw (pre-Muon)
    m_BH11 = jnp.mean(chunk["mc"].astype(jnp.float32), axis=1)[:, :, None, None]
    for i in "012":
      dw["w" + i] = dw["w" + i] + m_BH11 * state["m" + i]
      new["m" + i] = dw["w" + i]
  for n in ("w0", "w1", "w2"):
    d = newton_schulz5(dw[n]) if use_muon else dw[n]
    wn = w[n] + d
    new[n] = wn / (row_norm(wn) + 1e-5) * row_norms[n]
  return new


def fw_scan(state, toks, chunk: int, row_norms, *, use_muon: bool):
  """Run a token stream (length a multiple of chunk) through apply-then-update.

  Returns (outputs [B, Z, H, dv], states {name: [B, N+1, ...]}: state before each chunk and
  after the last one).
  """
  B, Z = toks["q"].shape[:2]
  N = Z // chunk
  split = lambda t: jnp.moveaxis(t.reshape(B, N, chunk, *t.shape[2:]), 1, 0)
  xs = jax.tree.map(split, toks)

  def body(st, xc):
    o = fw_apply(st, xc["q"])
    upd = {n: xc[n] for n in xc if n != "q"}
    return fw_step(st, upd, row_norms, use_muon=use_muon), (o, st)

  final, (o_NBCHV, st_N) = jax.lax.scan(body, state, xs)
  o = jnp.moveaxis(o_NBCHV, 0, 1).reshape(B, Z, *o_NBCHV.shape[3:])
  states = jax.tree.map(lambda s, f: jnp.concatenate([jnp.moveaxis(s, 0, 1), f[:, None]], 1),
                        st_N, final)
  return o, states


def _where_rows(mask_R, a, b):
  """Per row (axis 0) a where mask else b, for matching pytrees."""
  return jax.tree.map(lambda x, y: jnp.where(mask_R.reshape((-1,) + (1,) * (x.ndim - 1)), x, y),
                      a, b)


def fw_scan_docs(state0, toks, chunk: int, row_norms, start_BZ, *, use_muon: bool):
  """fw_scan for rows of packed documents: every document runs its own chunk grid from its
  start, exactly as if it ran alone (start_BZ = segments.doc_start, length Z).

  Let D be the document holding chunk i's first token (start s): its boundaries s + kC put
  exactly one update at b in (iC, iC + C], over tokens [b - C, b) (this chunk and the one
  before). Chunk i: D's tokens before b apply D's carried weights (the initial ones if D
  starts at iC), D's tokens from b on the updated ones; documents starting inside the chunk
  apply the initial weights (their first update lies in a later chunk). Carried out: D's
  updated weights if D is the chunk's last document, else the initial ones (momentum alike).
  Costs three applies per chunk instead of one.

  Returns (outputs [B, Z, H, dv], states {name: [B, N, ...]}: D's weights after its update
  in each chunk; the weights before it are those of chunk i - 1 or the initial ones, see
  doc_state_at, so a capture holds as many states as fw_scan's).
  """
  B, Z = toks["q"].shape[:2]
  C = chunk
  N = Z // C
  split = lambda t: jnp.moveaxis(t.reshape(B, N, C, *t.shape[2:]), 1, 0)   # [N, B, C, ...]
  xs = jax.tree.map(split, toks)
  names = [n for n in toks if n != "q"]
  prev = {n: jnp.concatenate([jnp.zeros_like(xs[n][:1]), xs[n][:-1]], 0) for n in names}
  st_NBC = split(start_BZ)
  c0_N1 = (jnp.arange(N, dtype=jnp.int32) * C)[:, None]
  sD_NB = st_NBC[:, :, 0]
  fresh_NB = sD_NB == c0_N1
  b_NB = 1 + jnp.mod(sD_NB - c0_N1 - 1, C)                    # update boundary - iC, in [1, C]
  in_d_NBC = st_NBC == sD_NB[..., None]
  after_NBC = jnp.arange(C)[None, None] >= b_NB[..., None]
  last_d_NB = st_NBC[:, :, -1] == sD_NB
  b_B1 = jnp.arange(B)[:, None]

  def body(carry, x):
    xc, pc, fresh, b, in_d, after, last_d = x
    w_in = _where_rows(fresh, state0, carry)
    idx = b[:, None] + jnp.arange(C)[None]                     # window [b - C, b) in [prev; xc]
    win = {n: jnp.concatenate([pc[n], xc[n]], axis=1)[b_B1, idx] for n in names}
    w_mid = fw_step(w_in, win, row_norms, use_muon=use_muon)
    q = xc["q"]
    o_in, o_mid, o_init = fw_apply(w_in, q), fw_apply(w_mid, q), fw_apply(state0, q)
    m = lambda a: a[..., None, None]
    o = jnp.where(m(in_d), jnp.where(m(after), o_mid, o_in), o_init)
    return _where_rows(last_d, w_mid, state0), (o, w_mid)

  _, (o_NBCHV, s_mid) = jax.lax.scan(
      body, state0, (xs, prev, fresh_NB, b_NB, in_d_NBC, after_NBC, last_d_NB))
  o = jnp.moveaxis(o_NBCHV, 0, 1).reshape(B, Z, *o_NBCHV.shape[3:])
  return o, jax.tree.map(lambda t: jnp.moveaxis(t, 0, 1), s_mid)


def doc_state_at(states, state0, toks, p_R, s_R, src_R, chunk: int):
  """state_at for a capture of packed documents (fw_scan_docs' states): the cache pieces of
  position p_R's document (start s_R) alone after its tokens [s, p]: the weights at the start
  of the document's current chunk (its own grid) and that chunk's tokens so far.

  With c = p // C: a document starting inside chunk c has the initial weights; otherwise it
  is chunk c's D (update at b): after b its weights are states[c]; before b they are
  states[c - 1] if it was already chunk c - 1's D (it started by (c - 1) C), else initial."""
  C = chunk
  c_R = p_R // C
  cnt_R = p_R + 1 - s_R
  last_R = s_R + (cnt_R // C) * C                               # current chunk's first token
  b_R = c_R * C + 1 + jnp.mod(s_R - c_R * C - 1, C)             # D's update in chunk c
  use_now = (p_R + 1 >= b_R) & (s_R <= c_R * C)
  use_prev = (p_R + 1 < b_R) & (s_R <= (c_R - 1) * C)
  st = _where_rows(use_now, jax.tree.map(lambda t: t[src_R, c_R], states), state0)
  st = _where_rows(use_prev, jax.tree.map(lambda t: t[src_R, jnp.maximum(c_R - 1, 0)], states),
                   st)
  j_C = jnp.arange(C)
  idx_RC = last_R[:, None] + j_C[None]
  valid_RC = j_C[None] < (p_R + 1 - last_R)[:, None]

  def take(t):
    g = t[src_R[:, None], jnp.clip(idx_RC, 0, t.shape[1] - 1)]
    return jnp.where(valid_RC.reshape(valid_RC.shape + (1,) * (g.ndim - 2)), g, 0)

  return st, jax.tree.map(take, toks)


def state_at(states, toks, count_R, src_R, chunk: int):
  """Cache pieces after `count_R` tokens of source row `src_R`: the state at the start of the
  current chunk and the partial-chunk buffer (zeros past the filled part)."""
  nf_R = count_R // chunk
  st = jax.tree.map(lambda s: s[src_R, nf_R], states)
  j_C = jnp.arange(chunk)
  idx_RC = nf_R[:, None] * chunk + j_C[None]
  valid_RC = j_C[None] < (count_R - nf_R * chunk)[:, None]

  def take(t):
    g = t[src_R[:, None], jnp.clip(idx_RC, 0, t.shape[1] - 1)]
    return jnp.where(valid_RC.reshape(valid_RC.shape + (1,) * (g.ndim - 2)), g, 0)

  return st, jax.tree.map(take, toks)


# ----------------------------------------------------------------------------- the mixer
