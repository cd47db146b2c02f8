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
  each document's fast weights on its own chunk grid from its start (fast_weights.fw_scan_docs), so every
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

from refine_jax.config import LACT_DEFAULTS
from refine_jax.models import attention as attn
from refine_jax.models import fast_weights as fw_lib
from refine_jax.models import layers, segments

def _inv_softplus(y: float) -> float:
  return y + math.log(-math.expm1(-y))


class LaCT(nnx.Module):
  """LaCT SwiGLU layer: sliding-window attention + chunked fast-weight SwiGLU."""

  # A T-token call from a cache re-runs the cached partial chunk with the new tokens (a whole
  # `chunk`-token stream per row): decode token by token instead.
  multi_token_decode = False

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
    self.dtype = layers.compute_dtype(cfg.dtype)
    std, bias = float(cfg.initializer_range), bool(c["qkv_bias"])
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
    row_norms = {n: fw_lib.row_norm(a)[None] for n, a in w.items()}  # [1, Hf, out, 1]
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
    fq, fk = fw_lib.l2_norm(fq), fw_lib.l2_norm(fk)
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

  def __call__(self, x_BTD, cache=None, *, segment_ids=None, capture: bool = False,
               capture_at=None, capture_stride=None):
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
      fw, states = fw_lib.fw_scan(st0, z, C, row_norms, use_muon=self.use_muon)
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
    fw, states = fw_lib.fw_scan_docs(st0, z, C, row_norms, start_BZ, use_muon=self.use_muon)
    captured = None
    if capture:
      upd = {n: t for n, t in toks.items() if n != "q"}
      captured = dict(k=ka, v=va, doc_states=states, toks=upd, doc_start=start_BT)
    return self._combine(x_BTD, o, fw[:, :T]), None, captured

  def _decode_fw(self, cache, toks, n_B):
    """One token: apply the chunk-start weights, append to the buffer, update if it filled."""
    C = self.chunk
    st, buf = cache["fw"], cache["buf"]
    fw = fw_lib.fw_apply(st, toks["q"])
    r_B = jnp.mod(n_B, C)
    b_B = jnp.arange(n_B.shape[0])
    buf = {n: buf[n].at[b_B, r_B].set(toks[n][:, 0].astype(buf[n].dtype)) for n in buf}
    full_B = r_B == C - 1
    _, row_norms = self._init_state(1)
    new = jax.lax.cond(jnp.any(full_B),
                       lambda: fw_lib.fw_step(st, buf, row_norms, use_muon=self.use_muon),
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
    o_z, states = fw_lib.fw_scan(cache["fw"], z, C, row_norms, use_muon=self.use_muon)
    fw = o_z[b_B1, r_B[:, None] + jnp.arange(T)[None]]
    upd = {n: t for n, t in z.items() if n != "q"}
    st, buf = fw_lib.state_at(states, upd, r_B + T, jnp.arange(B), C)
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
      st, buf = fw_lib.doc_state_at(captured["doc_states"], st0,
                             captured["toks"], count_R - 1, s_R, src_R, self.chunk)
    else:
      st, buf = fw_lib.state_at(captured["states"], captured["toks"], count_R, src_R, self.chunk)
    kv = attn.kv_cache_at(captured["k"], captured["v"], positions_Bn, max_len, self.window,
                          captured.get("doc_start"))
    return dict(attn=kv, fw=st, buf=buf)
