"""Grain pipeline: documents -> tokens -> packed [seq_len + 1] windows -> batches.

Train: this shard's documents (document i goes to shard i % shard_count), reshuffled every
epoch from data.shuffle_seed, mixed with synthetic task samples (about data.synthetic_weight
of the tokens; seeds from the "train" stream, so never an eval sample), packed by
concatenate-then-split, then the packed rows are shuffled in a window of data.shuffle_window
(a long document would otherwise fill consecutive rows of one batch). Each batch is a dict
of numpy arrays:

    inputs [b, T] int32, targets [b, T] int32 (inputs shifted by one),
    loss_mask [b, T] float32 (0 where the target starts a new document or is padding, and on
    synthetic prompt tokens when data.synthetic_loss == "answer"),
    segment_ids [b, T] int32 (1, 2, ... per document piece within a row; 0 = padding).

data.source == "recall" replaces documents, mixing and packing: every row is one whole sample
of the recall stream (refine_jax/data/recall.py), seeds from the "train" stream; held-out rows
from the "eval" stream (base data.recall.eval_seed).

The train iterator is a grain DatasetIterator: `it.get_state()` is a small JSON-able dict and
`it.set_state(state)` continues exactly (grain's orbax handler also takes the iterator).
"""

from __future__ import annotations

import copy

import grain
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset

from refine_jax.data import recall, sources, tasks
from refine_jax.data.tokenizers import get_tokenizer

_ANSWER_BUDGET = 48  # tokens left after a synthetic prompt for its answer and eos
_MAX_INDEX = 1 << 62


def _data_cfg(config):
  return config.data if "data" in config else config


def _batch_size(config, override, shard_count):
  if override is not None:
    return int(override)
  if "train" not in config or "batch_size" not in config.train:
    raise ValueError("config.train.batch_size is missing: pass batch_size= or add it.")
  size = int(config.train.batch_size)
  if size % shard_count:
    raise ValueError(f"train.batch_size={size} is not divisible by shard_count={shard_count}; "
                     "make the global batch a multiple of the number of hosts.")
  return size // shard_count


def _check(config, tokenizer, shard_index, shard_count):
  data = _data_cfg(config)
  if data.seq_len < 2:
    raise ValueError(f"data.seq_len={data.seq_len} must be >= 2.")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count}).")
  if not 0.0 <= data.synthetic_weight < 1.0:
    raise ValueError(f"data.synthetic_weight={data.synthetic_weight} must be in [0, 1).")
  if data.synthetic_weight > 0:
    names = [n.strip() for n in data.synthetic_tasks.split(",") if n.strip()]
    bad = [n for n in names if n not in tasks.TASK_NAMES]
    if not names or bad:
      raise ValueError(f"data.synthetic_tasks={data.synthetic_tasks!r}: unknown {bad}; use a "
                       f"comma-separated subset of {', '.join(tasks.TASK_NAMES)}.")
    if data.synthetic_haystack not in ("noise", "corpus", "mixed"):
      raise ValueError(f"data.synthetic_haystack={data.synthetic_haystack!r}: use 'noise', "
                       "'corpus' or 'mixed'.")
    if data.synthetic_min_tokens < 1:
      raise ValueError(f"data.synthetic_min_tokens={data.synthetic_min_tokens} must be >= 1.")
  if data.source == "recall":
    recall.check(tokenizer, recall.RecallSpec.of(data.recall), int(data.seq_len))
  if "model" in config and "vocab_size" in config.model:
    if config.model.vocab_size < tokenizer.vocab_size:
      raise ValueError(f"model.vocab_size={config.model.vocab_size} is smaller than the "
                       f"tokenizer's vocab_size={tokenizer.vocab_size} (data.tokenizer="
                       f"{data.tokenizer!r}); set model.vocab_size >= {tokenizer.vocab_size}.")


def _source_splits(data):
  """(train_docs, eval_docs) from data.source / data.path / data.eval_path."""
  docs = sources.read_documents(data.source, data.path, text_field=data.text_field,
                                text_split=data.text_split, embedded=data.embedded)
  if data.eval_path:
    held = sources.read_documents(data.source, data.eval_path, text_field=data.text_field,
                                  text_split=data.text_split, field="data.eval_path")
    return docs, held
  return sources.split_documents(docs, data.holdout_every)


def _read_options(data):
  threads = int(data.read_threads)
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=64 if threads else 0)


def _doc_encoder(tokenizer, data):
  bos = [tokenizer.bos_id] if data.add_bos else []
  eos = [tokenizer.eos_id] if data.add_eos else []

  def encode(text):
    ids = np.asarray(bos + tokenizer.encode(text) + eos, np.int32)
    return {"tokens": ids, "weights": np.ones(len(ids), np.float32)}

  return encode


def synthetic_sample(tokenizer, data, seed: int, haystack_docs=None) -> dict[str, np.ndarray]:
  """One synthetic training document: task, prompt length and haystack drawn from `seed`.
  data.synthetic_haystack: "noise", "corpus" (a random document of haystack_docs) or "mixed"
  (half each)."""
  names = [n.strip() for n in data.synthetic_tasks.split(",") if n.strip()]
  rng = np.random.default_rng(seed)
  name = names[int(rng.integers(len(names)))]
  hi = max(data.synthetic_min_tokens, data.seq_len - _ANSWER_BUDGET)
  num_tokens = int(rng.integers(data.synthetic_min_tokens, hi + 1))
  mode = data.synthetic_haystack
  use_corpus = haystack_docs is not None and (
      mode == "corpus" or (mode == "mixed" and rng.random() < 0.5))
  haystack = haystack_docs[int(rng.integers(len(haystack_docs)))] if use_corpus else "noise"
  while True:  # short sequences: grow the prompt until the task fits (packing splits it)
    try:
      sample = tasks.make_task(name, tokenizer, num_tokens, seed, haystack=haystack)
      break
    except tasks.TaskTooShortError:
      if num_tokens > 1 << 20:
        raise
      num_tokens *= 2
  enc = tasks.encode_sample(tokenizer, sample, add_bos=data.add_bos, add_eos=data.add_eos)
  weights = enc["loss_mask"] if data.synthetic_loss == "answer" else (
      np.ones_like(enc["loss_mask"]))
  return {"tokens": enc["input_ids"], "weights": weights}


def held_out_text(config, max_chars: int = 1 << 20) -> str:
  """Held-out documents joined (up to max_chars): a NIAH haystack no training row contains."""
  data = _data_cfg(config)
  _, held = _source_splits(data)
  pieces, total = [], 0
  for i in range(len(held)):
    if total >= max_chars:
      break
    pieces.append(held[i])
    total += len(held[i]) + 1
  return "\n".join(pieces)[:max_chars]


def _to_batch_row(packed):
  tokens, seg = packed["tokens"], packed["tokens_segment_ids"].astype(np.int32)
  same_doc = (seg[1:] == seg[:-1]) & (seg[1:] != 0)
  return {
      "inputs": tokens[:-1].astype(np.int32),
      "targets": tokens[1:].astype(np.int32),
      "loss_mask": (packed["weights"][1:] * same_doc).astype(np.float32),
      "segment_ids": seg[:-1],
  }


class WindowShuffle(grain.IterDataset):
  """Reads `window` elements, yields them in a permutation seeded by (seed, window index).
  Same idea as grain's WindowShuffleIterDataset, whose per-element index_shuffle call costs
  ~20 ms on a loaded CPU. State = parent state at the window start + position in it."""

  def __init__(self, parent: grain.IterDataset, *, window: int, seed: int):
    super().__init__(parent)
    self._window, self._seed = int(window), int(seed)

  def __iter__(self):
    return _WindowShuffleIterator(self._parent.__iter__(), self._window, self._seed)


class _WindowShuffleIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, window: int, seed: int):
    super().__init__(parent)
    self._size, self._seed = window, seed
    self._index, self._pos, self._buffer = 0, 0, []
    self._start_state = self._parent.get_state()

  def _fill(self):
    self._start_state = self._parent.get_state()
    self._buffer = []
    for _ in range(self._size):
      try:
        self._buffer.append(next(self._parent))
      except StopIteration:
        break
    order = np.random.default_rng([self._seed, self._index]).permutation(len(self._buffer))
    self._buffer = [self._buffer[i] for i in order]

  def __next__(self):
    if self._pos >= len(self._buffer):
      if self._buffer:
        self._index += 1
      self._pos = 0
      self._fill()
      if not self._buffer:
        raise StopIteration
    self._pos += 1
    return self._buffer[self._pos - 1]

  def get_state(self):
    if self._buffer and self._pos >= len(self._buffer):  # window used up: start the next
      return {"parent": self._parent.get_state(), "window_index": self._index + 1, "pos": 0}
    return {"parent": copy.deepcopy(self._start_state), "window_index": self._index,
            "pos": self._pos}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._index, self._pos, self._buffer = int(state["window_index"]), 0, []
    self._start_state = state["parent"]
    if state["pos"]:
      self._fill()
      self._pos = int(state["pos"])


class _JsonSafePacker(grain.IterDataset):
  """Concat-then-split packing whose state survives JSON. grain compares the remainder
  slices to a tuple, so the lists a JSON checkpoint gives back would replay a phantom
  remainder; set_state turns them back into tuples."""

  def __init__(self, parent: grain.IterDataset, length: int):
    super().__init__(ConcatThenSplitIterDataset(
        parent, length_struct={"tokens": length, "weights": length}))

  def __iter__(self):
    return _JsonSafeIterator(self._parent.__iter__())


class _JsonSafeIterator(grain.DatasetIterator):

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    state = dict(state)
    state["remainder_slices"] = {k: tuple(v) for k, v in state["remainder_slices"].items()}
    self._parent.set_state(state)


def _without_segments(row):
  """data.reset_at_documents=False: rows carry no segment_ids, so the model runs each packed
  row as one stream (state, convolutions and attention cross document boundaries)."""
  return {k: v for k, v in row.items() if k != "segment_ids"}


def _pack_and_batch(ds: grain.IterDataset, seq_len: int, batch_size: int, *,
                    shuffle_window: int = 0, seed: int = 0,
                    segments: bool = True) -> grain.IterDataset:
  ds = _JsonSafePacker(ds, seq_len + 1).map(_to_batch_row)
  if not segments:
    ds = ds.map(_without_segments)
  if shuffle_window > 1:
    ds = WindowShuffle(ds, window=shuffle_window, seed=seed)
  return ds.batch(batch_size, drop_remainder=True)


def _document_weight(token_fraction, docs, encode, synth, probe=32):
  """Mixture weight per document that gives synthetic samples ~token_fraction of the tokens,
  from the mean lengths of the first `probe` documents of each stream (deterministic)."""
  n = min(probe, len(docs))
  corpus_len = np.mean([len(encode(docs[i])["tokens"]) for i in range(n)])
  synth_len = np.mean([len(synth[i]["tokens"]) for i in range(probe // 4)])
  w = token_fraction / synth_len
  return float(w / (w + (1.0 - token_fraction) / corpus_len))


_LM_KEYS = ("inputs", "targets", "loss_mask", "segment_ids")


def _recall_rows(tokenizer, data, split, base_seed, shard_index=0, shard_count=1):
  """Recall rows (LM batch keys only) of one seed stream, row i from sample index
  i * shard_count + shard_index."""
  spec, seq_len = recall.RecallSpec.of(data.recall), int(data.seq_len)

  def make(i):
    seed = tasks.sample_seed(split, int(i) * shard_count + shard_index, base_seed)
    r = recall.row(recall.sample(tokenizer, seq_len, seed, spec, add_bos=data.add_bos))
    return {k: r[k] for k in _LM_KEYS}

  return grain.MapDataset.range(_MAX_INDEX).map(make)


def make_train_dataset(config, *, shard_index: int = 0, shard_count: int = 1,
                       batch_size: int | None = None) -> grain.IterDataset:
  data = _data_cfg(config)
  tokenizer = get_tokenizer(data)
  _check(config, tokenizer, shard_index, shard_count)
  size = _batch_size(config, batch_size, shard_count)
  if data.source == "recall":  # one whole sample per row: nothing to mix, pack or cut
    ds = _recall_rows(tokenizer, data, "train", int(data.shuffle_seed), shard_index,
                      shard_count)
    return ds.to_iter_dataset(_read_options(data)).batch(size, drop_remainder=True)
  train_docs, _ = _source_splits(data)
  docs = grain.MapDataset.source(train_docs)[shard_index::shard_count]
  if len(docs) == 0:
    raise ValueError(f"shard {shard_index}/{shard_count} has no documents ({len(train_docs)} "
                     "in the train split); use fewer shards or more data.")
  seed = int(data.shuffle_seed)
  encode = _doc_encoder(tokenizer, data)
  ds = docs.shuffle(seed=seed).repeat().map(encode)
  if data.synthetic_weight > 0:
    synth = grain.MapDataset.range(_MAX_INDEX).map(
        lambda i: synthetic_sample(
            tokenizer, data, tasks.sample_seed("train", i * shard_count + shard_index, seed),
            haystack_docs=docs))
    w = _document_weight(float(data.synthetic_weight), docs.shuffle(seed=seed), encode, synth)
    ds = grain.MapDataset.mix([ds, synth], weights=[1.0 - w, w])
  return _pack_and_batch(ds.to_iter_dataset(_read_options(data)), data.seq_len, size,
                         shuffle_window=int(data.shuffle_window), seed=seed,
                         segments=bool(data.reset_at_documents))


def make_train_iterator(config, *, shard_index: int = 0, shard_count: int = 1,
                        batch_size: int | None = None) -> grain.DatasetIterator:
  """Endless iterator of this shard's train batches (per-shard batch = train.batch_size /
  shard_count). Checkpoint with get_state()/set_state()."""
  return iter(make_train_dataset(config, shard_index=shard_index, shard_count=shard_count,
                                 batch_size=batch_size))


def make_eval_batches(config, num_batches: int, *, shard_index: int = 0, shard_count: int = 1,
                      batch_size: int | None = None) -> list[dict[str, np.ndarray]]:
  """The first num_batches batches of the held-out documents in file order (no synthetic
  text); the same list on every call. Cycles over the held-out set if it is too small."""
  data = _data_cfg(config)
  tokenizer = get_tokenizer(data)
  _check(config, tokenizer, shard_index, shard_count)
  if batch_size is None and data.eval_batch_size:
    batch_size = int(data.eval_batch_size)
  size = _batch_size(config, batch_size, shard_count)
  if data.source == "recall":
    ds = _recall_rows(tokenizer, data, "eval", int(data.recall.eval_seed), shard_index,
                      shard_count)
    it = iter(ds.to_iter_dataset().batch(size, drop_remainder=True))
    return [next(it) for _ in range(num_batches)]
  _, held = _source_splits(data)
  docs = grain.MapDataset.source(held)[shard_index::shard_count]
  if len(docs) == 0:
    raise ValueError(f"shard {shard_index}/{shard_count} has no held-out documents; lower "
                     "data.holdout_every or give data.eval_path.")
  ds = docs.repeat().map(_doc_encoder(tokenizer, data)).to_iter_dataset(_read_options(data))
  it = iter(_pack_and_batch(ds, data.seq_len, size,
                            segments=bool(data.reset_at_documents)))
  return [next(it) for _ in range(num_batches)]
