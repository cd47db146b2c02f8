"""t-intervals and seed-paired differences against hand-computed values; recall value scores."""

import math

import numpy as np
import pytest

from refine_jax.eval import runner, stats


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
  s = runner.value_scores(pred, nll, targets, mask)
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
  ecfg = runner.default_eval_config()
  ecfg.tasks, ecfg.context_lengths, ecfg.num_samples, ecfg.batch_size = "recall", "128,256", 4, 2
  ecfg.progress = False
  res = runner.run_eval(model, None, ecfg, str(tmp_path), config=cfg)
  assert set(res) == {"recall_em", "recall_tf", "recall_nll", "recall_value_nll"}
  assert all(set(row) == {128, 256} for row in res.values())
  assert 0.0 <= res["recall_tf"][128] <= 100.0
  assert 4.0 < res["recall_nll"][128] < 7.0  # an untrained model: near ln(259) = 5.56
  for png in ("scores.png", "nll.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
