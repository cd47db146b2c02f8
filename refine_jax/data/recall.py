"""The recall stream: key-value pairs, a low-entropy haystack, then the keys asked again.

One sample is one training row of exactly seq_len + 1 tokens (inputs and targets of seq_len),
so no packing cut ever separates a pair from its queries:

    <bos>K=044 A=148 X=651 Q=048 the grass is A=148green. the Q=048sky isK=044 blue...

`pairs` pairs open the row (keys: distinct capital letters; values: value_len random digits,
one piece each); then two RULER noise sentences, lower case, repeated from the same phase, so
a trained model finds them near-certain. Into them `queries` queries `K=` + value are inserted
(every key at least once, the rest repeat keys; random order) at haystack offsets drawn from
a power law, p(o) ∝ (o + 1)^(a - 1) (Zoology's MQAR): short gaps likelier, long ones present,
and longer rows (eval at 2x, 4x the training length) stretch them. NTP trains on every token.
The recall positions are the query values (`value_mask`): after `K=` only an earlier `K=value`
says what comes next, and a rollout of k >= value_len tokens from there holds the whole value,
so a next-sequence reward pays exactly for recall. Repeated queries make recall a large enough
share of the loss for a tiny model to learn it in a few hundred steps (with each key asked
once, a 2-layer DeltaNet stayed at chance for 1,500 steps).

Every piece is encoded on its own with the run's tokenizer (a byte tokenizer gives one token
per character); the same function with sample_seed("eval", ...) seeds is the held-out set.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refine_jax.data import tasks

# One period (37 tokens) fits in the haystack of a 128-token training row, so rows of any
# length continue text the model has seen. (RULER's full noise paragraph, 88 tokens, did not:
# 2x / 4x rows met its unseen second half, and their NLL measured that, not recall. Starting
# it at a random word instead made the haystack harder and delayed recall by ~300 steps.)
HAYSTACK = "the grass is green. the sky is blue. "
KEYS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"


@dataclasses.dataclass(frozen=True)
class RecallSpec:
  pairs: int = 8          # key-value pairs per row
  value_len: int = 3      # digits per value
  power_a: float = 0.1    # query offsets: p(o) ∝ (o + 1)^(a - 1)
  queries: int = 0        # queries per row (0 = pairs); every key is asked at least once

  @property
  def num_queries(self) -> int:
    return self.queries or self.pairs

  @classmethod
  def of(cls, cfg) -> "RecallSpec":
    """From a data.recall section (ConfigDict or dict)."""
    return cls(pairs=int(cfg["pairs"]), value_len=int(cfg["value_len"]),
               power_a=float(cfg["power_a"]), queries=int(cfg["queries"]))


class _Pieces:
  """Token ids of the pieces (a few dozen short encodes: cheap, so not cached)."""

  def __init__(self, tokenizer):
    enc = tokenizer.encode
    self.keys = [enc(k) for k in KEYS]
    self.digits = [enc(d) for d in DIGITS]
    self.eq, self.sep = enc("="), enc(" ")
    self.hay = enc(HAYSTACK)
    bad = [p for p in self.keys + self.digits + [self.eq, self.sep, self.hay] if not p]
    if bad:
      raise ValueError("the tokenizer encodes a recall piece (key letter, digit, '=', ' ') to no "
                       "tokens; use data.tokenizer='byte' for data.source='recall'.")


def fixed_tokens(tokenizer, spec: RecallSpec, add_bos: bool = True) -> int:
  """Tokens of a row that are not haystack (bos, pairs and queries)."""
  p = _Pieces(tokenizer)
  kv = max(map(len, p.keys)) + len(p.eq) + spec.value_len * max(map(len, p.digits))
  return int(add_bos) + spec.pairs * (kv + len(p.sep)) + spec.num_queries * kv


def check(tokenizer, spec: RecallSpec, seq_len: int):
  if spec.pairs < 1 or spec.pairs > len(KEYS):
    raise ValueError(f"data.recall.pairs={spec.pairs} must be in [1, {len(KEYS)}].")
  if spec.value_len < 1:
    raise ValueError(f"data.recall.value_len={spec.value_len} must be >= 1.")
  if spec.pairs > 10 ** spec.value_len:
    raise ValueError(f"data.recall.pairs={spec.pairs} > 10^value_len distinct values.")
  if spec.num_queries < spec.pairs:
    raise ValueError(f"data.recall.queries={spec.queries} must be 0 or >= pairs={spec.pairs}.")
  need = fixed_tokens(tokenizer, spec) + spec.num_queries
  if seq_len + 1 < need:
    raise ValueError(f"data.seq_len={seq_len} cannot hold {spec.pairs} recall pairs and their "
                     f"queries; use data.seq_len >= {need} or fewer data.recall.pairs.")


def sample(tokenizer, seq_len: int, seed: int, spec: RecallSpec = RecallSpec(), *,
           add_bos: bool = True) -> dict:
  """One row of seq_len + 1 tokens: tokens, value_mask (1 on query value tokens), key_mask (1 on
  query key tokens), and metadata (keys, values, query offsets, gaps in tokens between a pair's
  value and its query's value)."""
  check(tokenizer, spec, seq_len)
  p = _Pieces(tokenizer)
  rng = np.random.default_rng(seed)
  key_idx = rng.choice(len(KEYS), size=spec.pairs, replace=False)
  values = rng.choice(10 ** spec.value_len, size=spec.pairs, replace=False)
  value_str = [str(int(v)).zfill(spec.value_len) for v in values]
  toks, vmask, kmask, value_at = [], [], [], {}

  def put(ids, value=0.0, key=0.0):
    toks.extend(ids)
    vmask.extend([value] * len(ids))
    kmask.extend([key] * len(ids))

  def pair(i, is_query):
    put(p.keys[key_idx[i]], key=float(is_query))
    put(p.eq)
    start = len(toks)
    for d in value_str[i]:
      put(p.digits[int(d)], value=float(is_query))
    return start

  if add_bos:
    put([tokenizer.bos_id])
  for i in range(spec.pairs):
    value_at[i] = pair(i, False)
    put(p.sep)
  # Every key once, the rest of the queries drawn at random; asked in random order.
  order = rng.permutation(np.concatenate([
      np.arange(spec.pairs), rng.integers(spec.pairs, size=spec.num_queries - spec.pairs)]))
  query_len = [len(p.keys[key_idx[i]]) + len(p.eq) + sum(len(p.digits[int(d)])
                                                         for d in value_str[i]) for i in order]
  hay_len = seq_len + 1 - len(toks) - sum(query_len)
  # p(o) ∝ (o + 1)^(a - 1) over insertion offsets 0..hay_len (before haystack token o).
  w = (np.arange(hay_len + 1, dtype=np.float64) + 1.0) ** (spec.power_a - 1.0)
  offsets = np.sort(rng.choice(hay_len + 1, size=len(order), replace=False, p=w / w.sum()))
  hay = [p.hay[j % len(p.hay)] for j in range(hay_len)]  # same phase every row: low entropy
  gaps, q = [], 0
  for o in range(hay_len + 1):
    while q < len(order) and offsets[q] == o:
      i = int(order[q])
      gaps.append(pair(i, True) - value_at[i])
      q += 1
    if o < hay_len:
      put([hay[o]])
  if len(toks) != seq_len + 1:
    raise AssertionError(f"recall row has {len(toks)} tokens, expected {seq_len + 1}")
  return {"tokens": np.asarray(toks, np.int32), "value_mask": np.asarray(vmask, np.float32),
          "key_mask": np.asarray(kmask, np.float32),
          "metadata": dict(seed=int(seed), keys=[KEYS[k] for k in key_idx], values=value_str,
                           order=[int(i) for i in order], offsets=[int(o) for o in offsets],
                           gaps=gaps, haystack_tokens=int(hay_len))}


def row(s: dict) -> dict[str, np.ndarray]:
  """A sample as one batch row: inputs, targets, loss_mask (all ones: NTP on every token),
  segment_ids, value_mask (1 where the TARGET is a query value token)."""
  t = s["tokens"]
  return {"inputs": t[:-1], "targets": t[1:], "loss_mask": np.ones(len(t) - 1, np.float32),
          "segment_ids": np.ones(len(t) - 1, np.int32), "value_mask": s["value_mask"][1:]}


def batch(tokenizer, seq_len: int, num: int, *, split: str = "eval", start: int = 0,
          base_seed: int = 0, spec: RecallSpec = RecallSpec(), add_bos: bool = True) -> dict:
  """num rows [num, seq_len] from the seed stream `split` (sample indices start...)."""
  rows = [row(sample(tokenizer, seq_len, tasks.sample_seed(split, start + i, base_seed), spec,
                     add_bos=add_bos)) for i in range(num)]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
