"""Batched greedy decoding with the model's cache (fast-weight state + conv / KV buffers).

Prompts of different lengths share a batch without padding ever entering the recurrent state:
the batch prefills its shortest prompt length in one pass, then runs a one-token loop in which
each row is fed its own next prompt token while it still has one ("teacher forcing" the tail)
and its own greedy token afterwards. Every row therefore consumes exactly its real tokens, in
order, so the result equals decoding each prompt alone. Prompts are sorted by length first, so
the forced tails are short; the prefill length is rounded down to `prefill_bucket` to bound the
number of compiled prefill shapes.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm


@functools.lru_cache(maxsize=16)
def _jitted(graphdef):
  """Jitted prefill and one-token step for one model structure (reused across calls and across
  weight copies, e.g. test-time-trained ones), taking the params as an argument."""

  def prefill(state, ids_BT, cache):
    out = nnx.merge(graphdef, state)(ids_BT, cache)
    return out.logits[:, -1], out.cache

  def step(state, cache, logits_BV, forced_B, is_forced_B):
    # Row b takes its next prompt token while it has one, else its own greedy token.
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    tok_B = jnp.where(is_forced_B, forced_B, greedy_B)
    out = nnx.merge(graphdef, state)(tok_B[:, None], cache)
    return tok_B, out.logits[:, -1], out.cache

  return jax.jit(prefill), jax.jit(step, donate_argnums=(1,))


class _Decoder:
  """A split model (no NNX graph walk per token) plus its jitted functions."""

  def __init__(self, model):
    self.model = model
    graphdef, self.state = nnx.split(model)
    self.prefill, self.step = _jitted(graphdef)


def _batches(order: np.ndarray, batch_size: int):
  for i in range(0, len(order), batch_size):
    yield order[i:i + batch_size]


def budgets_of(max_new_tokens, n: int) -> np.ndarray:
  """max_new_tokens (one int, or one per prompt) -> [n] int64 budgets."""
  budgets = np.asarray(max_new_tokens, np.int64)
  if budgets.ndim > 1 or (budgets.ndim == 1 and len(budgets) != n):
    raise ValueError(f"max_new_tokens: give one int or one per prompt ({n}), not "
                     f"shape {budgets.shape}.")
  budgets = np.broadcast_to(budgets, (n,))
  if n and budgets.min() < 0:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0.")
  return budgets


def greedy_decode(model, prompts: Sequence[Sequence[int]], *,
                  max_new_tokens: int | Sequence[int], eos_id: int | None = None,
                  batch_size: int = 8, prefill_bucket: int = 16, progress: bool = False,
                  desc: str = "decode") -> list[list[int]]:
  """Greedy continuations of token-id prompts, `max_new_tokens` each (one int, or one per
  prompt: a row's budget never depends on its batch mates), cut after eos, which is kept out
  of the result. Returns one list of new ids per prompt, in input order."""
  budgets = budgets_of(max_new_tokens, len(prompts))
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1.")
  lens = np.array([len(p) for p in prompts], np.int64)
  if len(prompts) and lens.min() == 0:
    raise ValueError(f"prompt {int(np.argmin(lens))} is empty; give at least one token (bos).")
  results: list[list[int]] = [[] for _ in prompts]
  if not len(prompts) or budgets.max() == 0:
    return results
  dec = _Decoder(model)
  order = np.argsort(lens, kind="stable")
  bar = None
  if progress:
    bar = tqdm(total=len(prompts), desc=desc, dynamic_ncols=True, leave=False)
  for idx in _batches(order, batch_size):
    for i, new in zip(idx, _decode_batch(dec, [prompts[i] for i in idx], budgets[idx],
                                         eos_id, prefill_bucket)):
      results[i] = new
    if bar is not None:
      bar.update(len(idx))
  if bar is not None:
    bar.close()
  return results


def _decode_batch(dec: _Decoder, prompts, budgets_B, eos_id, bucket):
  b = len(prompts)
  lens_B = np.array([len(p) for p in prompts], np.int64)
  # Prefill a common prefix (>= 1 token, a multiple of `bucket` when possible).
  pre = int(lens_B.min())
  if pre > bucket:
    pre = (pre // bucket) * bucket
  start_B = lens_B - pre                        # step at which row r feeds its first new token
  steps = int((start_B + budgets_B).max())      # every row's last new token is fed at < steps
  ids_BT = np.stack([np.asarray(p[:pre], np.int32) for p in prompts])
  forced_BS = np.zeros((b, max(steps, 1)), np.int32)
  for r, p in enumerate(prompts):
    forced_BS[r, :len(p) - pre] = np.asarray(p[pre:], np.int32)
  cache = dec.model.init_cache(b, pre + steps)
  logits_BV, cache = dec.prefill(dec.state, jnp.asarray(ids_BT), cache)
  toks = np.zeros((b, steps), np.int32)
  done_B = budgets_B == 0
  for s in range(steps):
    is_forced = jnp.asarray(s < start_B)
    tok_B, logits_BV, cache = dec.step(dec.state, cache, logits_BV, jnp.asarray(forced_BS[:, s]),
                                       is_forced)
    toks[:, s] = np.asarray(tok_B)
    gen = s >= start_B  # stop early once every row has emitted eos or used its budget
    done_B |= gen & (s - start_B + 1 >= budgets_B)
    if eos_id is not None:
      done_B |= gen & (toks[:, s] == eos_id)
    if done_B.all():
      break
  out = []
  for r in range(b):
    new = toks[r, start_B[r]:start_B[r] + budgets_B[r]].tolist()
    if eos_id is not None and eos_id in new:
      new = new[:new.index(eos_id)]
    out.append(new)
  return out


def decode_text(model, tokenizer, prompts: Sequence[str], *,
                max_new_tokens: int | Sequence[int], add_bos: bool = True, batch_size: int = 8,
                progress: bool = False, desc: str = "decode") -> list[str]:
  """Greedy text continuations of string prompts (bos prepended when add_bos); max_new_tokens
  is one int or one per prompt."""
  ids = [([tokenizer.bos_id] if add_bos else []) + tokenizer.encode(p) for p in prompts]
  new = greedy_decode(model, ids, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                      batch_size=batch_size, progress=progress, desc=desc)
  return [tokenizer.decode(n) for n in new]
