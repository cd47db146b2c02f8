"""Document sources: random-access sequences of text documents (len + getitem -> str).

Kinds: the embedded corpus (shipped KJV + Shakespeare), plain text files, jsonl, parquet and
ArrayRecord. Text, jsonl and parquet are read into memory at start-up (and checked there, so a
bad file fails before training, naming the file and line); ArrayRecord stays on disk (random
access), each record a JSON object holding `text_field` or raw UTF-8 text.
"""

from __future__ import annotations

import functools
import glob
import gzip
import json
import lzma
import os
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from array_record.python.array_record_module import ArrayRecordReader
from grain.sources import ArrayRecordDataSource

from refine_jax.errors import UserError

CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
EMBEDDED = {"kjv": "kjv.jsonl.xz", "shakespeare": "shakespeare.jsonl.xz"}
KINDS = ("embedded", "text", "jsonl", "parquet", "array_record")


def _open_text(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8")
  if path.endswith(".xz"):
    return lzma.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def expand_paths(spec: str, field: str = "data.path") -> list[str]:
  """Comma-separated paths or globs -> sorted existing files; errors name the field."""
  parts = [p.strip() for p in spec.split(",") if p.strip()]
  if not parts:
    raise UserError(f"{field} is empty: give comma-separated files or globs.")
  files = []
  for part in parts:
    matches = sorted(glob.glob(os.path.expanduser(part)))
    if not matches:
      raise FileNotFoundError(f"{field}: {part!r} matches no file.")
    files += [m for m in matches if os.path.isfile(m)]
  if not files:
    raise FileNotFoundError(f"{field}={spec!r} names only directories; give files or globs.")
  return files


def read_jsonl(path: str, text_field: str = "text") -> list[str]:
  docs = []
  try:
    with _open_text(path) as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise UserError(f"{path}:{line_no}: not valid JSON ({e.msg}).") from e
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
          raise UserError(f"{path}:{line_no}: no string field {text_field!r}; set "
                           "data.text_field to the field holding the text.")
        docs.append(row[text_field])
  except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot be read as (compressed) UTF-8 jsonl "
                     f"({type(e).__name__}: {e}).") from e
  return docs


def read_text(path: str, split: str = "file") -> list[str]:
  try:
    with _open_text(path) as f:
      text = f.read()
  except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot be read as (compressed) UTF-8 text "
                     f"({type(e).__name__}: {e}).") from e
  if split == "file":
    return [text] if text.strip() else []
  if split == "paragraph":
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
  raise UserError(f"data.text_split={split!r}: use 'file' or 'paragraph'.")


def read_parquet(path: str, text_field: str = "text") -> list[str]:
  try:
    table = pq.read_table(path, columns=[text_field])
  except (pa.ArrowInvalid, OSError) as e:
    raise UserError(f"{path}: not a readable parquet file with a {text_field!r} column "
                     f"(set data.text_field) ({type(e).__name__}: {e}).") from e
  except KeyError as e:
    raise UserError(f"{path}: no column {text_field!r}; set data.text_field.") from e
  return [t for t in table.column(text_field).to_pylist() if t]


class ArrayRecordDocuments:
  """Random-access documents over ArrayRecord files (records: JSON objects or UTF-8 text)."""

  def __init__(self, paths: Sequence[str], text_field: str = "text"):
    for p in paths:
      _check_array_record(p)
    self._source = ArrayRecordDataSource(list(paths))
    self._field = text_field

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> str:
    record = self._source[index]
    text = record.decode("utf-8", errors="replace")
    if text.startswith("{"):
      try:
        row = json.loads(text)
      except json.JSONDecodeError:
        return text
      if isinstance(row, dict):
        if not isinstance(row.get(self._field), str):
          raise UserError(f"ArrayRecord record {index}: JSON without string field "
                           f"{self._field!r}; set data.text_field.")
        return row[self._field]
    return text


def _check_array_record(path: str) -> None:
  try:
    reader = ArrayRecordReader(path)
    reader.num_records()
    reader.close()
  except Exception as e:  # the C++ reader raises RuntimeError/ValueError on bad files
    raise UserError(f"{path}: not a readable ArrayRecord file ({type(e).__name__}: {e}).") from e


@functools.lru_cache(maxsize=4)
def embedded_documents(names: str = "kjv,shakespeare") -> tuple[str, ...]:
  """The shipped public-domain corpus (see corpus/README.md), cached per process."""
  docs = []
  for name in [n.strip() for n in names.split(",") if n.strip()]:
    if name not in EMBEDDED:
      raise UserError(f"data.embedded: unknown corpus {name!r}; choose from "
                       f"{sorted(EMBEDDED)}.")
    docs += read_jsonl(os.path.join(CORPUS_DIR, EMBEDDED[name]))
  if not docs:
    raise UserError("data.embedded is empty: name at least one of kjv, shakespeare.")
  return tuple(docs)


def read_documents(kind: str, path: str = "", *, text_field: str = "text",
                   text_split: str = "file", embedded: str = "kjv,shakespeare",
                   field: str = "data.path") -> Sequence[str]:
  """All documents of one source, in file order."""
  if kind == "embedded":
    return embedded_documents(embedded)
  if kind not in KINDS:
    raise UserError(f"data.source={kind!r}: use one of {KINDS}.")
  files = expand_paths(path, field)
  if kind == "array_record":
    docs = ArrayRecordDocuments(files, text_field)
  else:
    reader = {"text": lambda p: read_text(p, text_split),
              "jsonl": lambda p: read_jsonl(p, text_field),
              "parquet": lambda p: read_parquet(p, text_field)}[kind]
    docs = [d for p in files for d in reader(p)]
  if len(docs) == 0:
    raise UserError(f"{field}={path!r} ({kind}) holds no documents.")
  return docs


class IndexView:
  """docs[indices[i]] without copying (train/eval splits of one source)."""

  def __init__(self, docs: Sequence[str], indices: Sequence[int]):
    self._docs, self._indices = docs, list(indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> str:
    return self._docs[self._indices[i]]


def split_documents(docs: Sequence[str],
                    holdout_every: int) -> tuple[IndexView, IndexView]:
  """(train, eval): every holdout_every-th document (index % holdout_every == 0) is held out."""
  if holdout_every < 2:
    raise UserError(f"data.holdout_every={holdout_every} must be >= 2.")
  n = len(docs)
  train = IndexView(docs, [i for i in range(n) if i % holdout_every])
  held = IndexView(docs, range(0, n, holdout_every))
  if len(train) == 0:
    raise UserError(f"only {n} documents: too few for a train/eval split.")
  return train, held
