"""NTP vs ReFINE experiment: several training arms x seeds from one NTP checkpoint, evaluated
and summarised as a paper-style table (mean ± std over seeds) and a plot.

  python -m refine_jax.experiments --config=configs/experiment.py \\
      [--config.checkpoint=runs/pretrain-deltanet] [--workdir=runs/experiment]

Each arm is a chain of stage configs run one after another, each stage starting from the
previous one's weights (the first from `checkpoint`); every stage of every arm gets the same
number of steps (`steps`), the same common overrides and, per seed, the same `seed` and
data.shuffle_seed, so arms differ only in their training objective. Arm spec syntax:

    "CONFIG.py key=value key=value | CONFIG2.py key=value"

e.g. SFT-mid = "configs/midtrain.py stage=pretrain" (the midtrain data and optimiser with the
NTP-only loop) and ReFINE-mid = "configs/midtrain.py". With no `checkpoint`, one is pretrained
first (pretrain_config) in <workdir>/pretrain. The base model is evaluated once as arm "base".
Everything resumes: finished stages are skipped by the stages' own resume logic and evaluated
runs keep their results.json. Outputs in <workdir>: experiment.json (per-seed results and
aggregates), experiment.md (tables), experiment.png.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys

import ml_collections

from refine_jax import cli
from refine_jax import paths as path_io
from refine_jax.eval import report

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- configs


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of a config file (relative paths: cwd first, then the repo root)."""
  cands = [path] if os.path.isabs(path) else [path, os.path.join(_REPO, path)]
  found = next((p for p in cands if os.path.isfile(p)), None)
  if found is None:
    raise FileNotFoundError(f"config file {path!r} not found (looked in {cands}).")
  name = "_experiment_cfg_" + os.path.splitext(os.path.basename(found))[0]
  spec = importlib.util.spec_from_file_location(name, found)
  module = importlib.util.module_from_spec(spec)
  if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
  spec.loader.exec_module(module)
  return module.get_config()


def _convert(old, text: str, key: str):
  if isinstance(old, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"override {key}={text!r}: expected true/false.")
  if isinstance(old, int):
    return int(text)
  if isinstance(old, float):
    return float(text)
  if isinstance(old, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: str | list[str]):
  """Applies "a.b=v c=w" (whitespace-separated key=value; the existing field's type wins)."""
  items = overrides.split() if isinstance(overrides, str) else list(overrides)
  with cfg.unlocked():
    for item in items:
      if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value (e.g. train.steps=100).")
      key, text = item.split("=", 1)
      *parents, leaf = key.split(".")
      node = cfg
      for p in parents:
        if p not in node:
          raise ValueError(f"override {key}: config has no section {p!r}.")
        node = node[p]
      if leaf not in node:
        raise ValueError(f"override {key}: config has no field {leaf!r}; check the name.")
      node[leaf] = _convert(node[leaf], text, key)
  return cfg


def parse_arm(spec: str) -> list[tuple[str, str]]:
  """"a.py k=v | b.py" -> [("a.py", "k=v"), ("b.py", "")]."""
  stages = []
  for part in spec.split("|"):
    words = part.split()
    if not words:
      raise ValueError(f"arm spec {spec!r} has an empty stage; use 'CONFIG.py k=v | ...'.")
    stages.append((words[0], " ".join(words[1:])))
  return stages


def _seeds(value) -> list[int]:
  seeds = [int(s) for s in str(value).replace(",", " ").split()] if isinstance(value, str) \
      else [int(s) for s in value]
  if not seeds:
    raise ValueError("seeds is empty: give e.g. '0,1,2'.")
  return seeds


def stage_config(path: str, overrides: str, *, common: str, seed: int, steps: int,
                 init: str) -> ml_collections.ConfigDict:
  """One stage's resolved config for an arm/seed."""
  cfg = load_config_file(path)
  apply_overrides(cfg, common)
  apply_overrides(cfg, overrides)
  with cfg.unlocked():
    cfg.seed = int(seed)
    if "shuffle_seed" in cfg.data:
      cfg.data.shuffle_seed = int(seed)
    if steps > 0:
      cfg.train.steps = int(steps)
    cfg.init_checkpoint = init
    for section in ("midtrain", "posttrain"):
      if section in cfg:  # the experiment evaluates each arm itself and always gives init
        if "run_eval" in cfg[section]:
          cfg[section].run_eval = False
        if "warmup_steps" in cfg[section]:
          cfg[section].warmup_steps = 0
  return cfg


# ----------------------------------------------------------------------------- running


def _run_stage(cfg, workdir):
  # pylint: disable-next=g-import-not-at-top
  from refine_jax.train import init_checkpoint, stages, validate
  cfg = init_checkpoint.resolve(cfg)  # a hub id / HF dir / bundle brings its model + tokenizer
  validate.validate_config(cfg)
  print(f"experiment: stage {cfg.stage} -> {workdir}", flush=True)
  return stages.get_stage(cfg.stage)(cfg, workdir)


def _evaluate(run_dir: str, ecfg, model=None, run_config=None, title="eval",
              predict_fn=None, source: str = "") -> dict:
  """<run_dir>/eval results (kept when they exist); the model is `model` or loaded from
  `source`."""
  out = path_io.join(run_dir, "eval")
  if path_io.isfile(path_io.join(out, report.RESULTS_JSON)):
    return report.load_results(out)
  from refine_jax.data.tokenizers import get_tokenizer  # pylint: disable=g-import-not-at-top
  from refine_jax.eval import runner  # pylint: disable=g-import-not-at-top
  if model is None or run_config is None:
    model, run_config = _load(source)
  return runner.run_eval(model, get_tokenizer(run_config.data), ecfg, out, config=run_config,
                         title=title, predict_fn=predict_fn)


def arm_names(exp) -> list[str]:
  order = [a.strip() for a in str(exp.arm_order).split(",") if a.strip()]
  names = order or list(exp.arms.keys())
  missing = [a for a in names if a not in exp.arms]
  if missing:
    raise ValueError(f"arm_order names {missing} that are not in arms ({list(exp.arms)}).")
  return names


def run_experiment(exp, workdir: str) -> dict:
  """Runs every arm x seed (training + eval), writes the summary; returns it."""
  from refine_jax.train import validate  # pylint: disable=g-import-not-at-top
  validate.check_workdir(workdir)
  workdir = path_io.norm(workdir)
  path_io.makedirs(workdir)
  _compilation_cache(exp, workdir)
  ecfg = exp.eval
  seeds, names = _seeds(exp.seeds), arm_names(exp)
  for name in names:  # fail on a bad spec before hours of training
    for path, ov in parse_arm(exp.arms[name]):
      apply_overrides(load_config_file(path), exp.overrides + " " + ov)

  base = exp.checkpoint
  if not base:
    base = path_io.join(workdir, "pretrain")
    cfg = load_config_file(exp.pretrain_config)
    apply_overrides(cfg, exp.pretrain_overrides)
    _run_stage(cfg, base)
  per_arm: dict[str, list[dict]] = {}
  if exp.eval_base:
    per_arm["base"] = [_evaluate(path_io.join(workdir, "base"), ecfg, title="base",
                                 source=base)]

  for name in names:
    per_arm[name] = []
    for seed in seeds:
      per_arm[name].append(_run_arm(exp, name, seed, base, workdir))
  summary = summarize(per_arm, seeds=seeds)
  write_summary(summary, workdir, title=exp.title)
  print(summary["table"])
  print(f"wrote {path_io.join(workdir, 'experiment.md')}")
  return summary


def _compilation_cache(exp, workdir):
  """Seeds of one arm compile the same programs; a persistent cache compiles them once."""
  if not exp.get("compilation_cache", True):
    return
  import jax  # pylint: disable=g-import-not-at-top
  try:
    if not jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", path_io.join(workdir, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except (AttributeError, ValueError) as e:  # an older/newer jax without these options
    print(f"experiment: no persistent compilation cache ({e})")


def _run_arm(exp, name: str, seed: int, base: str, workdir: str) -> dict:
  """Trains one arm for one seed (stage after stage) and evaluates its last model. A final
  stage with stage=ttt trains nothing: the eval answers with test-time training instead."""
  specs = parse_arm(exp.arms[name])
  cfgs = []
  for path, ov in specs:
    cfgs.append(stage_config(path, ov, common=exp.overrides, seed=seed, steps=int(exp.steps),
                             init=""))
  ttt_cfg = cfgs.pop() if cfgs and cfgs[-1].stage == "ttt" else None
  if any(c.stage == "ttt" for c in cfgs):
    raise ValueError(f"arm {name!r}: a ttt stage can only be the last one.")
  arm_dir = path_io.join(workdir, name, f"seed{seed}")
  eval_dir = path_io.join(arm_dir, "eval")
  title = f"{name} seed {seed}"
  if path_io.isfile(path_io.join(eval_dir, report.RESULTS_JSON)):
    return report.load_results(eval_dir)  # trained and evaluated by an earlier run
  init, result, cfg = base, None, None
  for i, cfg in enumerate(cfgs):
    run_dir = path_io.join(arm_dir, f"stage{i}")
    with cfg.unlocked():
      cfg.init_checkpoint = init
    result = _run_stage(cfg, run_dir)
    init = run_dir
  model = getattr(result, "model", None)
  if model is None:  # a stage that returns no live model (or a ttt-only arm)
    model, cfg = _load(init)
  predict_fn = None
  if ttt_cfg is not None:
    from refine_jax.data.tokenizers import get_tokenizer  # pylint: disable=g-import-not-at-top
    from refine_jax.train import ttt  # pylint: disable=g-import-not-at-top
    tok = get_tokenizer(ttt_cfg.data)
    predict_fn = lambda prompts, n: ttt.answer_with_ttt(model, ttt_cfg, list(prompts),
                                                        tokenizer=tok, max_new_tokens=n)
  return _evaluate(arm_dir, exp.eval, model, cfg, title=title, predict_fn=predict_fn)


def _load(checkpoint):
  from refine_jax.pretrained import load_pretrained  # pylint: disable=g-import-not-at-top
  return load_pretrained(checkpoint)


# ----------------------------------------------------------------------------- summary


def summarize(per_arm: dict[str, list[dict]], *, seeds=None) -> dict:
  """{arm: [results per seed]} -> aggregates, the average table and one table per length."""
  agg = {arm: report.aggregate(rs) for arm, rs in per_arm.items()}
  lengths = sorted({n for a in agg.values() for cells in a.values() for n in cells
                    if n != "avg"})
  tables = [report.experiment_table(agg, title="average over context lengths (mean ± std "
                                               "over seeds)")]
  tables += [report.experiment_table(agg, column=n, title=f"context length {n}")
             for n in lengths]
  return {"seeds": list(seeds) if seeds is not None else None, "per_seed": per_arm,
          "aggregate": agg, "table": tables[0], "tables": tables}


def write_summary(summary: dict, workdir: str, title: str = "NTP vs ReFINE") -> dict:
  paths = {k: path_io.join(workdir, f"experiment.{k}") for k in ("json", "md", "png")}
  agg_json = {arm: {t: {str(n): list(v) for n, v in cells.items()} for t, cells in a.items()}
              for arm, a in summary["aggregate"].items()}
  per_seed = {arm: [{t: {str(n): v for n, v in row.items()} for t, row in r.items()}
                    for r in rs] for arm, rs in summary["per_seed"].items()}
  path_io.write_text(paths["json"], json.dumps(
      {"seeds": summary["seeds"], "per_seed": per_seed, "aggregate": agg_json}, indent=2))
  path_io.write_text(paths["md"], f"# {title}\n\n" + "\n".join(summary["tables"]))
  report.plot_experiment(summary["aggregate"], paths["png"], title=title)
  return paths


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}; use --config.field=value")
  exp = _CONFIG.value
  if exp is None:
    raise SystemExit("--config=configs/experiment.py is required")
  run_experiment(exp, _WORKDIR.value or os.path.join("runs", "experiment"))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/experiment.py",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "default runs/experiment")
  cli.run(main)
