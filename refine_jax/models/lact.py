"""LaCT mixer (Large-Chunk Test-Time Training, arXiv 2505.23884), language-model layer.

y = o_proj( SWA(x) + silu(ttt_scale(x)) * RMSNorm_head( f_W(q_fast) ) )

- SWA: sliding-window causal softmax attention with RoPE over `model.heads` heads.
- Fast weights per fast-weight head: f(x) = W1 (silu(W0 x) * (W2 x)), initialised from slow
  params, updated once per chunk of `chunk` tokens: "apply, then update", so chunk i reads the
  weights after chunks < i. The update ascends sum_t lr_t * v_t . f(k_t) (negative dot-product
  loss) with one softplus learning rate per token, head and matrix; optional momentum (chunk-mean
  sigmoid coefficient) and Muon (Newton-Schulz orthogonalised update); after each update every
  row of W is rescaled back to its norm in the slow init weights (LaCT's "post-norm").
- q/k/v for the fast weights share the attention projections: fast q/k get a per-channel
  scale/offset, SiLU, per-head L2 norm and the same RoPE.
- Packed documents (segment_ids): attention masked to the document, RoPE from its start, and
  each document's fast weights on its own chunk grid from its start (fw_scan_docs), so every
  document runs exactly as if alone.

Cache (decoding): the window KV ring buffer (attention.kv_*), the fast weights (and momentum)
at the current chunk start, and the current partial chunk's k/v/lr (and momentum coefficient);
the chunk is applied to the weights the moment it fills. Fast weights, momentum, lrs and the
update are float32; matmul inputs (fast q/k/v) are in the compute dtype, as in LaCT.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from refine_jax.models import attention as attn
from refine_jax.models import layers, segments

LACT_DEFAULTS = dict(
    num_fw_heads=4,        # fast-weight heads; must divide model.hidden
    inter_multi=1.0,       # fast SwiGLU width = inter_multi * (hidden / num_fw_heads)
    chunk=2048,            # fast-weight update chunk (tokens)
    window=2048,           # sliding attention window (tokens, self included); None = full
    rope_theta=10000.0,
    qkv_bias=False,
    attn_qk_norm=False,    # RMSNorm over q and k (full width) before everything else
    qkv_silu=True,         # SiLU on fast q, k (and v unless no_v_silu)
    no_v_silu=False,
    base_lr=1e-3,          # lr = softplus(lr_proj(x) + softplus^-1(base_lr))
    use_momentum=True,
    use_muon=False,
    learnable_ttt_scale=True,
    ttt_nope=False,        # True: no RoPE on fast q/k
    w0_w2_low_rank=-1,     # >0: init W0, W2 = L @ R + 0.5 I with this rank (LaCT 760M uses 32)
    fw_init_gain=0.5,      # init gain of the low-rank factors
    impl=None,             # jax.nn.dot_product_attention implementation for the no-cache path
)

_NS_COEFFS = ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
              (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012))
_TINY = 1e-30  # inside square roots, so all-zero (padding) rows have finite gradients


def _norm(x, axis=-1):
  return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True) + _TINY)


def l2_norm(x):
  """LaCT's x / (||x|| + 1e-5) over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x / (_norm(x) + 1e-5)


def newton_schulz5(G):
  """Approximate orthogonal polar factor of G [..., m, n] (Muon's quintic Newton-Schulz)."""
  X = G.astype(jnp.float32)
  tall = X.shape[-2] > X.shape[-1]
  if tall:  # iterate on the wide side: the Gram matrix is the smaller one
    X = jnp.swapaxes(X, -1, -2)
  X = X / (_norm(X, axis=(-2, -1)) + 1e-7)  # Frobenius norm bounds the spectral norm by 1
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
    new[n] = wn / (_norm(wn) + 1e-5) * row_norms[n]
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

def _inv_softplus(y: float) -> float:
  return y + math.log(-math.expm1(-y))


class LaCT(nnx.Module):
  """LaCT SwiGLU layer: sliding-window attention + chunked fast-weight SwiGLU."""

  def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
    c = attn.sub_config(cfg, "lact", LACT_DEFAULTS)
    D, H, Hf = int(cfg.hidden), int(cfg.heads), int(c["num_fw_heads"])
    for name, n in (("model.heads", H), ("model.lact.num_fw_heads", Hf)):
      if D % n:
        raise ValueError(f"{name}={n} must divide model.hidden={D}")
    if int(c["chunk"]) < 1 or (c["window"] is not None and int(c["window"]) < 1):
      raise ValueError(f"model.lact.chunk={c['chunk']} and window={c['window']} must be >= 1")
    self.layer_idx = layer_idx
    self.hidden, self.heads, self.head_dim = D, H, D // H
    self.fw_heads, self.dk = Hf, D // Hf
    self.dh = int(self.dk * float(c["inter_multi"]))
    self.chunk = int(c["chunk"])
    self.window = None if c["window"] is None else int(c["window"])
    self.theta = float(c["rope_theta"])
    self.impl = c["impl"]
    self.qkv_silu, self.no_v_silu = bool(c["qkv_silu"]), bool(c["no_v_silu"])
    self.use_momentum, self.use_muon = bool(c["use_momentum"]), bool(c["use_muon"])
    self.ttt_nope = bool(c["ttt_nope"])
    self.base_lr_inv = _inv_softplus(float(c["base_lr"]))
    self.low_rank = int(c["w0_w2_low_rank"])
    self.dtype = layers.compute_dtype(cfg.get("dtype", "float32"))
    std, bias = attn.init_std(cfg), bool(c["qkv_bias"])
    mk = lambda i, o, ax, b: attn.dense(i, o, ax, bias=b, std=std, dtype=self.dtype, rngs=rngs)
    self.q_proj = mk(D, D, ("embed", "heads"), bias)
    self.k_proj = mk(D, D, ("embed", "heads"), bias)
    self.v_proj = mk(D, D, ("embed", "heads"), bias)
    self.o_proj = mk(D, D, ("heads", "embed"), False)
    qk_norm = lambda: layers.RMSNorm(D, eps=1e-5, rngs=rngs)  # FLA RMSNorm default eps
    self.q_norm = qk_norm() if c["attn_qk_norm"] else None
    self.k_norm = qk_norm() if c["attn_qk_norm"] else None
    self.lr_proj = mk(D, 3 * Hf, ("embed", None), True)
    self.ttt_scale_proj = mk(D, Hf, ("embed", None), True) if c["learnable_ttt_scale"] else None
    self.momentum_proj = mk(D, Hf, ("embed", None), True) if self.use_momentum else None
    # Per-channel scale/offset making fast q, k from the attention q, k: [:, 0] q, [:, 1] k.
    self.qk_scale = layers.make_param(rngs, nnx.initializers.ones_init(), (D, 2), ("embed", None))
    self.qk_offset = layers.make_param(rngs, nnx.initializers.zeros_init(), (D, 2),
                                       ("embed", None))
    self.ttt_norm = layers.RMSNorm(self.dk, eps=1e-5, rngs=rngs)
    # Slow init of the fast weights (replicated: small, and few heads).
    ax = (None, None, None)
    normal = lambda s: layers.normal_init(s)
    if self.low_rank > 0:
      r, g = self.low_rank, float(c["fw_init_gain"])
      self.w0_left = layers.make_param(rngs, normal(g / math.sqrt(r)), (Hf, self.dh, r), ax)
      self.w0_right = layers.make_param(rngs, normal(g / math.sqrt(self.dk)), (Hf, r, self.dk), ax)
      self.w2_left = layers.make_param(rngs, normal(g / math.sqrt(r)), (Hf, self.dh, r), ax)
      self.w2_right = layers.make_param(rngs, normal(g / math.sqrt(self.dk)), (Hf, r, self.dk), ax)
    else:
      self.w0 = layers.make_param(rngs, normal(1 / math.sqrt(self.dk)), (Hf, self.dh, self.dk), ax)
      self.w2 = layers.make_param(rngs, normal(1 / math.sqrt(self.dk)), (Hf, self.dh, self.dk), ax)
    self.w1 = layers.make_param(rngs, normal(1 / math.sqrt(self.dh)), (Hf, self.dk, self.dh), ax)

  # -- pieces ------------------------------------------------------------------------------

  def init_weights(self):
    """The slow (initial) fast weights {w0, w1, w2}, each [Hf, out, in], float32."""
    if self.low_rank > 0:
      eye = 0.5 * jnp.eye(self.dh, self.dk, dtype=jnp.float32)
      w0 = self.w0_left[...] @ self.w0_right[...] + eye
      w2 = self.w2_left[...] @ self.w2_right[...] + eye
    else:
      w0, w2 = self.w0[...], self.w2[...]
    return dict(w0=w0.astype(jnp.float32), w1=self.w1[...].astype(jnp.float32),
                w2=w2.astype(jnp.float32))

  def _init_state(self, batch: int):
    w = self.init_weights()
    st = {n: jnp.broadcast_to(a, (batch,) + a.shape) for n, a in w.items()}
    if self.use_momentum:
      st.update({"m" + n[1]: jnp.zeros((batch,) + a.shape, jnp.float32) for n, a in w.items()})
    row_norms = {n: _norm(a)[None] for n, a in w.items()}  # [1, Hf, out, 1]
    return st, row_norms

  def _project(self, x_BTD, pos_BT):
    """Attention q/k/v [B,T,H,Dh] (RoPE'd) and fast-weight tokens {q,k,v,lr[,mc]} [B,T,Hf,.]."""
    B, T, D = x_BTD.shape
    q, k, v = self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    s, o = self.qk_scale[...], self.qk_offset[...]
    fq = (q * s[:, 0] + o[:, 0]).reshape(B, T, self.fw_heads, self.dk)
    fk = (k * s[:, 1] + o[:, 1]).reshape(B, T, self.fw_heads, self.dk)
    fv = v.reshape(B, T, self.fw_heads, self.dk)
    if self.qkv_silu:
      fq, fk = jax.nn.silu(fq), jax.nn.silu(fk)
      if not self.no_v_silu:
        fv = jax.nn.silu(fv)
    fq, fk = l2_norm(fq), l2_norm(fk)
    heads = lambda t: t.reshape(B, T, self.heads, self.head_dim)
    if not self.ttt_nope:  # same RoPE as attention, on the attention-head split
      fq = attn.rope(heads(fq), pos_BT, self.theta).reshape(fk.shape)
      fk = attn.rope(heads(fk), pos_BT, self.theta).reshape(fk.shape)
    # Fast q/k/v in the compute dtype (matmul inputs, as LaCT); lrs and weights stay float32.
    lr = jax.nn.softplus(self.lr_proj(x_BTD).astype(jnp.float32) + self.base_lr_inv)
    toks = dict(q=fq.astype(self.dtype), k=fk.astype(self.dtype), v=fv.astype(self.dtype),
                lr=lr.reshape(B, T, self.fw_heads, 3))
    if self.use_momentum:
      toks["mc"] = jax.nn.sigmoid(self.momentum_proj(x_BTD).astype(jnp.float32))
    qa = attn.rope(heads(q), pos_BT, self.theta)
    ka = attn.rope(heads(k), pos_BT, self.theta)
    return qa, ka, heads(v), toks

  def _combine(self, x_BTD, o_BTHD, fw_BTHV):
    B, T, _ = x_BTD.shape
    y = self.ttt_norm(fw_BTHV)
    if self.ttt_scale_proj is not None:
      y = y * jax.nn.silu(self.ttt_scale_proj(x_BTD).astype(jnp.float32))[..., None]
    y = o_BTHD.reshape(B, T, self.hidden).astype(jnp.float32) + y.reshape(B, T, self.hidden)
    return self.o_proj(y.astype(self.dtype))

  # -- contract ----------------------------------------------------------------------------

  def init_cache(self, batch: int, max_len: int) -> dict:
    st, _ = self._init_state(batch)
    C, Hf, d = self.chunk, self.fw_heads, self.dk
    buf = dict(k=jnp.zeros((batch, C, Hf, d), self.dtype),
               v=jnp.zeros((batch, C, Hf, d), self.dtype),
               lr=jnp.zeros((batch, C, Hf, 3), jnp.float32))
    if self.use_momentum:
      buf["mc"] = jnp.zeros((batch, C, Hf), jnp.float32)
    kv = attn.kv_init(batch, max_len, self.window, self.heads, self.head_dim, self.dtype)
    return dict(attn=kv, fw=dict(st), buf=buf)

  def __call__(self, x_BTD, cache=None, *, segment_ids=None, capture: bool = False):
    """segment_ids [B,T] (segments.py; no cache): every document runs as if alone (attention
    mask, RoPE from its start, its own fast-weight chunk grid: fw_scan_docs)."""
    B, T, _ = x_BTD.shape
    if segment_ids is not None:
      if cache is not None:
        raise ValueError("segment_ids is for a full-sequence forward (no cache)")
      return self._call_docs(x_BTD, segment_ids, capture)
    start_B = jnp.zeros((B,), jnp.int32) if cache is None else cache["attn"]["length"]
    pos_BT = start_B[:, None] + jnp.arange(T)[None, :]
    qa, ka, va, toks = self._project(x_BTD, pos_BT)
    C = self.chunk
    if cache is None:
      o = attn.attend(qa, ka, va, window=self.window, impl=self.impl)
      st0, row_norms = self._init_state(B)
      pad = -T % C
      z = jax.tree.map(lambda t: jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2)), toks)
      fw, states = fw_scan(st0, z, C, row_norms, use_muon=self.use_muon)
      captured = None
      if capture:
        upd = {n: t for n, t in toks.items() if n != "q"}
        captured = dict(k=ka, v=va, states=states, toks=upd)
      return self._combine(x_BTD, o, fw[:, :T]), None, captured
    o, kv = attn.kv_attend(qa, ka, va, cache["attn"], window=self.window)
    if T == 1:
      fw, fw_state, buf = self._decode_fw(cache, toks, start_B)
    else:
      fw, fw_state, buf = self._prefill_fw(cache, toks, start_B)
    y = self._combine(x_BTD, o, fw)
    return y, dict(attn=kv, fw=fw_state, buf=buf), None

  def _call_docs(self, x_BTD, segment_ids, capture):
    B, T, _ = x_BTD.shape
    C = self.chunk
    start_BT = segments.doc_start(segment_ids)
    qa, ka, va, toks = self._project(x_BTD, segments.positions(segment_ids))
    o = attn.attend(qa, ka, va, window=self.window, impl=self.impl,
                    doc_BT=segments.doc_index(segment_ids))
    st0, row_norms = self._init_state(B)
    pad = -T % C
    z = jax.tree.map(lambda t: jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2)), toks)
    start_BZ = jnp.pad(start_BT, [(0, 0), (0, pad)], mode="edge")  # padding: the last document
    fw, states = fw_scan_docs(st0, z, C, row_norms, start_BZ, use_muon=self.use_muon)
    captured = None
    if capture:
      upd = {n: t for n, t in toks.items() if n != "q"}
      captured = dict(k=ka, v=va, doc_states=states, toks=upd, doc_start=start_BT)
    return self._combine(x_BTD, o, fw[:, :T]), None, captured

  def _decode_fw(self, cache, toks, n_B):
    """One token: apply the chunk-start weights, append to the buffer, update if it filled."""
    C = self.chunk
    st, buf = cache["fw"], cache["buf"]
    fw = fw_apply(st, toks["q"])
    r_B = jnp.mod(n_B, C)
    b_B = jnp.arange(n_B.shape[0])
    buf = {n: buf[n].at[b_B, r_B].set(toks[n][:, 0].astype(buf[n].dtype)) for n in buf}
    full_B = r_B == C - 1
    _, row_norms = self._init_state(1)
    new = jax.lax.cond(jnp.any(full_B),
                       lambda: fw_step(st, buf, row_norms, use_muon=self.use_muon),
                       lambda: dict(st))
    sel = lambda a, b: jnp.where(full_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
    st = jax.tree.map(sel, new, st)
    buf = jax.tree.map(lambda b: sel(jnp.zeros_like(b), b), buf)
    return fw, st, buf

  def _prefill_fw(self, cache, toks, n_B):
    """T > 1 tokens after a cache: per row, stream = [partial buffer ; new tokens] and run the
    chunked scan from the chunk-start weights (rows may sit at different offsets)."""
    C = self.chunk
    B, T = toks["q"].shape[:2]
    r_B = jnp.mod(n_B, C)
    Z = -(-(C + T) // C) * C
    j_Z = jnp.arange(Z)[None]
    from_buf = j_Z < r_B[:, None]
    b_B1 = jnp.arange(B)[:, None]
    q_buf = jnp.zeros_like(cache["buf"]["k"])  # buffered tokens' outputs are discarded

    def stream(bt, nt):
      cat = jnp.concatenate([bt, nt.astype(bt.dtype)], axis=1)
      idx = jnp.where(from_buf, j_Z, C + j_Z - r_B[:, None])
      g = cat[b_B1, jnp.clip(idx, 0, C + T - 1)]
      ok = idx < C + T
      return jnp.where(ok.reshape(ok.shape + (1,) * (g.ndim - 2)), g, 0)

    z = {n: stream(q_buf if n == "q" else cache["buf"][n], toks[n]) for n in toks}
    _, row_norms = self._init_state(1)
    o_z, states = fw_scan(cache["fw"], z, C, row_norms, use_muon=self.use_muon)
    fw = o_z[b_B1, r_B[:, None] + jnp.arange(T)[None]]
    upd = {n: t for n, t in z.items() if n != "q"}
    st, buf = state_at(states, upd, r_B + T, jnp.arange(B), C)
    return fw, st, buf

  def cache_at(self, captured: dict, positions_Bn, max_len: int) -> dict:
    """Cache after tokens[b, :positions[b, i] + 1] (row b*n + i); of a packed capture, the
    cache of the position's document alone (its weights, partial chunk, window and RoPE
    positions counted from its start)."""
    B, n = positions_Bn.shape
    count_R = (positions_Bn + 1).reshape(B * n).astype(jnp.int32)
    src_R = jnp.repeat(jnp.arange(B), n)
    if "doc_start" in captured:
      s_R = segments.start_at(captured["doc_start"], positions_Bn)
      st0, _ = self._init_state(B * n)
      st, buf = doc_state_at(captured["doc_states"], st0,
                             captured["toks"], count_R - 1, s_R, src_R, self.chunk)
    else:
      st, buf = state_at(captured["states"], captured["toks"], count_R, src_R, self.chunk)
    kv = attn.kv_cache_at(captured["k"], captured["v"], positions_Bn, max_len, self.window,
                          captured.get("doc_start"))
    return dict(attn=kv, fw=st, buf=buf)
