"""Task generators: token length near the target, needles at the requested depths, determinism,
train/eval seed disjointness, MQAR and variable-tracking structure, QA from jsonl."""

import json

import numpy as np
import pytest

from refine_jax.data import mqar, tasks
from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.eval import scoring

TOK = ByteTokenizer()
HAYSTACK = " ".join(f"Line {i} of a local essay about rivers, bridges and the weather in spring."
                    for i in range(400))


class WordTokenizer:
  """A whitespace tokenizer: token counts differ a lot from bytes (tests tokenizer-awareness)."""
  vocab_size, bos_id, eos_id, pad_id = 100_000, 1, 2, 0

  def encode(self, text):
    return [3 + (hash(w) % 1000) for w in text.split()]

  def decode(self, ids):
    raise NotImplementedError


@pytest.mark.parametrize("tok", [TOK, WordTokenizer()], ids=["byte", "word"])
@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "niah_multivalue",
                                  "niah_multiquery", "variable_tracking"])
def test_prompt_length_within_margin(tok, task):
  targets = [1024, 4096] if isinstance(tok, ByteTokenizer) else [256, 1000]
  for target in targets:
    for haystack in ("noise", HAYSTACK):
      s = tasks.make_task(task, tok, target, seed=tasks.sample_seed("eval", target),
                          haystack=haystack)
      n = len(tok.encode(s.prompt))
      assert n == s.metadata["num_tokens"]
      # Under the target by at most one haystack unit (<= 16 words).
      margin = 120 if isinstance(tok, ByteTokenizer) else 20
      assert target - margin <= n <= target, (task, target, n)


@pytest.mark.parametrize("variant", tasks.NIAH_VARIANTS)
def test_needles_present_at_requested_depths_and_answers_score(variant):
  count = 1 if variant == "single" else 4
  depths = [0.0, 0.3, 0.6, 1.0][:count] if count > 1 else [0.35]
  s = tasks.niah(TOK, 3000, seed=11, variant=variant, depths=depths)
  context = s.prompt[len(tasks.NIAH_INTRO.format(kind="numbers")):s.prompt.index(
      "\nWhat are all")]
  haystack_chars = len(context) - sum(len(n) + 1 for n in s.metadata["needles"])
  for needle, depth in zip(s.metadata["needles"], depths):
    assert s.prompt.count(needle) == 1
    before = context[:context.index(needle)]
    hay_before = len(before) - sum(len(n) + 1 for n in s.metadata["needles"] if n in before)
    assert abs(hay_before / haystack_chars - depth) < 0.02, (needle, depth)
  assert np.allclose(s.metadata["needle_depths"], depths, atol=0.02)
  assert all(len(a) == 7 and a.isdigit() for a in s.answers)
  expected = {"single": 1, "multikey": 1, "multivalue": 4, "multiquery": 4}[variant]
  assert len(s.answers) == expected
  for a in s.answers:  # every answer is the value of a needle whose key is asked
    assert any(a in n and k in s.prompt.split("\nWhat are all")[1]
               for n, k in zip(s.metadata["needles"], s.metadata["keys"]))
  if variant == "multikey":  # the distractors carry other keys and values
    assert len(set(s.metadata["keys"])) == 4
    assert set(s.metadata["values"]) - set(s.answers)
  if variant == "multivalue":
    assert len(set(s.metadata["keys"])) == 1
  assert s.prompt.endswith(tasks.NIAH_ANSWER_PREFIX.format(
      kind="numbers", query=s.prompt.split(" mentioned in the provided text?")[0].split(
          "numbers for ")[-1]))
  assert scoring.string_match_all(s.target, s.answers) == 100.0
  assert scoring.string_match_all(" 0000000.", s.answers) == 0.0


def test_determinism_by_seed():
  a = tasks.niah(TOK, 2000, seed=5, variant="multiquery", haystack=HAYSTACK)
  b = tasks.niah(TOK, 2000, seed=5, variant="multiquery", haystack=HAYSTACK)
  c = tasks.niah(TOK, 2000, seed=6, variant="multiquery", haystack=HAYSTACK)
  assert a == b and a.prompt != c.prompt
  assert tasks.variable_tracking(TOK, 800, 3) == tasks.variable_tracking(TOK, 800, 3)
  m1, m2 = mqar.mqar_batch(4, seq_len=64, num_kv_pairs=8, vocab_size=300), mqar.mqar_batch(
      4, seq_len=64, num_kv_pairs=8, vocab_size=300)
  assert all((m1[k] == m2[k]).all() for k in m1)


def test_train_and_eval_seed_streams_are_disjoint():
  train = {tasks.sample_seed("train", i, b) for b in (0, 1, 7) for i in range(3000)}
  held = {tasks.sample_seed("eval", i, b) for b in (0, 1, 7) for i in range(3000)}
  assert len(train) == len(held) == 9000
  assert not train & held
  assert {tasks.seed_split(s) for s in train} == {"train"}
  assert {tasks.seed_split(s) for s in held} == {"eval"}
  # And the generated samples differ: no eval prompt is reproduced by the train stream.
  gen = lambda split: {tasks.niah(TOK, 400, tasks.sample_seed(split, i)).prompt
                       for i in range(100)}
  assert not gen("train") & gen("eval")
  with pytest.raises(ValueError, match="split="):
    tasks.sample_seed("test", 0)


def test_mqar_structure():
  m = mqar.mqar(seq_len=128, num_kv_pairs=16, vocab_size=259, seed=3, low=3)
  x, y, mask = m["inputs"], m["targets"], m["query_mask"]
  assert x.shape == y.shape == mask.shape == (128,) and mask.sum() == 16
  assert x.min() >= 3 and y.min() >= 3
  kv = dict(zip(x[0:32:2].tolist(), x[1:32:2].tolist()))
  assert len(kv) == 16
  for t in np.flatnonzero(mask):
    assert t >= 32 and y[t] == kv[int(x[t])]  # the query key's value is the target
  assert (x[32:][mask[32:] == 0] == 3).all()  # the filler elsewhere
  assert scoring.mqar_accuracy(y, y, mask) == 100.0
  with pytest.raises(ValueError, match="too short"):
    mqar.mqar(seq_len=40, num_kv_pairs=16, vocab_size=259, seed=0)


def test_variable_tracking_chain_and_encode_sample():
  s = tasks.variable_tracking(TOK, 1500, seed=9, num_chains=2, num_hops=3)
  chain = s.metadata["chains"][0]
  assert s.answers == tuple(chain) and len(chain) == 4
  assert f"VAR {chain[0]} = {s.metadata['values'][0]}." in s.prompt
  for a, b in zip(chain, chain[1:]):
    assert s.prompt.index(f"VAR {a} =") < s.prompt.index(f"VAR {b} = VAR {a}.")
  assert not set(s.metadata["chains"][1]) & set(chain)
  enc = tasks.encode_sample(TOK, s)
  ids, mask = enc["input_ids"], enc["loss_mask"]
  p = int(enc["prompt_len"])
  assert ids[0] == TOK.bos_id and ids[-1] == TOK.eos_id
  assert TOK.decode(ids[:p]) == s.prompt and TOK.decode(ids[p:]) == s.target
  assert mask[:p].sum() == 0 and (mask[p:] == 1).all()


def test_too_small_target_is_a_clear_error():
  with pytest.raises(ValueError, match="num_tokens=50 is too small for niah_multiquery"):
    tasks.niah(TOK, 50, seed=0, variant="multiquery")
  with pytest.raises(ValueError, match="depths="):
    tasks.niah(TOK, 1000, seed=0, variant="single", depths=[1.5])


def test_qa_from_jsonl(tmp_path):
  from refine_jax.eval import qa_files  # pylint: disable=g-import-not-at-top
  path = tmp_path / "qa.jsonl"
  rows = [{"context": "Paris is the capital of France. " * 200, "input": "Capital of France?",
           "answers": ["Paris"]}, {"context": "short", "question": "q?", "answers": "a"}]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  samples = qa_files.samples(str(path), TOK, 1000)
  assert [s.answers for s in samples] == [("Paris",), ("a",)]
  assert len(TOK.encode(samples[0].prompt)) <= 1000
  assert samples[0].prompt.endswith("Question: Capital of France?\nAnswer:")
  (tmp_path / "bad.jsonl").write_text('{"context": "x"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:0"):
    qa_files.samples(str(tmp_path / "bad.jsonl"))
  with pytest.raises(FileNotFoundError):
    qa_files.samples(str(tmp_path / "missing.jsonl"))


def test_task_batch_masks_prompt_and_answer():
  samples = [tasks.niah(TOK, 500, seed=i, variant="single") for i in range(2)]
  b = tasks.task_batch(TOK, samples, 600)
  for i, s in enumerate(samples):
    p = int(b["prompt_len"][i])
    n = p + len(TOK.encode(s.target)) + 1  # bos + prompt + answer + eos
    np.testing.assert_array_equal(b["inputs"][i, 1:n - 1], b["targets"][i, :n - 2])
    # Targets at t < p - 1 are prompt tokens; from p - 1 on they are answer tokens + eos.
    np.testing.assert_array_equal(b["prompt_mask"][i, :p - 1], 1)
    np.testing.assert_array_equal(b["loss_mask"][i, p - 1:n - 1], 1)
    assert b["loss_mask"][i].sum() == n - p and b["prompt_mask"][i].sum() == p - 1
    assert TOK.decode(b["targets"][i][b["loss_mask"][i] > 0]) == s.target
    assert (b["inputs"][i, n - 1:] == TOK.pad_id).all()
  with pytest.raises(ValueError, match="seq_len"):
    tasks.task_batch(TOK, samples, 300)
