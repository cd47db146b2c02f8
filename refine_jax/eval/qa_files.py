"""QA eval files in every layout the paper's data ships in, each row tagged with its own task.

`eval.qa_path` (and `python -m refine_jax.eval.score --data`) is a comma-separated list of
files or globs, local or gs:// (through refine_jax.paths; a gs:// glob may use wildcards in
its last part only). A file is parquet when it starts with parquet's magic bytes "PAR1"
(whatever its name), else jsonl. Layouts, told apart per row by their fields:

- ReFINE RULER QA parquet: index, prompt, answer (list), prompt_length, max_answer_length,
  total_length, max_seq_length, task in {ruler_squadqa, ruler_hotpotqa};
- ReFINE LongBench parquet: prompt, answers (list), prompt_length, max_answer_length,
  total_length, max_gen_tokens, task (one of LongBench's datasets; no all_classes);
- THUDM LongBench jsonl: context, input, answers, dataset, all_classes (+ length, _id, ...);
- the project's own: prompt + answer (str or list), or context + input (or question) +
  answers, optionally with dataset / task.

Extra columns are kept in `extra` and otherwise ignored. A row's task is its `task` field,
else its `dataset`, else "qa" (the project's first-line substring rule); rows are scored by
scoring.score_row(task, ...). `source` is the file (paths.norm form), `row` its 0-based index.
"""
from __future__ import annotations

import dataclasses
import glob as globlib
import io
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from refine_jax import paths
from refine_jax.data import tasks as tasks_lib
from refine_jax.errors import UserError
from refine_jax.eval import scoring

LAYOUTS = ("prompt + answer/answers (ReFINE RULER QA / LongBench parquet, or your own), or "
           "context + input/question + answers (THUDM LongBench jsonl)")
PARQUET_MAGIC = b"PAR1"
_LENGTH_SUFFIX = re.compile(r"_(\d+)$")
_WILDCARDS = "*?["


@dataclasses.dataclass(frozen=True)
class QARow:
  source: str                      # the file, as paths.norm gives it
  row: int                         # 0-based row index in that file
  task: str                        # the row's own task: what scoring.score_row scores it by
  answers: tuple[str, ...]
  prompt: str | None = None        # a ready prompt (prompt layouts)
  context: str | None = None       # context + question layouts
  question: str | None = None
  all_classes: tuple[str, ...] | None = None
  extra: dict = dataclasses.field(default_factory=dict)

  def score(self, prediction: str) -> float:
    return scoring.score_row(self.task, prediction, self.answers, self.all_classes)


def _split(spec) -> list[str]:
  if isinstance(spec, str):
    return [p.strip() for p in spec.split(",") if p.strip()]
  return [str(p) for p in spec]


def expand(spec) -> list[str]:
  """Files of a comma-separated list of files / globs, in the order given (each glob's matches
  sorted); a glob matching nothing or a missing file is a FileNotFoundError naming it."""
  out = []
  for item in _split(spec):
    if any(ch in item for ch in _WILDCARDS):
      if paths.is_remote(item):
        parent, pattern = item.rsplit("/", 1)
        found = sorted(os.fspath(p) for p in epath.Path(parent).glob(pattern))
      else:
        found = sorted(globlib.glob(os.path.expanduser(item)))
      found = [f for f in found if paths.isfile(f)]
      if not found:
        raise FileNotFoundError(f"QA data {item!r}: the pattern matches no file.")
      out += [paths.norm(f) for f in found]
    else:
      if not paths.isfile(item):
        raise FileNotFoundError(f"QA data file {item!r} not found ({LAYOUTS}; jsonl or "
                                "parquet).")
      out.append(paths.norm(item))
  if not out:
    raise UserError(f"QA data {spec!r}: give at least one file or glob.")
  return out


def is_parquet(data: bytes) -> bool:
  return data[:4] == PARQUET_MAGIC


def read_records(path: str) -> list[dict]:
  """The raw records of one file: parquet (by its magic bytes) or jsonl (blank lines skipped)."""
  data = paths.as_path(path).read_bytes()
  if is_parquet(data):
    try:
      return pq.read_table(io.BytesIO(data)).to_pylist()
    except (pa.ArrowException, OSError) as e:
      raise UserError(f"{path}: starts like parquet but cannot be read as parquet ({e}).") \
          from e
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: neither parquet (no PAR1 header) nor UTF-8 jsonl text ({e}).") \
        from e
  return [record for _, record in json_objects(text, path, "a QA file is jsonl (one object "
                                                          "per line) or parquet")]


def json_objects(text: str, path: str, hint: str = "") -> list[tuple[int, dict]]:
  """(line number, object) of every non-blank jsonl line; one UserError naming the line for
  text that is not a json object (`hint` says what the file should be)."""
  out = []
  for line_no, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{line_no}: not a json object ({e})"
                      f"{'; ' + hint if hint else ''}.") from e
    if not isinstance(record, dict):
      raise UserError(f"{path}:{line_no}: a json {type(record).__name__}, not an object.")
    out.append((line_no, record))
  return out


def _answers(value, where: str) -> tuple[str, ...]:
  if isinstance(value, str):
    return (value,)
  if value is None or not hasattr(value, "__iter__"):
    raise UserError(f"{where}: the answers are {value!r}; give a string or a list of strings.")
  answers = tuple(str(a) for a in value)
  if not answers:
    raise UserError(f"{where}: the answer list is empty.")
  return answers


_KNOWN = ("prompt", "answer", "answers", "context", "input", "question", "task", "dataset",
          "all_classes")


def to_row(record: dict, source: str, index: int) -> QARow:
  """One record -> QARow (its layout told by its fields)."""
  where = f"{source}:{index}"
  task = record.get("task") or record.get("dataset") or "qa"
  if not isinstance(task, str):
    raise UserError(f"{where}: task {task!r} is not a string.")
  if not scoring.known_task(task):
    raise UserError(f"{where}: unknown task {task!r}; known: "
                    f"{', '.join(scoring.known_tasks())}.")
  classes = record.get("all_classes")
  classes = tuple(str(c) for c in classes) if classes else None
  extra = {k: v for k, v in record.items() if k not in _KNOWN}
  if "prompt" in record and ("answer" in record or "answers" in record):
    answers = record["answers"] if "answers" in record else record["answer"]
    return QARow(source, index, task, _answers(answers, where), prompt=str(record["prompt"]),
                 all_classes=classes, extra=extra)
  question = record.get("input", record.get("question"))
  if "context" in record and question is not None and "answers" in record:
    return QARow(source, index, task, _answers(record["answers"], where),
                 context=str(record["context"]), question=str(question), all_classes=classes,
                 extra=extra)
  raise UserError(f"{where}: fields {sorted(record)}; expected {LAYOUTS}.")


def read_file(path: str) -> list[QARow]:
  return [to_row(r, path, i) for i, r in enumerate(read_records(path))]


def load(spec, limit: int | None = None) -> list[QARow]:
  """Every row of the files / globs in `spec` (at most `limit`), in file then row order."""
  rows = []
  for path in expand(spec):
    for r in read_file(path):
      rows.append(r)
      if limit is not None and len(rows) >= limit:
        return rows
  if not rows:
    raise UserError(f"no QA rows in {spec!r}.")
  return rows


def cut_middle(tokenizer, text: str, budget: int) -> str:
  """LongBench's truncation: a text over `budget` tokens keeps its first and last budget // 2
  tokens (decoded and joined); a shorter one is returned as it is."""
  ids = tokenizer.encode(text)
  if len(ids) <= budget:
    return text
  half = budget // 2
  return tokenizer.decode(ids[:half]) + tokenizer.decode(ids[len(ids) - half:])


def answer_budget(r: QARow, override: int = 0) -> int | None:
  """Tokens the model may generate for row r: `override` when > 0; else the row's own
  max_gen_tokens (ReFINE LongBench files) or max_answer_length (ReFINE RULER files); None when
  the row has neither (the caller decides)."""
  if override > 0:
    return int(override)
  for field in ("max_gen_tokens", "max_answer_length"):
    n = r.extra.get(field)
    if isinstance(n, int) and n > 0:
      return n
  return None


def own_length(r: QARow) -> int | None:
  """The context length a row was built for: its max_seq_length (ReFINE RULER files), else the
  <name>_<N> suffix of its file (ReFINE LongBench files, e.g. trec_16384.parquet)."""
  n = r.extra.get("max_seq_length")
  if isinstance(n, int) and n > 0:
    return n
  m = _LENGTH_SUFFIX.search(os.path.basename(r.source).split(".")[0])
  return int(m.group(1)) if m else None


def to_sample(r: QARow, tokenizer=None, num_tokens: int | None = None, task: str = "qa", *,
              max_new_tokens: int = 0) -> tasks_lib.TaskSample:
  """A QARow as the TaskSample the runner decodes.

  A ready prompt is used as it is; context + question rows get the project's QA prompt around
  the context. With a tokenizer and `num_tokens` (the context length), prompt + answer budget
  fit it, as the ReFINE scripts set max_prompt_length = max_seq_length - max_response_length:
  a longer prompt (the context alone, for context + question rows) is cut in the middle
  (cut_middle, LongBench's rule). Nothing else is added. metadata carries source, row, the
  row's task ("dataset", what scoring.score_sample scores by), all_classes and max_new_tokens
  (answer_budget; None when the row has no budget of its own)."""
  budget = answer_budget(r, max_new_tokens)
  fit = tokenizer is not None and num_tokens is not None
  room = (int(num_tokens) - (budget or 0)) if fit else None
  if fit and room <= 0:
    raise UserError(f"{r.source}:{r.row}: an answer budget of {budget} tokens leaves no room "
                    f"for the prompt in {num_tokens} tokens; raise the context length.")
  if r.prompt is not None:
    prompt = cut_middle(tokenizer, r.prompt, room) if fit else r.prompt
    target = r.answers[0]
  else:
    head = tasks_lib.QA_INTRO
    tail = tasks_lib.QA_QUESTION + tasks_lib.QA_ANSWER_PREFIX.format(question=r.question)
    context = r.context
    if fit:
      room -= len(tokenizer.encode(head + tail))
      if room <= 0:
        raise UserError(f"{r.source}:{r.row}: the question alone exceeds {num_tokens} tokens; "
                        "raise the context length.")
      context = cut_middle(tokenizer, context, room)
    prompt, target = head + context + tail, " " + r.answers[0]
  meta = {"source": r.source, "row": r.row,
          "dataset": None if r.task == "qa" else r.task,
          "all_classes": list(r.all_classes) if r.all_classes else None,
          "max_new_tokens": budget}
  return tasks_lib.TaskSample(task, prompt, r.answers, target, meta)


def samples(spec, tokenizer=None, num_tokens: int | None = None, *, limit: int | None = None,
            task: str = "qa", max_new_tokens: int = 0, length: int | None = None,
            rows: list[QARow] | None = None) -> list[tasks_lib.TaskSample]:
  """The rows of `spec` (or the already loaded `rows`) as TaskSamples (to_sample). With
  `length`, only the rows built for that context length (own_length); the first `limit`."""
  if rows is None:
    rows = load(spec, None if length is not None else limit)
  if length is not None:
    rows = [r for r in rows if own_length(r) == length]
  rows = rows[:limit]
  return [to_sample(r, tokenizer, num_tokens, task, max_new_tokens=max_new_tokens)
          for r in rows]
