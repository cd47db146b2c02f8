"""DeltaNet and Gated DeltaNet token mixers, matching FLA's `fla/layers/{delta_net,gated_deltanet}.py`.

Per token (per head, state S is [K, V]):
  q, k, v = act(conv(Linear(x)))           short causal depthwise conv (size 4), SiLU
  q, k    = l2norm(q), l2norm(k)           eps inside the root
  beta    = sigmoid(b_proj(x)) (x2 with allow_neg_eigval)
  GDN:  g = -exp(A_log) * softplus(a_proj(x) + dt_bias);  S <- exp(g) S
  S <- S + beta k (v - S^T k)^T ;  o = S^T (q * K^-0.5)
  out = o_proj(RMSNorm_heads(o) [* silu(g_proj(x))])

Parameter names are FLA's state-dict keys (see layers.py for the transposes). FLA keeps the GDN
recurrent state as [B, HV, V, K]; ours is [B, HV, K, V] for both mixers.

Cache (a dict pytree): state [B, HV, K, V] float32, conv (q, k, v) each [B, W, C] (the last W
pre-conv inputs; () without short conv), pos [B] int32 (tokens consumed).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import pallas_kernels
from refine_jax.models import layers, segments
from refine_jax.models.config import delta_dims


def _dt_bias_init(key, shape, dtype=jnp.float32):
  """softplus^-1(dt), dt log-uniform in [1e-3, 0.1] floored at 1e-4 (FLA / Mamba2)."""
  lo, hi = jnp.log(1e-3), jnp.log(0.1)
  dt = jnp.exp(jax.random.uniform(key, shape) * (hi - lo) + lo)
  dt = jnp.maximum(dt, 1e-4)
  return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


def _a_log_init(key, shape, dtype=jnp.float32):
  """A_log = log(A), A ~ U(0, 16)."""
  return jnp.log(jax.random.uniform(key, shape, minval=0.0, maxval=16.0)).astype(dtype)


class DeltaNet(nnx.Module):
  """FLA `DeltaNet` layer (gated=False) / `GatedDeltaNet` layer (gated=True)."""

  gated = False
  # A T-token call from a cache (the chunked path from the cache's state) costs about what T
  # decode steps do, and its backward keeps the cache once instead of once per token.
  multi_token_decode = True

  def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
    gated = self.gated
    self.layer_idx = layer_idx
    self.dims = d = delta_dims(cfg, gated)
    self.dtype = layers.compute_dtype(cfg.dtype)
    self.chunk_size = cfg.chunk_size
    self.backend = cfg.backend
    self.conv_size = cfg.conv_size
    self.use_short_conv = cfg.use_short_conv
    # FLA's GatedDeltaNet hard-wires silu + l2 + beta; DeltaNet makes them options.
    self.qk_activation = "silu" if gated else cfg.qk_activation
    self.qk_norm = "l2" if gated else cfg.qk_norm
    self.use_beta = True if gated else cfg.use_beta
    self.allow_neg_eigval = cfg.allow_neg_eigval
    self.use_gate = gated if cfg.use_gate is None else cfg.use_gate
    std, D, dt = cfg.initializer_range, cfg.hidden, self.dtype

    self.q_proj = layers.linear(D, d.key_dim, ("embed", "heads"), std=std, dtype=dt, rngs=rngs)
    self.k_proj = layers.linear(D, d.key_dim, ("embed", "heads"), std=std, dtype=dt, rngs=rngs)
    self.v_proj = layers.linear(D, d.value_dim, ("embed", "heads"), std=std, dtype=dt, rngs=rngs)
    if gated:
      self.a_proj = layers.linear(D, d.v_heads, ("embed", None), std=std, dtype=dt, rngs=rngs)
      self.A_log = layers.make_param(rngs, _a_log_init, (d.v_heads,), (None,))
      self.dt_bias = layers.make_param(rngs, _dt_bias_init, (d.v_heads,), (None,))
    if self.use_beta:
      self.b_proj = layers.linear(D, d.v_heads, ("embed", None), std=std, dtype=dt, rngs=rngs)
    if self.use_short_conv:
      qk_act = "silu" if self.qk_activation == "silu" else None
      conv = lambda c, act: layers.ShortConv(c, cfg.conv_size, activation=act, std=std, rngs=rngs)
      self.q_conv1d = conv(d.key_dim, qk_act)
      self.k_conv1d = conv(d.key_dim, qk_act)
      self.v_conv1d = conv(d.value_dim, "silu")
    if self.use_gate:
      self.g_proj = layers.linear(D, d.value_dim, ("embed", "heads"), std=std, dtype=dt,
                                  rngs=rngs)
      self.o_norm = layers.GatedRMSNorm(d.head_v_dim, eps=cfg.norm_eps, rngs=rngs)
    else:
      self.o_norm = layers.RMSNorm(d.head_v_dim, eps=cfg.norm_eps, out_dtype=jnp.float32,
                                   rngs=rngs)
    self.o_proj = layers.linear(d.value_dim, D, ("heads", "embed"), std=std, dtype=dt, rngs=rngs)

  # ---- pieces shared by the forward pass and the cache.

  def _features(self, x_BTD, conv_cache, doc_BT=None):
    """q, k [B,T,HV,K] (repeated to value heads), v [B,T,HV,V], beta/g [B,T,HV] f32.

    doc_BT (segments.doc_index): the short convs read only same-document inputs."""
    B, T, _ = x_BTD.shape
    d = self.dims
    qp, kp, vp = self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)
    if self.use_short_conv:
      cq, ck, cv = conv_cache if conv_cache else (None, None, None)
      q, cq = self.q_conv1d(qp, cq, doc_BT)
      k, ck = self.k_conv1d(kp, ck, doc_BT)
      v, cv = self.v_conv1d(vp, cv, doc_BT)
      new_conv = (cq, ck, cv)
    else:
      act = jax.nn.silu if self.qk_activation == "silu" else (lambda a: a)
      q, k, v = act(qp), act(kp), jax.nn.silu(vp)
      new_conv = ()
    q = q.reshape(B, T, d.heads, d.head_k_dim)
    k = k.reshape(B, T, d.heads, d.head_k_dim)
    v = v.reshape(B, T, d.v_heads, d.head_v_dim)
    if self.qk_activation == "relu":
      q, k = jax.nn.relu(q), jax.nn.relu(k)
    elif self.qk_activation == "elu":
      q, k = jax.nn.elu(q) + 1.0, jax.nn.elu(k) + 1.0
    if self.qk_norm == "l2":
      q, k = layers.l2_normalize(q), layers.l2_normalize(k)
    else:  # "sum"
      q = q / jnp.sum(q, axis=-1, keepdims=True)
      k = k / jnp.sum(k, axis=-1, keepdims=True)
    if self.use_beta:
      beta = jax.nn.sigmoid(self.b_proj(x_BTD).astype(jnp.float32))
    else:
      beta = jnp.ones((B, T, d.v_heads), jnp.float32)
    if self.allow_neg_eigval:
      beta = beta * 2.0
    g = None
    if self.gated:
      a = self.a_proj(x_BTD).astype(jnp.float32) + self.dt_bias[...]
      g = -jnp.exp(self.A_log[...]) * jax.nn.softplus(a)
    if d.v_heads > d.heads:  # GVA: value head j reads q/k head j // ratio
      r = d.v_heads // d.heads
      q, k = jnp.repeat(q, r, axis=2), jnp.repeat(k, r, axis=2)
    return (q, k, v, beta, g), (qp, kp, vp), new_conv

  def _output(self, x_BTD, o_BTHV):
    B, T = x_BTD.shape[:2]
    d = self.dims
    if self.use_gate:
      gate = self.g_proj(x_BTD).reshape(B, T, d.v_heads, d.head_v_dim)
      o = self.o_norm(o_BTHV.astype(jnp.float32), gate)
    else:
      o = self.o_norm(o_BTHV.astype(jnp.float32))
    return self.o_proj(o.reshape(B, T, d.value_dim).astype(self.dtype))

  # ---- mixer contract.

  def __call__(self, x_BTD, cache=None, *, segment_ids=None, capture=False, capture_at=None,
               capture_stride=None):
    """Returns (y [B,T,D], new cache or None, captured or None).

    segment_ids [B,T] (segments.py): the state resets to zero and the convs forget at each
    document start, so every document runs as if alone.
    capture_at [B, n] positions (with capture=True): keep only what cache_at needs for them
    (`_gather_at`: one boundary state, one chunk of k/v/beta/g and a conv window per position)
    instead of every chunk's state and the whole sequence's inputs.
    capture_stride S (with capture=True, no capture_at): keep the state of every S-th chunk
    boundary and this mixer's input x (in the compute dtype, which is all its projections
    read); cache_at recomputes the features of the S-chunk window holding a position.
    """
    if capture and cache is not None:
      raise ValueError("capture=True needs a full-sequence forward without a cache")
    T = x_BTD.shape[1]
    doc = None if segment_ids is None else segments.doc_index(segment_ids)
    (q, k, v, beta, g), pre_conv, new_conv = self._features(
        x_BTD, None if cache is None else cache["conv"], doc)
    # One entry for every path (pallas_kernels.ops: decode steps take the fused kernel).
    seg_kw = {} if segment_ids is None else dict(segment_ids=doc)
    o, S, chunk_states = pallas_kernels.delta_rule_scan(
        q, k, v, beta, g, initial_state=None if cache is None else cache["state"],
        chunk_size=self.chunk_size, backend=self.backend, return_chunk_states=capture,
        **seg_kw)
    captured = None
    if capture and capture_stride and capture_at is None:
      captured = self._strided(x_BTD, chunk_states, segment_ids, int(capture_stride))
    elif capture:
      captured = dict(chunk_states=chunk_states, k=k, v=v, beta=beta, g=g, pre_conv=pre_conv)
      if segment_ids is not None:
        captured["doc_start"] = segments.doc_start(segment_ids)
      if capture_at is not None:
        captured = self._gather_at(captured, capture_at)
    y = self._output(x_BTD, o)
    new_cache = None
    if cache is not None:
      new_cache = dict(state=S.astype(jnp.float32), conv=new_conv, pos=cache["pos"] + T)
    return y, new_cache, captured

  def init_cache(self, batch: int, max_len: int):
    del max_len  # fixed-size state
    d = self.dims
    conv = ()
    if self.use_short_conv:
      W = self.conv_size
      conv = (jnp.zeros((batch, W, d.key_dim), self.dtype),
              jnp.zeros((batch, W, d.key_dim), self.dtype),
              jnp.zeros((batch, W, d.value_dim), self.dtype))
    return dict(state=jnp.zeros((batch, d.v_heads, d.head_k_dim, d.head_v_dim), jnp.float32),
                conv=conv, pos=jnp.zeros((batch,), jnp.int32))

  def cache_at(self, captured, positions_Bn, max_len: int):
    """Cache after tokens[b, :positions[b, i] + 1], row b*n + i, from one captured pass.

    State: the boundary state of the chunk holding the position, advanced through the chunk's
    tokens up to the position (masked advance, L = chunk_size). Conv: the last W pre-conv
    inputs sliced from the same pass. Differentiable in everything captured.
    Packed documents (captured with segment_ids): the position's document only, as if it ran
    alone: a zero boundary state when the document starts inside (or at) the chunk, the
    chunk's earlier-document tokens masked out, earlier-document conv inputs zero, pos counted
    from the document start.
    A capture made with capture_at=positions already holds those positions' pieces (it serves
    those positions only); a full capture is gathered here. Either way the same arithmetic.
    """
    del max_len
    if "at" in captured:
      at = captured
    elif "x" in captured:
      at = self._window_at(captured, positions_Bn)
    else:
      at = self._gather_at(captured, positions_Bn)
    return self._advance(at)

  def _strided(self, x_BTD, chunk_states, segment_ids, stride):
    """A strided capture: states [B, ceil(N/S), HV, K, V] (every S-th chunk boundary), x
    [B, T, D] in the compute dtype, window [S*C] (the offsets of a recompute window; its
    length is how cache_at knows S) and, for packed rows, doc_start."""
    cap = dict(states=chunk_states[:, ::stride], x=x_BTD.astype(self.dtype),
               window=jnp.arange(stride * self.chunk_size, dtype=jnp.int32))
    if segment_ids is not None:
      cap["doc_start"] = segments.doc_start(segment_ids)
    return cap

  def _window_at(self, captured, positions_Bn):
    """`_gather_at`'s pieces from a strided capture: per position, the kept state at the start
    a of its window of L = S*C tokens, and the window's k/v/beta/g and conv inputs recomputed
    from the kept x (with the W-1 inputs before a, so the convs see their history). The
    arithmetic of the features is the forward's; only the batch of tokens differs."""
    B, n = positions_Bn.shape
    L = captured["window"].shape[-1]
    W = self.conv_size if self.use_short_conv else 1
    x = captured["x"]
    T = x.shape[1]
    p = positions_Bn.reshape(-1).astype(jnp.int32)            # [Bn]
    b = jnp.repeat(jnp.arange(B), n)[:, None]
    w = p // L
    idx = w[:, None] * L - (W - 1) + jnp.arange(L + W - 1)[None, :]   # tokens a-W+1 .. a+L-1
    inside = (idx >= 0) & (idx < T)
    src = jnp.clip(idx, 0, T - 1)
    xw = jnp.where(inside[..., None], x[b, src], 0)           # zeros: no input (as padding)
    doc = None
    if "doc_start" in captured:                                # a document id per token
      doc = jnp.where(inside, captured["doc_start"][b, src], -1)
    (_, k, v, beta, g), pre_conv, _ = self._features(xw, None, doc)
    cut = lambda a: None if a is None else a[:, W - 1:]
    at = dict(at=p, S0=captured["states"][b[:, 0], w], k=cut(k), v=cut(v), beta=cut(beta),
              g=cut(g), conv=())
    if self.use_short_conv:
      j = (p - w * L)[:, None] + jnp.arange(W)[None, :]       # window index of u[p-W+1..p]
      at["conv"] = tuple(u[jnp.arange(u.shape[0])[:, None], j] for u in pre_conv)
    if "doc_start" in captured:
      at["s"] = segments.start_at(captured["doc_start"], positions_Bn)
    return at

  def _gather_at(self, captured, positions_Bn):
    """The pieces of a full capture that cache_at reads for positions [B, n] (row b*n + i):
    at (the positions [Bn]), S0 (the boundary state of each one's chunk), the chunk's k, v,
    beta, g [Bn, C, ...], the conv inputs' padded windows [Bn, W, ...] and, for a packed
    capture, each position's document start s [Bn]. Pure gathers (exact)."""
    B, n = positions_Bn.shape
    C = self.chunk_size
    p = positions_Bn.reshape(-1).astype(jnp.int32)            # [Bn]
    b = jnp.repeat(jnp.arange(B), n)                           # sequence of each row
    cs = captured["chunk_states"]                              # [B, N, HV, K, V]
    N = cs.shape[1]
    c = p // C

    def chunk_of(a):  # [B, T, ...] -> the C tokens of chunk c[row]: [Bn, C, ...]
      T = a.shape[1]
      a = jnp.pad(a, [(0, 0), (0, N * C - T)] + [(0, 0)] * (a.ndim - 2))
      return a.reshape((B, N, C) + a.shape[2:])[b, c]

    g = captured["g"]
    at = dict(at=p, S0=cs[b, c], k=chunk_of(captured["k"]), v=chunk_of(captured["v"]),
              beta=chunk_of(captured["beta"]), g=None if g is None else chunk_of(g), conv=())
    if self.use_short_conv:
      W = self.conv_size
      idx = p[:, None] + jnp.arange(W)[None, :]                 # padded index of u[p-W+1..p]
      at["conv"] = tuple(jnp.pad(u, ((0, 0), (W - 1, 0), (0, 0)))[b[:, None], idx]
                         for u in captured["pre_conv"])
    if "doc_start" in captured:
      at["s"] = segments.start_at(captured["doc_start"], positions_Bn)   # document start [Bn]
    return at

  def _advance(self, at):
    """cache_at's arithmetic on gathered pieces (`_gather_at`, `_window_at`): the window of L
    tokens (one chunk, or S chunks of a strided capture) that starts at a multiple of L."""
    C = self.chunk_size
    p = at["at"]
    L = at["k"].shape[1]
    a = p // L * L
    j_L = jnp.arange(L)[None, :]
    seg = "s" in at
    s = at["s"] if seg else jnp.zeros_like(p)
    S0 = at["S0"]
    mask = j_L <= (p - a)[:, None]
    if seg:
      S0 = jnp.where((s >= a)[:, None, None, None], 0.0, S0)
      mask &= j_L >= (s - a)[:, None]
    mask = mask.astype(jnp.float32)
    S = pallas_kernels.advance_state(S0, at["k"], at["v"], at["beta"], at["g"], mask,
                                     chunk_size=C, backend=self.backend)
    conv = at["conv"]
    if self.use_short_conv and seg:  # padded index idx is position idx - (W - 1)
      W = self.conv_size
      idx = p[:, None] + jnp.arange(W)[None, :]
      keep = (idx - (W - 1) >= s[:, None])[..., None]
      conv = tuple(jnp.where(keep, u, 0) for u in conv)
    return dict(state=S.astype(jnp.float32), conv=conv, pos=p + 1 - s)


class GatedDeltaNet(DeltaNet):
  """FLA `GatedDeltaNet` layer: decay gate, GVA value heads, swish-gated output norm."""

  gated = True
