"""The recall stream: whole samples in a row, disjoint train/eval seeds, multi-token values that
the queries repeat, power-law query offsets, determinism, and the pipeline's recall source."""

import ml_collections
import numpy as np
import pytest

from refine_jax.data import make_eval_batches, make_train_iterator, recall
from refine_jax.data import tasks
from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.config import default_data_config

TOK = ByteTokenizer()
SPEC = recall.RecallSpec(pairs=4, value_len=3, power_a=0.1, queries=12)


def _runs(mask):
  """(start, length) of each run of ones."""
  m = np.concatenate([[0], np.asarray(mask > 0, np.int8), [0]])
  d = np.diff(m)
  starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
  return list(zip(starts, ends - starts))


@pytest.mark.parametrize("seq_len", [128, 256, 512])
def test_whole_sample_fits_a_row_and_queries_repeat_the_pairs(seq_len):
  for i in range(20):
    s = recall.sample(TOK, seq_len, tasks.sample_seed("train", i), SPEC)
    toks, meta = s["tokens"], s["metadata"]
    assert toks.shape == (seq_len + 1,) and toks[0] == TOK.bos_id
    text = TOK.decode(toks)
    pairs = [f"{k}={v}" for k, v in zip(meta["keys"], meta["values"])]
    assert text.startswith(" ".join(pairs) + " ")  # the pairs open the row
    runs = _runs(s["value_mask"])
    assert len(runs) == SPEC.num_queries and all(n == SPEC.value_len for _, n in runs)
    for q, (start, _) in enumerate(runs):  # each query value is its key's value, after "K="
      key, value = meta["keys"][meta["order"][q]], meta["values"][meta["order"][q]]
      assert TOK.decode(toks[start - 2:start + 3]) == f"{key}={value}"
      assert s["key_mask"][start - 2] == 1
    assert sorted(set(meta["order"])) == list(range(SPEC.pairs))  # every key asked
    assert min(meta["gaps"]) > 0


def test_values_are_multi_token_and_a_rollout_holds_one():
  row = recall.row(recall.sample(TOK, 128, 3, SPEC))
  # value_mask is aligned with targets: 3 consecutive value targets per query.
  runs = _runs(row["value_mask"])
  assert all(n == 3 for _, n in runs)
  for start, n in runs:
    assert all(chr(t).isdigit() for t in row["targets"][start:start + n])
    assert chr(row["inputs"][start]) == "="
  assert row["loss_mask"].min() == 1.0  # NTP on every token


def test_deterministic_per_seed_and_seed_dependent():
  a = recall.sample(TOK, 256, 7, SPEC)
  b = recall.sample(TOK, 256, 7, SPEC)
  c = recall.sample(TOK, 256, 8, SPEC)
  assert np.array_equal(a["tokens"], b["tokens"]) and a["metadata"] == b["metadata"]
  assert not np.array_equal(a["tokens"], c["tokens"])


def test_query_offsets_follow_the_power_law():
  spec = recall.RecallSpec(pairs=4, value_len=3, power_a=0.1, queries=4)
  offsets, hay = [], None
  for i in range(600):
    meta = recall.sample(TOK, 256, tasks.sample_seed("train", i), spec)["metadata"]
    offsets += meta["offsets"]
    hay = meta["haystack_tokens"]
  offsets = np.asarray(offsets)
  # p(o) ∝ (o + 1)^(a - 1); 4 draws without replacement flatten it a little, so compare the
  # expected mass of the first tenth with a tolerance, and check it is far from uniform.
  w = (np.arange(hay + 1) + 1.0) ** (spec.power_a - 1.0)
  head = w[:hay // 10 + 1].sum() / w.sum()
  emp = np.mean(offsets <= hay // 10)
  assert emp > 0.35 and abs(emp - head) < 0.12, (emp, head)
  assert np.mean(offsets > hay // 2) > 0.05  # long gaps exist


def test_train_and_eval_rows_are_disjoint_and_lengths_scale():
  train = recall.batch(TOK, 128, 64, split="train")
  held = recall.batch(TOK, 128, 64, split="eval", base_seed=1)
  rows = {r.tobytes() for r in train["inputs"]}
  assert not any(r.tobytes() in rows for r in held["inputs"])
  long = recall.batch(TOK, 512, 4, split="eval", base_seed=1, spec=SPEC)  # 4x: more haystack
  assert long["inputs"].shape == (4, 512)
  assert np.array_equal(long["value_mask"].sum(1), [12 * 3] * 4)


def test_too_short_row_is_a_clear_error():
  with pytest.raises(ValueError, match="data.seq_len=40"):
    recall.sample(TOK, 40, 0, SPEC)


def _config(**recall_fields):
  c = ml_collections.ConfigDict()
  c.data = default_data_config()
  c.data.source, c.data.seq_len = "recall", 128
  c.data.recall.update(dict(pairs=4, queries=12, value_len=3, power_a=0.1))
  c.data.recall.update(recall_fields)
  c.train = ml_collections.ConfigDict(dict(batch_size=4))
  c.model = ml_collections.ConfigDict(dict(vocab_size=259))
  return c


def test_pipeline_rows_are_whole_samples_and_resume_exactly():
  cfg = _config()
  it = make_train_iterator(cfg)
  first = next(it)
  assert set(first) == {"inputs", "targets", "loss_mask", "segment_ids"}
  for i in range(4):  # row i of batch 0 is training sample i, whole
    want = recall.row(recall.sample(TOK, 128, tasks.sample_seed("train", i, 0), SPEC))
    assert np.array_equal(first["inputs"][i], want["inputs"])
    assert np.array_equal(first["targets"][i], want["targets"])
  state = it.get_state()
  nxt = next(it)
  it2 = make_train_iterator(cfg)
  it2.set_state(state)
  assert np.array_equal(next(it2)["inputs"], nxt["inputs"])
  held = make_eval_batches(cfg, 2)
  want = recall.row(recall.sample(TOK, 128, tasks.sample_seed("eval", 0, 1), SPEC))
  assert np.array_equal(held[0]["inputs"][0], want["inputs"])
  short = _config()
  short.data.seq_len = 40
  with pytest.raises(ValueError, match="data.seq_len=40"):
    make_train_iterator(short)
