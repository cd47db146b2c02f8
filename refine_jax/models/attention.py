"""Softmax attention mixer (Transformer baseline): RoPE, causal, optional GQA and sliding window.

Cache: a ring buffer of L = min(window, max_len) slots (L = max_len for full attention) holding
post-RoPE keys and values, plus `length` [B] = tokens seen so far. Token at position p lives in
slot p % L, so slot s holds position `length-1 - ((length-1-s) mod L)` (invalid if < 0). Rows of
one batch may sit at different lengths (cache_at makes such caches). With full attention more
than max_len tokens wrap around (the model then sees only recent tokens): size max_len
for the longest sequence the cache will hold.

The functions below (rope, kv_*) are reused by the LaCT mixer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from refine_jax.config import ATTENTION_DEFAULTS
from refine_jax.models import layers, segments


def sub_config(cfg, name: str, defaults: dict) -> dict:
  """cfg.<name> merged over `defaults`; unknown fields are an error (typos stay loud)."""
  given = dict(cfg[name])
  unknown = set(given) - set(defaults)
  if unknown:
    raise ValueError(f"model.{name} has unknown fields {sorted(unknown)}; "
                     f"known: {sorted(defaults)}")
  return {**defaults, **given}


def dense(d_in, d_out, axes, *, bias: bool, std: float, dtype, rngs) -> nnx.Linear:
  """Linear with N(0, std) kernel and optional zero bias, both with logical axes."""
  return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=layers.partitioned(layers.normal_init(std), axes),
                    bias_init=layers.partitioned(nnx.initializers.zeros_init(), axes[-1:]),
                    rngs=rngs)


# ----------------------------------------------------------------------------- RoPE

def rope(x_BTHD, pos_BT, theta: float):
  """Rotary embedding, half-split layout (GPT-NeoX / FLA RotaryEmbedding, interleaved=False)."""
  D = x_BTHD.shape[-1]
  if D % 2:
    raise ValueError(f"RoPE needs an even head_dim, got {D}")
  inv_freq = theta ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)          # [D/2]
  ang_BT1F = (pos_BT.astype(jnp.float32)[..., None] * inv_freq)[:, :, None, :]
  cos, sin = jnp.cos(ang_BT1F), jnp.sin(ang_BT1F)
  x = x_BTHD.astype(jnp.float32)
  x1, x2 = x[..., : D // 2], x[..., D // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTHD.dtype)


# ----------------------------------------------------------------------------- KV ring buffer

def kv_slots(max_len: int, window: int | None) -> int:
  return max_len if window is None else min(window, max_len)


def kv_init(batch: int, max_len: int, window, kv_heads: int, head_dim: int, dtype) -> dict:
  L = kv_slots(max_len, window)
  return dict(k=jnp.zeros((batch, L, kv_heads, head_dim), dtype),
              v=jnp.zeros((batch, L, kv_heads, head_dim), dtype),
              length=jnp.zeros((batch,), jnp.int32))


def slot_positions(length_B, L: int):
  """Absolute position held by each slot [B, L] (negative = empty)."""
  last = length_B[:, None] - 1
  return last - jnp.mod(last - jnp.arange(L)[None, :], L)


def _window_mask(q_pos, k_pos, window):
  ok = (k_pos <= q_pos) & (k_pos >= 0)
  if window is not None:
    ok &= q_pos - k_pos < window
  return ok


def attend(q_BTHD, k_BSKD, v_BSKD, *, window, impl=None, doc_BT=None):
  """Causal (optionally windowed) attention of a whole sequence, no cache.

  A window much shorter than the sequence takes the blocked path (memory and FLOPs ~ T * 2W
  instead of T^2) unless a fused implementation ("cudnn") is asked for. doc_BT
  (segments.doc_index): a query sees only keys of its own document.
  """
  T = q_BTHD.shape[1]
  if window is not None and T > 2 * window and impl in (None, "xla"):
    return _blocked_local_attention(q_BTHD, k_BSKD, v_BSKD, window, doc_BT)
  local = None if window is None else (window - 1, 0)
  mask = None if doc_BT is None else (doc_BT[:, :, None] == doc_BT[:, None, :])[:, None]
  return jax.nn.dot_product_attention(q_BTHD, k_BSKD, v_BSKD, mask=mask, is_causal=True,
                                      local_window_size=local, implementation=impl)


def _blocked_local_attention(q_BTHD, k_BTKD, v_BTKD, W: int, doc_BT=None):
  """Sliding-window attention in query blocks of W: block i sees key blocks i-1 and i
  (and, given doc_BT, only keys of the query's document)."""
  B, T, H, D = q_BTHD.shape
  K = k_BTKD.shape[2]
  nb = -(-T // W)
  pad = lambda t: jnp.pad(t, [(0, 0), (0, nb * W - T), (0, 0), (0, 0)])
  blocks = lambda t: pad(t).reshape(B, nb, W, t.shape[2], D)
  q = blocks(q_BTHD).reshape(B, nb, W, K, H // K, D)
  prev = lambda t: jnp.pad(t, [(0, 0), (1, 0)] + [(0, 0)] * 3)[:, :-1]   # block i-1 (zeros for 0)
  kb, vb = blocks(k_BTKD), blocks(v_BTKD)
  k2 = jnp.concatenate([prev(kb), kb], axis=2)                          # [B,nb,2W,K,D]
  v2 = jnp.concatenate([prev(vb), vb], axis=2)
  logits = jnp.einsum("bnqkgd,bnskd->bnkgqs", q, k2, preferred_element_type=jnp.float32)
  logits = logits * (D ** -0.5)
  qp = jnp.arange(W)[:, None] + W                                       # in-pair positions
  kp = jnp.arange(2 * W)[None, :]
  ok = (kp <= qp) & (qp - kp < W)
  first = jnp.arange(nb)[:, None, None] == 0
  ok_NQS = ok[None] & ~(first & (kp < W)[None])                         # no block -1
  if doc_BT is None:
    logits = jnp.where(ok_NQS[None, :, None, None], logits, -1e30)
  else:
    db = jnp.pad(doc_BT, [(0, 0), (0, nb * W - T)], mode="edge").reshape(B, nb, W)
    dk = jnp.concatenate([jnp.pad(db, [(0, 0), (1, 0), (0, 0)])[:, :-1], db], axis=2)
    ok_BNQS = ok_NQS[None] & (db[:, :, :, None] == dk[:, :, None, :])
    logits = jnp.where(ok_BNQS[:, :, None, None], logits, -1e30)
  probs = jax.nn.softmax(logits, axis=-1).astype(v2.dtype)
  o = jnp.einsum("bnkgqs,bnskd->bnqkgd", probs, v2)
  return o.reshape(B, nb * W, H, D)[:, :T]


def kv_attend(q_BTHD, k_BTKD, v_BTKD, cache: dict, *, window):
  """Attention of T new tokens that continue `cache`; returns (o [B,T,H,D], new cache).

  Keys are [cache slots ; new tokens], masked by absolute position, so rows at different
  lengths and multi-token prefills share one code path.
  """
  B, T = q_BTHD.shape[:2]
  L = cache["k"].shape[1]
  n_B = cache["length"]
  q_pos = n_B[:, None] + jnp.arange(T)[None, :]                               # [B,T]
  k_pos = jnp.concatenate([slot_positions(n_B, L), q_pos], axis=1)           # [B,L+T]
  mask_BTS = _window_mask(q_pos[:, :, None], k_pos[:, None, :], window)
  k_all = jnp.concatenate([cache["k"].astype(k_BTKD.dtype), k_BTKD], axis=1)
  v_all = jnp.concatenate([cache["v"].astype(v_BTKD.dtype), v_BTKD], axis=1)
  o = jax.nn.dot_product_attention(q_BTHD, k_all, v_all, mask=mask_BTS[:, None])
  # Write the last min(T, L) new tokens (older ones would be overwritten anyway).
  Tw = min(T, L)
  slot_BT = jnp.mod(q_pos[:, T - Tw:], L)
  b_B1 = jnp.arange(B)[:, None]
  new = dict(k=cache["k"].at[b_B1, slot_BT].set(k_BTKD[:, T - Tw:].astype(cache["k"].dtype)),
             v=cache["v"].at[b_B1, slot_BT].set(v_BTKD[:, T - Tw:].astype(cache["v"].dtype)),
             length=n_B + T)
  return o, new


def kv_cache_at(k_BTKD, v_BTKD, positions_Bn, max_len: int, window, doc_start_BT=None) -> dict:
  """Ring buffer after tokens[:p+1] for every p in positions_Bn, gathered from full-sequence
  keys/values; batch B*n, row b*n+i <- (b, positions[b, i]).

  doc_start_BT (segments.doc_start of a packed row, whose keys were RoPE'd from each
  document's start): the buffer of the position's document alone (length and slots counted
  from the document start, no earlier-document keys)."""
  B, n = positions_Bn.shape
  L = kv_slots(max_len, window)
  s_R = segments.start_at(doc_start_BT, positions_Bn)
  length = (positions_Bn + 1).reshape(B * n).astype(jnp.int32) - s_R
  src_RL = slot_positions(length, L)                                          # [B*n, L]
  valid = (src_RL >= 0)[:, :, None, None]
  row_b = jnp.repeat(jnp.arange(B), n)[:, None]
  idx = jnp.clip(src_RL + s_R[:, None], 0, k_BTKD.shape[1] - 1)
  k = jnp.where(valid, k_BTKD[row_b, idx], 0)
  v = jnp.where(valid, v_BTKD[row_b, idx], 0)
  return dict(k=k, v=v, length=length)


# ----------------------------------------------------------------------------- the mixer

class Attention(nnx.Module):
  """Multi-head (GQA) causal softmax attention with RoPE; projections q/k/v/o_proj."""

  multi_token_decode = True   # T new tokens from a KV cache: one masked attention call

  def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
    a = sub_config(cfg, "attention", ATTENTION_DEFAULTS)
    D, H = int(cfg.hidden), int(cfg.heads)
    K = int(a["num_kv_heads"] or H)
    if H % K:
      raise ValueError(f"model.attention.num_kv_heads={K} must divide model.heads={H}")
    Dh = int(a["head_dim"] or D // H)
    if a["window"] is not None and int(a["window"]) < 1:
      raise ValueError(f"model.attention.window={a['window']} must be >= 1 or None")
    self.layer_idx = layer_idx
    self.heads, self.kv_heads, self.head_dim = H, K, Dh
    self.window = None if a["window"] is None else int(a["window"])
    self.theta = float(a["rope_theta"])
    self.impl = a["impl"]
    self.dtype = layers.compute_dtype(cfg.dtype)
    std, bias = float(cfg.initializer_range), bool(a["qkv_bias"])
    mk = lambda i, o, ax, b: dense(i, o, ax, bias=b, std=std, dtype=self.dtype, rngs=rngs)
    self.q_proj = mk(D, H * Dh, ("embed", "heads"), bias)
    self.k_proj = mk(D, K * Dh, ("embed", "kv_heads"), bias)
    self.v_proj = mk(D, K * Dh, ("embed", "kv_heads"), bias)
    self.o_proj = mk(H * Dh, D, ("heads", "embed"), False)

  def init_cache(self, batch: int, max_len: int) -> dict:
    return kv_init(batch, max_len, self.window, self.kv_heads, self.head_dim, self.dtype)

  def __call__(self, x_BTD, cache=None, *, segment_ids=None, capture: bool = False,
               capture_at=None, capture_stride=None):
    """segment_ids [B,T] (segments.py; no cache): queries see only their document's keys and
    RoPE positions restart at each document start, so a document scores as if alone."""
    B, T, _ = x_BTD.shape
    if segment_ids is not None and cache is not None:
      raise ValueError("segment_ids is for a full-sequence forward (no cache)")
    q = self.q_proj(x_BTD).reshape(B, T, self.heads, self.head_dim)
    k = self.k_proj(x_BTD).reshape(B, T, self.kv_heads, self.head_dim)
    v = self.v_proj(x_BTD).reshape(B, T, self.kv_heads, self.head_dim)
    start_B = jnp.zeros((B,), jnp.int32) if cache is None else cache["length"]
    pos_BT = start_B[:, None] + jnp.arange(T)[None, :]
    doc = None
    if segment_ids is not None:
      pos_BT, doc = segments.positions(segment_ids), segments.doc_index(segment_ids)
    q, k = rope(q, pos_BT, self.theta), rope(k, pos_BT, self.theta)
    if cache is None:
      o = attend(q, k, v, window=self.window, impl=self.impl, doc_BT=doc)
    else:
      o, cache = kv_attend(q, k, v, cache, window=self.window)
    y = self.o_proj(o.reshape(B, T, self.heads * self.head_dim))
    captured = None
    if capture and cache is None:
      captured = dict(k=k, v=v)
      if segment_ids is not None:
        captured["doc_start"] = segments.doc_start(segment_ids)
    return y, cache, captured

  def cache_at(self, captured: dict, positions_Bn, max_len: int) -> dict:
    return kv_cache_at(captured["k"], captured["v"], positions_Bn, max_len, self.window,
                       captured.get("doc_start"))
