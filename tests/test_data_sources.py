"""Each document loader on small files written here, and clear errors for bad files."""

import gzip
import json

import pytest

from refine_jax.data import sources

DOCS = ["first document\nwith two lines", "second doc", "third doc, the last"]


def _write_all(tmp_path):
  (tmp_path / "a.txt").write_text(DOCS[0])
  (tmp_path / "b.txt").write_text(DOCS[1])
  (tmp_path / "paras.txt").write_text("\n\n".join(DOCS))
  with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as f:
    for d in DOCS:
      f.write(json.dumps({"body": d, "id": 1}) + "\n")
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"body": DOCS, "n": [1, 2, 3]}), tmp_path / "docs.parquet")
  from array_record.python.array_record_module import ArrayRecordWriter
  w = ArrayRecordWriter(str(tmp_path / "docs.array_record"), "group_size:1")
  w.write(json.dumps({"body": DOCS[0]}).encode())
  w.write(DOCS[1].encode())  # raw UTF-8 records are accepted too
  w.write(json.dumps({"body": DOCS[2]}).encode())
  w.close()


def test_each_loader_reads_the_documents(tmp_path):
  _write_all(tmp_path)
  d = str(tmp_path)
  assert list(sources.read_documents("text", f"{d}/a.txt,{d}/b.txt")) == DOCS[:2]
  assert list(sources.read_documents("text", f"{d}/[ab].txt")) == DOCS[:2]
  assert list(sources.read_documents("text", f"{d}/paras.txt", text_split="paragraph")) == [
      "first document\nwith two lines", "second doc", "third doc, the last"]
  assert list(sources.read_documents("jsonl", f"{d}/docs.jsonl.gz", text_field="body")) == DOCS
  assert list(sources.read_documents("parquet", f"{d}/docs.parquet", text_field="body")) == DOCS
  ar = sources.read_documents("array_record", f"{d}/docs.array_record", text_field="body")
  assert len(ar) == 3 and [ar[i] for i in range(3)] == DOCS


def test_embedded_corpus_and_split():
  docs = sources.read_documents("embedded")
  assert len(docs) > 1000 and docs[0].startswith("Ge 1\n1 In the beginning")
  assert any("Hamlet" in d or "HAMLET" in d for d in docs)
  train, held = sources.split_documents(docs, 50)
  assert len(train) + len(held) == len(docs)
  train_set = {train[i] for i in range(len(train))}
  assert not any(held[i] in train_set for i in range(len(held)))


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="data.path.*matches no file"):
    sources.read_documents("jsonl", str(tmp_path / "nothing*.jsonl"))
  with pytest.raises(ValueError, match="data.path is empty"):
    sources.read_documents("text", "")
  (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
  with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
    sources.read_documents("jsonl", str(tmp_path / "bad.jsonl"))
  (tmp_path / "field.jsonl").write_text('{"body": "x"}\n')
  with pytest.raises(ValueError, match="data.text_field"):
    sources.read_documents("jsonl", str(tmp_path / "field.jsonl"))
  (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")
  with pytest.raises(ValueError, match="bad.parquet: not a readable parquet"):
    sources.read_documents("parquet", str(tmp_path / "bad.parquet"))
  (tmp_path / "bad.array_record").write_bytes(b"\x00garbage" * 100)
  with pytest.raises(ValueError, match="not a readable ArrayRecord"):
    sources.read_documents("array_record", str(tmp_path / "bad.array_record"))
  (tmp_path / "bad.txt.gz").write_bytes(b"not gzip at all")
  with pytest.raises(ValueError, match="bad.txt.gz: cannot be read"):
    sources.read_documents("text", str(tmp_path / "bad.txt.gz"))
  with pytest.raises(ValueError, match="data.source='csv'"):
    sources.read_documents("csv", str(tmp_path / "bad.txt.gz"))
  with pytest.raises(ValueError, match="data.embedded"):
    sources.read_documents("embedded", embedded="wikitext")
