"""t-intervals and seed-paired differences against hand-computed values; recall value scores."""

import math

import numpy as np
import pytest

from refine_jax.config import default_eval_config
from refine_jax.eval import logit_tasks, runner, stats


def test_t_interval_by_hand():
  iv = stats.t_interval([1.0, 2.0, 3.0, 4.0])
  std = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)  # 1.2910
  half = 3.182446 * std / 2.0                             # t(0.975, df=3) = 3.182446
  assert (iv["n"], iv["mean"]) == (4, 2.5)
  assert iv["std"] == pytest.approx(std)
  assert iv["half"] == pytest.approx(half, rel=1e-5)
  assert (iv["lo"], iv["hi"]) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-5)
  one = stats.t_interval([7.0])
  assert one["mean"] == 7.0 and one["std"] == 0.0 and math.isnan(one["half"])


def test_paired_differences_by_hand():
  arm = [{"recall_em": {128: 10.0, 256: 5.0}}, {"recall_em": {128: 20.0, 256: 6.0}},
         {"recall_em": {128: 33.0, 256: 7.0}}]
  ref = [{"recall_em": {128: 8.0, 256: 5.0}}, {"recall_em": {128: 15.0, 256: 6.0}},
         {"recall_em": {128: 30.0}}]
  d = stats.paired_differences(arm, ref)["recall_em"]
  # 128: diffs 2, 5, 3 -> mean 10/3, std sqrt(7/3), half = t(0.975, 2) * std / sqrt(3).
  c = d[128]
  assert c["diffs"] == [2.0, 5.0, 3.0]
  assert c["mean"] == pytest.approx(10 / 3)
  assert c["std"] == pytest.approx(math.sqrt(7 / 3))
  assert c["half"] == pytest.approx(4.302653 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-5)
  # 256: seed 3 lacks the reference cell -> two pairs, both 0.
  assert d[256]["diffs"] == [0.0, 0.0] and d[256]["half"] == 0.0
  with pytest.raises(ValueError, match="pair the same seeds"):
    stats.paired_differences(arm, ref[:2])


def test_recall_value_scores_by_hand():
  # Two rows; values are the runs of value_mask: row 0 has two values, row 1 one.
  targets = np.array([[5, 1, 2, 3, 5, 4, 4, 4], [9, 9, 7, 7, 7, 9, 9, 9]])
  mask = np.array([[0, 1, 1, 1, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0]], np.float32)
  pred = targets.copy()
  pred[0, 6] = 0          # second value of row 0: one token wrong
  pred[1, 0] = 0          # outside any value: ignored by em/tf
  nll = np.where(mask > 0, 2.0, 1.0)
  s = logit_tasks.value_scores(pred, nll, targets, mask)
  assert s["recall_em"] == pytest.approx(100 * 2 / 3)
  assert s["recall_tf"] == pytest.approx(100 * 8 / 9)
  assert s["recall_nll"] == pytest.approx((9 * 2 + 7 * 1) / 16)
  assert s["recall_value_nll"] == pytest.approx(2.0)


def test_run_eval_recall_task_writes_scores_and_plots(tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from configs import recall as recall_config  # pylint: disable=g-import-not-at-top
  from refine_jax.models import build_model  # pylint: disable=g-import-not-at-top
  cfg = recall_config.get_config()
  cfg.model.hidden, cfg.model.layers = 16, 1
  model = build_model(cfg.model, rngs=nnx.Rngs(0))
  ecfg = default_eval_config()
  ecfg.tasks, ecfg.context_lengths, ecfg.num_samples, ecfg.batch_size = "recall", "128,256", 4, 2
  ecfg.progress = False
  res = runner.run_eval(model, None, ecfg, str(tmp_path), config=cfg)
  assert set(res) == {"recall_em", "recall_tf", "recall_nll", "recall_value_nll"}
  assert all(set(row) == {128, 256} for row in res.values())
  # Every score against a direct recomputation: the same held-out rows through the model in
  # one pass, float64 log-softmax, values found by walking value_mask row by row.
  from refine_jax.data import recall  # pylint: disable=g-import-not-at-top
  from refine_jax.data.tokenizers import get_tokenizer  # pylint: disable=g-import-not-at-top
  for length in (128, 256):
    b = recall.batch(get_tokenizer(cfg.data), length, 4, base_seed=int(ecfg.base_seed),
                     spec=recall.RecallSpec.of(cfg.data.recall), add_bos=bool(cfg.data.add_bos))
    logits = np.asarray(model(b["inputs"]).logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
    hit = logits.argmax(-1) == b["targets"]
    values, value_hits, tokens, token_hits = 0, 0, 0, 0
    for r in range(len(b["targets"])):
      t = 0
      while t < length:
        if not b["value_mask"][r, t]:
          t += 1
          continue
        end = t
        while end < length and b["value_mask"][r, end]:
          end += 1
        values += 1
        value_hits += int(hit[r, t:end].all())
        tokens += end - t
        token_hits += int(hit[r, t:end].sum())
        t = end
    m = b["value_mask"] > 0
    assert values >= 4 and tokens > values  # multi-token values in every row
    assert res["recall_em"][length] == pytest.approx(100.0 * value_hits / values)
    assert res["recall_tf"][length] == pytest.approx(100.0 * token_hits / tokens)
    assert res["recall_nll"][length] == pytest.approx(nll.mean(), rel=1e-4)
    assert res["recall_value_nll"][length] == pytest.approx(nll[m].mean(), rel=1e-4)
  assert 4.0 < res["recall_nll"][128] < 7.0  # an untrained model: near ln(259) = 5.56
  for png in ("scores.png", "nll.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_run_eval_recall_scores_a_model_with_known_answers():
  """A model that predicts the true next token of the held-out rows except at chosen value
  tokens: recall_em / recall_tf through run_eval equal the hand counts (an untrained model
  scores 0 on both, which would hide a scoring path that never counts a hit)."""
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from configs import recall as recall_config  # pylint: disable=g-import-not-at-top
  from refine_jax.data import recall  # pylint: disable=g-import-not-at-top
  from refine_jax.data.tokenizers import get_tokenizer  # pylint: disable=g-import-not-at-top
  cfg = recall_config.get_config()
  spec = recall.RecallSpec.of(cfg.data.recall)
  L, N, V = 128, 4, int(cfg.model.vocab_size)
  b = recall.batch(get_tokenizer(cfg.data), L, N, base_seed=0, spec=spec,
                   add_bos=bool(cfg.data.add_bos))
  nq, vl = spec.num_queries, spec.value_len
  m = b["value_mask"] > 0
  starts = [np.nonzero(m[r] & ~np.concatenate([[False], m[r, :-1]]))[0] for r in range(N)]
  assert all(len(s) == nq for s in starts) and m.sum() == N * nq * vl
  wrong = b["targets"].copy()
  wrong[0, starts[0][0] + 1] = (wrong[0, starts[0][0] + 1] + 1) % V   # row 0: one token of one value
  for s in starts[1]:                                                 # row 1: last token of each
    wrong[1, s + vl - 1] = (wrong[1, s + vl - 1] + 1) % V

  class Oracle(nnx.Module):
    def __init__(self):
      self.rows = nnx.Variable(jnp.asarray(b["inputs"]))
      self.answers = nnx.Variable(jnp.asarray(wrong))

    def __call__(self, ids):
      r = jnp.argmax((ids[:, None, :] == self.rows[...][None]).all(-1), axis=1)
      return types.SimpleNamespace(logits=20.0 * jax.nn.one_hot(self.answers[...][r], V))

  ecfg = default_eval_config()
  ecfg.tasks, ecfg.context_lengths, ecfg.num_samples, ecfg.batch_size = "recall", str(L), N, 3
  ecfg.progress, ecfg.base_seed = False, 0
  res = runner.run_eval(Oracle(), None, ecfg, None, config=cfg)
  values, tokens = N * nq, N * nq * vl
  assert res["recall_em"][L] == pytest.approx(100.0 * (values - 1 - nq) / values)
  assert res["recall_tf"][L] == pytest.approx(100.0 * (tokens - 1 - nq) / tokens)
  # NLL of a one-hot logit of 20: log(1 + (V-1) e^-20) on a hit, that + 20 on a miss.
  hit_nll = math.log1p((V - 1) * math.exp(-20.0))
  assert res["recall_value_nll"][L] == pytest.approx(hit_nll + 20.0 * (1 + nq) / tokens,
                                                     rel=1e-4)
