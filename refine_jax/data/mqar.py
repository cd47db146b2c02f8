"""MQAR (Zoology-style multi-query associative recall) as token arrays: the eval task "mqar"
scores the model's argmax on the query positions of these sequences."""

from __future__ import annotations

import numpy as np

from refine_jax.data.tasks import sample_seed


def mqar(*, seq_len: int, num_kv_pairs: int, vocab_size: int, seed: int, low: int = 0,
         power_a: float = 0.01) -> dict[str, np.ndarray]:
  """Zoology-style multi-query associative recall, as token arrays of length seq_len.

  The first 2 * num_kv_pairs tokens are `k_1 v_1 ... k_N v_N`; every key is asked once
  later, at even offsets of the query region drawn with a power law (short gaps likelier).
  Ids below `low` are never used (keep specials there); token `low` fills the query region,
  keys come from [low + 1, mid), values from [mid, vocab_size). Returns inputs [T] int32,
  targets [T] int32 (the value at each query-key position, the filler elsewhere) and
  query_mask [T] float32 (1 where accuracy is measured).
  """
  rng = np.random.default_rng(seed)
  context = 2 * num_kv_pairs
  slots = (seq_len - context) // 2
  mid = low + 1 + (vocab_size - low - 1) // 2
  if num_kv_pairs < 1 or slots < num_kv_pairs:
    raise ValueError(f"seq_len={seq_len} too short for num_kv_pairs={num_kv_pairs}: need "
                     f"seq_len >= {4 * num_kv_pairs}.")
  if mid - low - 1 < num_kv_pairs or vocab_size - mid < num_kv_pairs:
    raise ValueError(f"vocab_size={vocab_size} (low={low}) too small for "
                     f"num_kv_pairs={num_kv_pairs}: need >= {low + 1 + 2 * num_kv_pairs}.")
  keys = rng.choice(np.arange(low + 1, mid), size=num_kv_pairs, replace=False)
  values = rng.choice(np.arange(mid, vocab_size), size=num_kv_pairs, replace=False)
  # p(gap = g) ∝ g^(a - 1): the Zoology power law favouring recent keys.
  p = power_a * np.arange(1, slots + 1, dtype=np.float64) ** (power_a - 1)
  gaps = rng.choice(slots, size=num_kv_pairs, replace=False, p=p / p.sum())
  inputs = np.full(seq_len, low, np.int32)
  targets = np.full(seq_len, low, np.int32)
  mask = np.zeros(seq_len, np.float32)
  inputs[0:context:2], inputs[1:context:2] = keys, values
  order = rng.permutation(num_kv_pairs)
  pos = context + 2 * gaps
  inputs[pos] = keys[order]
  targets[pos] = values[order]
  mask[pos] = 1.0
  return {"inputs": inputs, "targets": targets, "query_mask": mask}


def mqar_batch(batch_size: int, *, split: str = "eval", start: int = 0, base_seed: int = 0,
               **kwargs) -> dict[str, np.ndarray]:
  """batch_size MQAR samples [B, T] from the seed stream `split` (indices start...)."""
  rows = [mqar(seed=sample_seed(split, start + i, base_seed), **kwargs)
          for i in range(batch_size)]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
