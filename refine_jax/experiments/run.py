"""Running an experiment: the gated base, every arm x seed (training, then eval), the summary.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import platform
import time

import jax
import ml_collections

from refine_jax import paths as path_io
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.eval import gate as gate_lib
from refine_jax.eval import logit_tasks, report, runner
from refine_jax.experiments.arms import (apply_overrides, arm_names, check_matched,
                                         load_config_file, parse_arm, stage_config, _seeds)
from refine_jax.experiments.diagnostics import diagnostics as _diagnostics
from refine_jax.experiments.summary import summarize, write_summary, write_void
from refine_jax.pretrained import load_pretrained
from refine_jax.train import init_checkpoint, stages, ttt, validate


def run_experiment(exp, workdir: str) -> dict:
  """Runs every arm x seed (training + eval), writes the summary; returns it. With the headroom
  gate on (exp.gate.enabled, no exp.checkpoint) a base outside the band makes the experiment
  void: experiment.json/.md say why and no arm is trained."""
  t0 = time.time()
  validate.check_workdir(workdir)
  workdir = path_io.norm(workdir)
  path_io.makedirs(workdir)
  _compilation_cache(exp, workdir)
  ecfg = exp.eval
  seeds, names = _seeds(exp.seeds), arm_names(exp)
  for name in names:  # fail on a bad spec before hours of training
    for path, ov in parse_arm(exp.arms[name]):
      apply_overrides(load_config_file(path), exp.overrides + " " + ov)
  budgets = check_matched(exp, names)

  base, gate_result = exp.checkpoint, None
  if not base:
    base, gate_result = _pretrain_base(exp, workdir)
  meta = {"budgets": budgets, "base": base, "gate": gate_result,
          "wall_s": {"base": round(time.time() - t0, 1)}, "environment": environment()}
  if gate_result is not None and not gate_result["ok"]:
    paths = write_void(workdir, gate_result["reason"], title=exp.title, meta=meta)
    print(f"experiment VOID: {gate_result['reason']}\nwrote {paths['md']}")
    return {"void": True, "reason": gate_result["reason"], "meta": meta}
  per_arm: dict[str, list[dict]] = {}
  diagnostics: dict[str, list[dict]] = {}
  if exp.eval_base:
    per_arm["base"] = [_evaluate(path_io.join(workdir, "base"), ecfg, title="base",
                                 source=base)]
    diagnostics["base"] = [_diagnostics(exp, path_io.join(workdir, "base"), None, base)]

  for name in names:
    per_arm[name], diagnostics[name] = [], []
    for seed in seeds:
      t_arm = time.time()
      res, run_dir = _run_arm(exp, name, seed, base, workdir)
      per_arm[name].append(res)
      diagnostics[name].append(_diagnostics(exp, path_io.join(workdir, name, f"seed{seed}"),
                                            run_dir, run_dir))
      meta["wall_s"][f"{name}/seed{seed}"] = round(time.time() - t_arm, 1)
  meta["wall_s"]["total"] = round(time.time() - t0, 1)
  reference = str(exp.reference) or names[0]
  summary = summarize(per_arm, seeds=seeds, reference=reference, diagnostics=diagnostics,
                      meta=meta)
  write_summary(summary, workdir, title=exp.title)
  print("\n".join(summary["tables"]))
  print(f"wrote {path_io.join(workdir, 'experiment.md')}")
  return summary

def _pretrain_base(exp, workdir) -> tuple[str, dict | None]:
  """Pretrains the base in <workdir>/pretrain; with exp.gate.enabled, in increments of
  gate.check_every steps until held-out value accuracy is in [gate.lo, gate.hi] (at most the
  pretrain config's train.steps). Gate progress persists in pretrain/gate.json (resumable)."""
  base = path_io.join(workdir, "pretrain")
  cfg = load_config_file(exp.pretrain_config)
  apply_overrides(cfg, exp.pretrain_overrides)
  g = exp.gate
  if not g.enabled:
    _run_stage(cfg, base)
    return base, None
  if cfg.train.schedule != "constant":
    raise ValueError(f"the headroom gate trains the base in increments, so its lr schedule must "
                     f"not depend on train.steps: set train.schedule=constant in "
                     f"pretrain_overrides (got {cfg.train.schedule!r}).")
  if cfg.data.source != "recall":
    raise ValueError("the headroom gate measures recall value accuracy: the base needs "
                     "data.source=recall (or set gate.enabled=false).")
  gate_path = path_io.join(base, "gate.json")
  history = []
  if path_io.isfile(gate_path):
    history = json.loads(path_io.read_text(gate_path))["history"]
  gcfg = ml_collections.ConfigDict(exp.eval.to_dict())
  gcfg.num_samples, gcfg.base_seed = int(g.num_samples), int(cfg.data.recall.eval_seed)
  if gcfg.base_seed == int(exp.eval.base_seed):
    raise ValueError(f"the gate's held-out rows (data.recall.eval_seed={gcfg.base_seed}) must "
                     f"differ from the reported ones (eval.base_seed={exp.eval.base_seed}).")

  def train_to(step):
    c = copy.deepcopy(cfg)
    with c.unlocked():
      c.train.steps = int(step)
    return _run_stage(c, base).model

  def measure(model, step):
    _, rows = logit_tasks.recall_scores(model, cfg, gcfg, int(cfg.data.seq_len), per_row=True)
    score, se = gate_lib.mean_se([r[g.metric] for r in rows])
    print(f"experiment gate: step {step}: held-out {g.metric} {score:.1f} ± {se:.1f} "
          f"(band [{g.lo}, {g.hi}])", flush=True)
    return score, se

  def save(hist):
    path_io.write_text(gate_path, json.dumps({"history": hist}))

  result = gate_lib.headroom_gate(train_to, measure, lo=float(g.lo), hi=float(g.hi),
                                  check_every=int(g.check_every),
                                  fine_every=int(g.fine_every), z=float(g.z),
                                  rise_share=float(g.rise_share),
                                  max_steps=int(cfg.train.steps), history=history,
                                  on_check=save)
  result["metric"] = str(g.metric)
  path_io.write_text(gate_path, json.dumps(result, indent=2))
  return base, result

def _compilation_cache(exp, workdir):
  """Seeds of one arm compile the same programs; a persistent cache compiles them once."""
  if not exp.compilation_cache:
    return
  try:
    if not jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", path_io.join(workdir, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except (AttributeError, ValueError) as e:  # an older/newer jax without these options
    print(f"experiment: no persistent compilation cache ({e})")

def _run_stage(cfg, workdir):
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
  if model is None or run_config is None:
    model, run_config = _load(source)
  return runner.run_eval(model, get_tokenizer(run_config.data), ecfg, out, config=run_config,
                         title=title, predict_fn=predict_fn)

def _run_arm(exp, name: str, seed: int, base: str, workdir: str) -> tuple[dict, str]:
  """Trains one arm for one seed (stage after stage) and evaluates its last model; returns
  (results, the last training stage's run dir). A final stage with stage=ttt trains nothing:
  the eval answers with test-time training instead."""
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
  last_dir = path_io.join(arm_dir, f"stage{len(cfgs) - 1}") if cfgs else base
  if path_io.isfile(path_io.join(eval_dir, report.RESULTS_JSON)):
    return report.load_results(eval_dir), last_dir  # trained and evaluated by an earlier run
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
    tok = get_tokenizer(ttt_cfg.data)
    predict_fn = lambda prompts, n: ttt.answer_with_ttt(model, ttt_cfg, list(prompts),
                                                        tokenizer=tok, max_new_tokens=n)
  return _evaluate(arm_dir, exp.eval, model, cfg, title=title, predict_fn=predict_fn), last_dir

def _load(checkpoint):
  return load_pretrained(checkpoint)


PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_collections", "orbax-checkpoint",
            "grain", "chex")


def environment() -> dict:
  """What produced the numbers: package versions, Python, the CPU model and core count, and
  the accelerator JAX ran on (experiment.json's meta.environment)."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {"packages": versions, "python": platform.python_version(),
          "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                      "platform": platform.platform()},
          "devices": sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()})}


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()
