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


def test_experiment_table_and_summary_files(tmp_path):
  summary = experiments.summarize({"sft_mid": SFT, "refine_mid": RFN}, seeds=[0, 1, 2])
  lines = summary["table"].strip().splitlines()
  assert lines[2] == "| arm | niah_single | perplexity |"
  assert lines[4] == "| sft_mid | 15.0 ± 10.0 | 10.00 ± 1.00 |"
  # refine_mid niah avg per seed: 30, 40, 50 -> 40 ± 10.
  assert lines[5] == "| refine_mid | 40.0 ± 10.0 | 8.00 ± 0.00 |"
  per_len = [t for t in summary["tables"] if "context length 1024" in t][0]
  assert "| refine_mid | 30.0 ± 10.0 | - |" in per_len
  paths = experiments.write_summary(summary, str(tmp_path))
  data = json.loads(open(paths["json"]).read())
  assert data["aggregate"]["refine_mid"]["niah_single"]["avg"] == pytest.approx([40.0, 10.0])
  assert data["per_seed"]["sft_mid"][2]["niah_single"]["1024"] == 20.0
  assert open(paths["png"], "rb").read(4) == b"\x89PNG"
  assert "| sft_mid | 15.0 ± 10.0 | 10.00 ± 1.00 |" in open(paths["md"]).read()


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
