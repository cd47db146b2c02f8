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

import os
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from refine_jax.data import tasks as tasks_lib
from refine_jax.eval import qa_files

QA_FIELDS = "prompt/answer or context/input/answers"


def split_list(value) -> list[str]:
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]


def _rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"QA file {path!r} not found (jsonl or parquet with {QA_FIELDS}).")
  return qa_files.read_records(path)  # parquet by its magic bytes, whatever the name


def _cut_middle(tokenizer, text: str, budget: int) -> str:
  """`text` cut in the middle (head and tail kept) to at most `budget` tokens."""
  ids = tokenizer.encode(text)
  if len(ids) <= budget:
    return text
  half = budget // 2
  return tokenizer.decode(ids[:half]) + tokenizer.decode(ids[len(ids) - (budget - half):])


def row_to_sample(row: dict, tokenizer, max_prompt_tokens: int | None,
                  where: str = "row") -> tasks_lib.TaskSample:
  """One file row -> TaskSample (prompt ends where the answer starts)."""
  if "prompt" in row and ("answer" in row or "answers" in row):  # ReFINE parquet: either
    prompt = str(row["prompt"])
    answers = row["answers"] if "answers" in row else row["answer"]
    answers = (answers,) if isinstance(answers, str) else tuple(str(a) for a in answers)
    if max_prompt_tokens is not None:
      prompt = _cut_middle(tokenizer, prompt, max_prompt_tokens)
    # The row's own task (ReFINE files: ruler_squadqa, hotpotqa, ...) is what it is scored by.
    own = row.get("task") or row.get("dataset")
    return tasks_lib.TaskSample("qa", prompt, answers, answers[0],
                                {"source": where, "dataset": own})
  if "context" in row and ("input" in row or "question" in row) and "answers" in row:
    question = row.get("input", row.get("question"))
    answers = row["answers"]
    answers = (answers,) if isinstance(answers, str) else tuple(str(a) for a in answers)
    head = tasks_lib.QA_INTRO
    tail = tasks_lib.QA_QUESTION + tasks_lib.QA_ANSWER_PREFIX.format(question=question)
    context = str(row["context"])
    if max_prompt_tokens is not None:
      budget = max_prompt_tokens - len(tokenizer.encode(head + tail))
      if budget <= 0:
        raise ValueError(f"{where}: the question alone exceeds {max_prompt_tokens} prompt "
                         "tokens; raise data.seq_len.")
      context = _cut_middle(tokenizer, context, budget)
    # LongBench rows name their dataset (and classes): scoring.score_sample uses its metric.
    return tasks_lib.TaskSample("qa", head + context + tail, answers, " " + answers[0],
                                {"source": where,
                                 "dataset": row.get("dataset") or row.get("task"),
                                 "all_classes": row.get("all_classes")})
  raise ValueError(f"{where}: fields {sorted(row)}; expected {QA_FIELDS}.")


def load_samples(paths: str, tokenizer, max_prompt_tokens: int | None = None,
                 limit: int | None = None) -> list[tasks_lib.TaskSample]:
  """All rows of comma-separated jsonl / parquet paths as TaskSamples."""
  out = []
  for path in split_list(paths):
    for i, row in enumerate(_rows(path)):
      sample = row_to_sample(row, tokenizer, max_prompt_tokens, f"{path}:{i + 1}")
      sample.metadata.update(source=os.path.abspath(path), row=i)  # predictions.jsonl keys
      out.append(sample)
      if limit is not None and len(out) >= limit:
        return out
  if not out:
    raise ValueError(f"no QA rows in {paths!r}.")
  return out


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
  if "row_ids" in batch:  # per-row random draws (loop.with_row_ids)
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
