"""Grain pipeline: determinism, shard disjointness, packing boundaries, exact resume."""

import json
import re

import ml_collections
import numpy as np
import pytest

from refine_jax.data import make_eval_batches, make_train_iterator
from refine_jax.data.tokenizers import ByteTokenizer
from refine_jax.config import default_data_config

TOK = ByteTokenizer()
NUM_DOCS = 60


def _doc(i):
  # Unique, self-identifying documents of varied length: "<D17>" markers repeat inside.
  return " ".join([f"<D{i}> word{j}" for j in range(5 + (i * 7) % 40)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("pipe") / "docs.jsonl"
  path.write_text("".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(NUM_DOCS)))
  return str(path)


def _config(corpus, **data):
  c = ml_collections.ConfigDict()
  c.data = default_data_config()
  c.data.update(dict(source="jsonl", path=corpus, seq_len=64, holdout_every=10,
                     synthetic_weight=0.0, shuffle_window=8))
  c.data.update(data)
  c.train = ml_collections.ConfigDict(dict(batch_size=4))
  c.model = ml_collections.ConfigDict(dict(vocab_size=259))
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _doc_ids(batches):
  ids = set()
  for b in batches:
    for row in b["inputs"]:
      ids |= {int(m) for m in re.findall(r"<D(\d+)>", TOK.decode(row))}
  return ids


def test_batch_layout_and_packing_boundaries(corpus):
  batches = _take(make_train_iterator(_config(corpus)), 20)
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == b["loss_mask"].shape == (4, 64)
    assert b["inputs"].dtype == b["targets"].dtype == np.int32
    assert b["loss_mask"].dtype == np.float32
    for x, y, m, s in zip(b["inputs"], b["targets"], b["loss_mask"], b["segment_ids"]):
      np.testing.assert_array_equal(x[1:], y[:-1])  # targets are inputs shifted by one
      # A target that starts a document (its bos) is never predicted across the boundary;
      # everything inside a document is.
      starts = y == TOK.bos_id
      np.testing.assert_array_equal(m, (~starts).astype(np.float32))
      np.testing.assert_array_equal(np.diff(s)[starts[:-1]], 1)
      assert not (x == TOK.pad_id).any()  # packing leaves no padding in an endless stream


def test_deterministic_and_seed_dependent(corpus):
  a = _take(make_train_iterator(_config(corpus)), 15)
  b = _take(make_train_iterator(_config(corpus)), 15)
  c = _take(make_train_iterator(_config(corpus, shuffle_seed=1)), 15)
  assert _same(a, b) and not _same(a, c)


def test_shards_are_disjoint_and_cover_the_train_split(corpus):
  cfg = _config(corpus)
  seen = [_doc_ids(_take(make_train_iterator(cfg, shard_index=s, shard_count=2), 120))
          for s in range(2)]
  train_ids = {i for i in range(NUM_DOCS) if i % 10}
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == train_ids
  # The per-shard batch is the global batch over the shard count.
  assert next(make_train_iterator(cfg, shard_index=1, shard_count=2))["inputs"].shape == (2, 64)


def test_eval_batches_are_fixed_and_held_out(corpus):
  cfg = _config(corpus)
  e1, e2 = make_eval_batches(cfg, 3), make_eval_batches(cfg, 3)
  assert len(e1) == 3 and _same(e1, e2)
  assert _doc_ids(e1) <= {i for i in range(NUM_DOCS) if i % 10 == 0}
  assert not _doc_ids(e1) & _doc_ids(_take(make_train_iterator(cfg), 60))
  cfg.data.eval_batch_size = 2
  assert make_eval_batches(cfg, 1)[0]["inputs"].shape == (2, 64)


def test_state_restore_continues_exactly_with_synthetic_mix(corpus):
  # Window of 8 rows = 2 batches: restore at its start, middle, end and from a fresh iterator.
  cfg = _config(corpus, synthetic_weight=0.3, seq_len=128, synthetic_min_tokens=64)
  straight = _take(make_train_iterator(cfg), 14)
  for k in (0, 1, 2, 3, 7):
    it = make_train_iterator(cfg)
    _take(it, k)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    restored = make_train_iterator(cfg)
    restored.set_state(state)
    assert _same(_take(restored, 6), straight[k:k + 6]), k
  text = "".join(TOK.decode(r) for b in straight for r in b["inputs"])
  assert "special magic" in text or "VAR " in text  # synthetic samples are in the mix


def test_orbax_grain_checkpoint_handler_roundtrip(corpus, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  cfg = _config(corpus, synthetic_weight=0.2, seq_len=128)
  it = make_train_iterator(cfg)
  _take(it, 5)
  ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  ckpt.save(tmp_path / "data", args=grain.checkpoint.CheckpointSave(it))
  expected = _take(it, 4)
  restored = ckpt.restore(tmp_path / "data",
                          args=grain.checkpoint.CheckpointRestore(make_train_iterator(cfg)))
  assert _same(_take(restored, 4), expected)


def test_reader_threads_do_not_change_batches(corpus):
  cfg = _config(corpus, synthetic_weight=0.2, seq_len=128)
  threaded = _config(corpus, synthetic_weight=0.2, seq_len=128, read_threads=2)
  assert _same(_take(make_train_iterator(cfg), 8), _take(make_train_iterator(threaded), 8))


def test_synthetic_samples_differ_across_shards(corpus):
  cfg = _config(corpus, synthetic_weight=0.5, seq_len=128, synthetic_min_tokens=64,
                synthetic_tasks="niah_single")
  needles = []
  for s in range(2):
    text = "".join(TOK.decode(r) for b in _take(make_train_iterator(
        cfg, shard_index=s, shard_count=2), 30) for r in b["inputs"])
    needles.append(set(re.findall(r"numbers for ([a-z]+-[a-z]+) is: (\d{7})", text)))
  assert needles[0] and needles[1] and not needles[0] & needles[1]


def test_config_errors_name_the_field(corpus):
  with pytest.raises(ValueError, match="train.batch_size=4 is not divisible by shard_count=3"):
    make_train_iterator(_config(corpus), shard_index=0, shard_count=3)
  cfg = _config(corpus)
  cfg.model.vocab_size = 256
  with pytest.raises(ValueError, match="model.vocab_size=256"):
    make_train_iterator(cfg)
  with pytest.raises(ValueError, match="data.synthetic_tasks"):
    make_train_iterator(_config(corpus, synthetic_weight=0.1, synthetic_tasks="niah_single,x"))
  with pytest.raises(ValueError, match="shard_index=2"):
    make_train_iterator(_config(corpus), shard_index=2, shard_count=2)


def test_synthetic_sample_loss_modes_and_corpus_haystack(corpus):
  from refine_jax.data import pipeline, tasks
  cfg = _config(corpus, synthetic_tasks="niah_single", seq_len=512,
                synthetic_haystack="corpus", synthetic_loss="answer").data
  docs = [_doc(i) for i in range(3)]
  seed = tasks.sample_seed("train", 4)
  s = pipeline.synthetic_sample(TOK, cfg, seed, haystack_docs=docs)
  text = TOK.decode(s["tokens"])
  assert "<D" in text and "The grass is green" not in text
  answer = TOK.decode(s["tokens"][s["weights"] > 0])
  assert re.fullmatch(r" \d{7}\.", answer)  # eos is weighted too but decodes to nothing
  cfg.synthetic_loss, cfg.synthetic_haystack = "all", "noise"
  s = pipeline.synthetic_sample(TOK, cfg, seed, haystack_docs=docs)
  assert (s["weights"] == 1).all() and "The grass is green" in TOK.decode(s["tokens"])


def test_held_out_text_is_not_training_text(corpus):
  from refine_jax.data import pipeline
  text = pipeline.held_out_text(_config(corpus))
  assert {int(m) for m in re.findall(r"<D(\d+)>", text)} == set(range(0, NUM_DOCS, 10))


def test_synthetic_mixing_is_opt_in(corpus):
  from configs import base, midtrain, posttrain, pretrain, recall, ttt
  assert default_data_config().synthetic_weight == 0.0
  assert base.get_config().data.synthetic_weight == 0.0
  # Only the demo configs whose eval asks NIAH / variable-tracking questions mix them in.
  assert [m.get_config().data.synthetic_weight for m in (pretrain, midtrain, posttrain, ttt)] \
      == [0.1] * 4
  assert recall.get_config().data.synthetic_weight == 0.0
  cfg = _config(corpus, seq_len=128)
  cfg.data.synthetic_weight = default_data_config().synthetic_weight
  text = "".join(TOK.decode(b["inputs"][i]) for b in _take(make_train_iterator(cfg), 12)
                 for i in range(4))
  assert "<D" in text and "special magic" not in text and "VAR " not in text
