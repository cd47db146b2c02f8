"""Prompt/answer data for post-training and test-time training.

Sources: a user's jsonl or parquet files with either `prompt` + `answer` fields or the
RULER-QA / LongBench shape `context` + `input` (or `question`) + `answers`; or, by default,
synthetic long-context questions (RULER NIAH / variable tracking) from the shared task
generators, with training drawn from the "train" seed stream and held-out samples from the
"eval" stream (refine_jax.data.tasks.sample_seed), so the two never overlap.

Batches follow tasks.task_batch: inputs / targets [b, T], prompt_mask (1 where the target is a
prompt token), loss_mask (1 where the target is one of the first `answer_cap` answer tokens or
the eos right after them), prompt_len [b].
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from refine_jax.data import tasks as tasks_lib
from refine_jax.eval import qa_files

def split_list(value) -> list[str]:
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]


def load_samples(paths: str, tokenizer, max_prompt_tokens: int | None = None,
                 limit: int | None = None) -> list[tasks_lib.TaskSample]:
  """All rows of comma-separated jsonl / parquet paths or globs as TaskSamples (eval's one
  reader, qa_files: every layout, each row keeping its task for scoring)."""
  return qa_files.samples(paths, tokenizer, max_prompt_tokens, limit=limit)


def synthetic_sample(tokenizer, split: str, index: int, *, tasks: Sequence[str],
                     min_tokens: int, max_tokens: int, base_seed: int = 0,
                     num_needles: int = 2, vt_hops: int = 4) -> tasks_lib.TaskSample:
  """Sample `index` of the synthetic stream: task round-robin, prompt length drawn in
  [min_tokens, max_tokens] (raised to the task's minimum when that is larger)."""
  seed = tasks_lib.sample_seed(split, index, base_seed)
  task = tasks[index % len(tasks)]
  n = int(np.random.default_rng(seed).integers(min_tokens, max_tokens + 1))
  kwargs = {}
  if task.startswith("niah_"):
    kwargs["num_needles"] = num_needles
  elif task == "variable_tracking":
    kwargs["num_hops"] = vt_hops
  for length in (n, max_tokens):
    try:
      return tasks_lib.make_task(task, tokenizer, length, seed, **kwargs)
    except tasks_lib.TaskTooShortError:
      continue
  raise ValueError(f"task {task} does not fit in {max_tokens} prompt tokens; raise "
                   "data.seq_len or drop the task from posttrain.tasks.")


def qa_batch(tokenizer, samples: Sequence[tasks_lib.TaskSample], seq_len: int,
             answer_cap: int, add_bos: bool = True) -> dict[str, np.ndarray]:
  """tasks.task_batch with the answer cut to `answer_cap` tokens (then eos)."""
  capped = []
  for s in samples:
    ids = tokenizer.encode(s.target)
    if answer_cap > 0 and len(ids) > answer_cap:
      s = tasks_lib.TaskSample(s.task, s.prompt, s.answers, tokenizer.decode(ids[:answer_cap]),
                               s.metadata)
    capped.append(s)
  return tasks_lib.task_batch(tokenizer, capped, seq_len, add_bos=add_bos, add_eos=True)


def prompt_only(batch: dict, pad_id: int) -> dict:
  """The inner-update view of a batch (works under jit): answer tokens replaced by pad_id in
  inputs and targets, loss_mask = prompt_mask, lengths = prompt_len. Nothing of the answer
  reaches the inner loss."""
  inputs, targets = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
  pm = jnp.asarray(batch["prompt_mask"], jnp.float32)
  keep_BT = jnp.arange(inputs.shape[1])[None] < jnp.asarray(batch["prompt_len"])[:, None]
  out = {"inputs": jnp.where(keep_BT, inputs, pad_id).astype(jnp.int32),
         "targets": jnp.where(pm > 0, targets, pad_id).astype(jnp.int32),
         "loss_mask": pm,
         # ReFINE's chunks split each prompt's own length, not the padded row.
         "lengths": jnp.asarray(batch["prompt_len"], jnp.int32)}
  if "row_ids" in batch:  # per-row random draws (update.with_row_ids)
    out["row_ids"] = batch["row_ids"]
  return out


class SampleIterator:
  """Endless batches of `sample_fn(i)` for i = 0, 1, ...; state = {"index": next i}
  (JSON-able, saved in checkpoints by the training loop)."""

  def __init__(self, sample_fn: Callable[[int], tasks_lib.TaskSample], tokenizer, seq_len: int,
               batch_size: int, answer_cap: int, add_bos: bool = True):
    self.sample_fn, self.tokenizer = sample_fn, tokenizer
    self.seq_len, self.batch_size = int(seq_len), int(batch_size)
    self.answer_cap, self.add_bos = int(answer_cap), add_bos
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    samples = [self.sample_fn(self.index + i) for i in range(self.batch_size)]
    self.index += self.batch_size
    return qa_batch(self.tokenizer, samples, self.seq_len, self.answer_cap, self.add_bos)

  def get_state(self):
    return {"index": int(self.index)}

  def set_state(self, state):
    self.index = int(state["index"])
