"""Mean ± std over seeds, paper-style tables and the experiment runner's config plumbing."""

import json

import numpy as np
import pytest

from refine_jax import experiments
from refine_jax.eval import report

# Hand-made per-seed results: {task: {context_len: score}}.
SFT = [{"niah_single": {512: 10.0, 1024: 0.0}, "perplexity": {512: 9.0}},
       {"niah_single": {512: 20.0, 1024: 10.0}, "perplexity": {512: 11.0}},
       {"niah_single": {512: 30.0, 1024: 20.0}, "perplexity": {512: 10.0}}]
RFN = [{"niah_single": {512: 40.0, 1024: 20.0}, "perplexity": {512: 8.0}},
       {"niah_single": {512: 40.0, 1024: 40.0}, "perplexity": {512: 8.0}},
       {"niah_single": {512: 70.0, 1024: 30.0}, "perplexity": {512: 8.0}}]


def test_aggregate_mean_and_sample_std():
  agg = report.aggregate(SFT)
  assert agg["niah_single"][512] == pytest.approx((20.0, 10.0))     # std ddof=1 of 10,20,30
  assert agg["niah_single"][1024] == pytest.approx((10.0, 10.0))
  # avg: per-seed means over lengths 5, 15, 25 -> mean 15, std 10.
  assert agg["niah_single"]["avg"] == pytest.approx((15.0, 10.0))
  assert agg["perplexity"][512] == pytest.approx((10.0, 1.0))
  one = report.aggregate(SFT[:1])
  assert one["niah_single"][512] == (10.0, 0.0)


def test_aggregate_skips_missing_cells():
  agg = report.aggregate([{"t": {1: 1.0, 2: 5.0}}, {"t": {1: 3.0}}])
  assert agg["t"][1] == pytest.approx((2.0, np.std([1, 3], ddof=1)))
  assert agg["t"][2] == (5.0, 0.0)


def test_experiment_tables_and_summary_files(tmp_path):
  summary = experiments.summarize({"sft_mid": SFT, "refine_mid": RFN}, seeds=[0, 1, 2],
                                  reference="sft_mid")
  md = "\n".join(summary["tables"])
  # niah_single at 512: sft 10, 20, 30 -> 20 ± 10, half = t(0.975, 2) * 10 / sqrt(3) = 24.84.
  assert "| sft_mid | 3 | 20.0 [-4.8, 44.8] | 10.0 [-14.8, 34.8] |" in md
  # refine - sft per seed at 512: 30, 20, 40 -> 30 ± 10 [5.2, 54.8].
  assert "| refine_mid | niah_single | 30.0 ± 10.0 [5.2, 54.8] | 20.0 ± 10.0 [-4.8, 44.8] |" in md
  # perplexity (lower is better) 8 - (9, 11, 10) = -1, -3, -2 -> -2 ± 1.
  assert "| refine_mid | perplexity | -2.00 ± 1.00 [-4.48, 0.48] |" in md
  assert summary["aggregate"]["refine_mid"]["niah_single"]["avg"] == pytest.approx((40.0, 10.0))
  paths = experiments.write_summary(summary, str(tmp_path))
  data = json.loads(open(paths["json"]).read())
  assert data["aggregate"]["refine_mid"]["niah_single"]["avg"] == pytest.approx([40.0, 10.0])
  assert data["per_seed"]["sft_mid"][2]["niah_single"]["1024"] == 20.0
  assert data["paired"]["refine_mid"]["niah_single"]["512"]["diffs"] == [30.0, 20.0, 40.0]
  assert open(paths["png"], "rb").read(4) == b"\x89PNG"
  assert "| sft_mid | 3 | 20.0 [-4.8, 44.8]" in open(paths["md"]).read()


def test_eval_plots_label_every_length_and_keep_zero_lines_visible(tmp_path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  captured = {}
  real_save = report.save_png
  report.save_png = lambda fig, path: captured.setdefault(path, fig.axes[0])
  try:
    report.plot_results({"a": {128: 0.0, 256: 0.0, 512: 0.0}, "b": {128: 0.0, 512: 0.0},
                         "recall_nll": {128: 2.01, 256: 2.02}}, str(tmp_path))
  finally:
    report.save_png = real_save
  scores = captured[str(tmp_path / report.SCORES_PNG)]
  assert [t.get_text() for t in scores.get_xticklabels()] == ["128", "256", "512"]
  lines = scores.get_lines()
  assert len({l.get_marker() for l in lines}) == 2  # own marker per series
  assert lines[0].get_xdata()[0] != lines[1].get_xdata()[0]  # offset so both stay visible
  nll = captured[str(tmp_path / report.NLL_PNG)]
  assert nll.get_ylim()[0] == 0.0  # no zoom into a 0.01 difference
  plt.close("all")


def test_plots_say_what_they_show(tmp_path):
  """_tf rows are named teacher-forced in the legend, the figure and results.md; a metric at
  one context length is drawn as its number, not as a single point on an axis."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  captured = {}
  real_save = report.save_png
  report.save_png = lambda fig, path: captured.setdefault(path, fig)
  try:
    report.plot_results({"niah_single": {512: 0.0, 1024: 0.0},
                         "niah_single_tf": {512: 10.0, 1024: 20.0},
                         "perplexity": {512: 12.34}}, str(tmp_path))
  finally:
    report.save_png = real_save
  scores = captured[str(tmp_path / report.SCORES_PNG)]
  assert [t.get_text() for t in scores.axes[0].get_legend().get_texts()] == [
      "niah_single", "niah_single_tf (teacher-forced)"]
  assert any("teacher-forced accuracy" in t.get_text() for t in scores.texts)
  ppl = captured[str(tmp_path / report.PERPLEXITY_PNG)].axes[0]
  assert not ppl.axison
  assert [t.get_text() for t in ppl.texts] == ["12.34", "perplexity at 512 tokens"]
  md = report.markdown_table({"niah_single_tf": {512: 10.0}})
  assert "teacher-forced accuracy" in md


def test_markdown_table_of_one_run():
  md = report.markdown_table({"a": {512: 50.0, 1024: 25.0}, "b": {1024: 10.0}})
  assert md.splitlines() == ["| task | 512 | 1024 | avg |", "|---|---|---|---|",
                             "| a | 50.0 | 25.0 | 37.5 |", "| b | - | 10.0 | 10.0 |"]


def test_arm_specs_and_overrides():
  assert experiments.parse_arm("configs/midtrain.py stage=pretrain | configs/pretrain.py") == [
      ("configs/midtrain.py", "stage=pretrain"), ("configs/pretrain.py", "")]
  with pytest.raises(ValueError, match="empty stage"):
    experiments.parse_arm("a.py | ")
  cfg = experiments.stage_config("configs/pretrain.py", "train.lr=0.5 model.arch=gated_deltanet",
                                 common="train.batch_size=4 checkpoint.async_save=false",
                                 seed=2, steps=7, init="/x")
  assert (cfg.train.lr, cfg.model.arch, cfg.train.batch_size) == (0.5, "gated_deltanet", 4)
  assert cfg.checkpoint.async_save is False
  assert (cfg.seed, cfg.data.shuffle_seed, cfg.train.steps, cfg.init_checkpoint) == (2, 2, 7, "/x")
  with pytest.raises(ValueError, match="no field"):
    experiments.apply_overrides(cfg, "train.nope=1")
  with pytest.raises(ValueError, match="key=value"):
    experiments.apply_overrides(cfg, "train.lr")


def test_arms_must_match_in_optimiser_updates():
  from configs import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.get_config()
  budgets = experiments.check_matched(exp, ["sft_mid", "refine_cos", "refine_bin"])
  # ReFINE: refine.ppo_epochs=2 updates per batch; the SFT arm: train.ntp_epochs=2.
  assert {b["updates"] for b in budgets.values()} == {2 * exp.steps}
  exp.arms.sft_mid = "configs/recall.py stage=pretrain"  # one update per batch: unmatched
  with pytest.raises(ValueError, match=r"sft_mid: batch \[16\], 100 steps, 100 updates"):
    experiments.check_matched(exp, ["sft_mid", "refine_cos"])
  exp.allow_unmatched = True
  assert experiments.check_matched(exp, ["sft_mid", "refine_cos"])["sft_mid"]["updates"] == 100
