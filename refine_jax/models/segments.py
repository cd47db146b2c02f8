"""Documents packed into one row: `segment_ids` [B, T] int32 (data/pipeline.py: 1, 2, ... per
document piece, 0 = padding). A new document starts at every token whose id differs from the
previous token's (the row's first token starts the first one), so ids may repeat in a row
(1, 1, 2, 2, 1 is three documents) and padding is one more document. Every mixer resets there:
a document's logits equal those of the document run alone.

Mixers read the normalised forms below: `doc_index` (0, 1, 2, ... per document, so "same
document" is equality) and `doc_start` (the position where each token's document starts, so
its position inside the document is t - start).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def starts(segment_ids_BT):
  """[B, T] bool: the token starts a document (its id differs from the previous token's;
  the row's first token is not marked: it continues whatever state the mixer starts from)."""
  s = jnp.asarray(segment_ids_BT)
  first = jnp.zeros_like(s[:, :1], dtype=bool)
  return jnp.concatenate([first, s[:, 1:] != s[:, :-1]], axis=1)


def doc_index(segment_ids_BT):
  """[B, T] int32: 0 for the row's first document, +1 at every document start."""
  return jnp.cumsum(starts(segment_ids_BT), axis=1, dtype=jnp.int32)


def doc_start(segment_ids_BT):
  """[B, T] int32: the position where each token's document starts."""
  st = starts(segment_ids_BT)
  t = jnp.arange(st.shape[1], dtype=jnp.int32)[None, :]
  return jax.lax.cummax(jnp.where(st, t, 0), axis=1)


def positions(segment_ids_BT):
  """[B, T] int32: each token's position inside its document (RoPE restarts at 0)."""
  t = jnp.arange(segment_ids_BT.shape[1], dtype=jnp.int32)[None, :]
  return t - doc_start(segment_ids_BT)


def start_at(captured_start_BT, positions_Bn):
  """Document start of sequence b's position positions[b, i], flattened to [B*n] (row b*n+i),
  from a captured doc_start [B, T] (None: 0, no segments)."""
  B, n = positions_Bn.shape
  p = positions_Bn.reshape(-1).astype(jnp.int32)
  if captured_start_BT is None:
    return jnp.zeros_like(p)
  b = jnp.repeat(jnp.arange(B), n)
  return captured_start_BT[b, jnp.clip(p, 0, captured_start_BT.shape[1] - 1)]
