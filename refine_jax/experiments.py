"""NTP vs ReFINE experiment: several training arms x seeds from one NTP checkpoint, evaluated
and summarised with seed-paired statistics, tables and one plot.

  python -m refine_jax.experiments --config=configs/experiment.py \\
      [--config.checkpoint=runs/pretrain-deltanet] [--workdir=runs/experiment]

Each arm is a chain of stage configs run one after another, each stage starting from the
previous one's weights (the first from `checkpoint`); every stage of every arm gets the same
number of steps (`steps`), the same common overrides and, per seed, the same `seed` and
data.shuffle_seed, so arms differ only in their training objective. Arms must also match in
batch size and optimiser updates (`check_matched`; an NTP arm gets ReFINE's
refine.ppo_epochs x ppo_minibatches through train.ntp_epochs x ntp_minibatches). Arm spec:

    "CONFIG.py key=value key=value | CONFIG2.py key=value"

e.g. SFT-mid = "configs/recall.py stage=pretrain train.ntp_epochs=2" (the same data and
optimiser with the NTP-only loop) and ReFINE-mid = "configs/recall.py".
With no `checkpoint`, one is pretrained first (pretrain_config) in <workdir>/pretrain; with
`gate.enabled` it trains in increments until its held-out value accuracy is inside
[gate.lo, gate.hi] (eval/gate.py), or the experiment is VOID (experiment.json/.md say why and
no arm trains). The base model is evaluated once as arm "base".
Statistics (eval/stats.py): per task and context length, a t-interval over seeds per arm and
the per-seed differences arm - `reference` (mean, std, t-interval). Diagnostics per run:
reward mean/std, clip fraction, selected entropy (means over logged steps) and where ReFINE's
entropy selection lands on held-out recall rows (fraction on value tokens vs uniform chance).
Everything resumes: finished stages are skipped by the stages' own resume logic and evaluated
runs keep their results.json. Outputs in <workdir>: experiment.json (per-seed results,
intervals, paired differences, diagnostics, budgets, gate, wall times), experiment.md,
experiment.png (per-length bars with intervals, paired differences below).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from refine_jax import cli
from refine_jax import paths as path_io
from refine_jax.data import recall
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.eval import gate as gate_lib
from refine_jax.eval import logit_tasks, report, runner, stats
from refine_jax.pretrained import load_pretrained
from refine_jax.refine import step as refine_step
from refine_jax.train import init_checkpoint, stages, ttt, validate

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


def arm_names(exp) -> list[str]:
  order = [a.strip() for a in str(exp.arm_order).split(",") if a.strip()]
  names = order or list(exp.arms.keys())
  missing = [a for a in names if a not in exp.arms]
  if missing:
    raise ValueError(f"arm_order names {missing} that are not in arms ({list(exp.arms)}).")
  return names


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
          "wall_s": {"base": round(time.time() - t0, 1)}}
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
  reference = str(exp.get("reference", "")) or names[0]
  summary = summarize(per_arm, seeds=seeds, reference=reference, diagnostics=diagnostics,
                      meta=meta)
  write_summary(summary, workdir, title=exp.title)
  print("\n".join(summary["tables"]))
  print(f"wrote {path_io.join(workdir, 'experiment.md')}")
  return summary


# ----------------------------------------------------------------------------- base + gate


def _pretrain_base(exp, workdir) -> tuple[str, dict | None]:
  """Pretrains the base in <workdir>/pretrain; with exp.gate.enabled, in increments of
  gate.check_every steps until held-out value accuracy is in [gate.lo, gate.hi] (at most the
  pretrain config's train.steps). Gate progress persists in pretrain/gate.json (resumable)."""
  base = path_io.join(workdir, "pretrain")
  cfg = load_config_file(exp.pretrain_config)
  apply_overrides(cfg, exp.pretrain_overrides)
  g = exp.get("gate", None)
  if g is None or not g.enabled:
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


# ----------------------------------------------------------------------------- matching


def arm_budget(exp, name: str) -> dict:
  """Rows and optimiser updates an arm trains with (its training stages, seed-independent)."""
  out = {"batch_size": [], "steps": 0, "updates": 0, "updates_per_step": []}
  for path, ov in parse_arm(exp.arms[name]):
    cfg = stage_config(path, ov, common=exp.overrides, seed=0, steps=int(exp.steps), init="")
    if cfg.stage == "ttt":
      continue
    ups = int(stages.step_spec(cfg).updates_per_step)
    out["batch_size"].append(int(cfg.train.batch_size))
    out["updates_per_step"].append(ups)
    out["steps"] += int(cfg.train.steps)
    out["updates"] += int(cfg.train.steps) * ups
  return out


def check_matched(exp, names) -> dict:
  """{arm: budget}; ValueError when arms differ in batch sizes, steps or optimiser updates
  (exp.allow_unmatched=True lets them)."""
  budgets = {n: arm_budget(exp, n) for n in names}
  keys = {n: (tuple(b["batch_size"]), b["steps"], b["updates"]) for n, b in budgets.items()}
  if len(set(keys.values())) > 1 and not exp.get("allow_unmatched", False):
    rows = "; ".join(f"{n}: batch {b['batch_size']}, {b['steps']} steps, {b['updates']} updates"
                     for n, b in budgets.items())
    raise ValueError(f"arms are not matched ({rows}): give every arm the same batch, steps and "
                     "optimiser updates (an NTP arm gets ReFINE's refine.ppo_epochs x "
                     "ppo_minibatches via train.ntp_epochs x train.ntp_minibatches), or set "
                     "allow_unmatched=true.")
  return budgets


# ----------------------------------------------------------------------------- diagnostics


def _diagnostics(exp, arm_dir: str, run_dir: str | None, model_path: str) -> dict:
  """Training diagnostics of one run (means over its logged steps) and where ReFINE's
  selection lands on held-out recall rows; kept in <arm_dir>/diagnostics.json."""
  path = path_io.join(arm_dir, "diagnostics.json")
  if path_io.isfile(path):
    return json.loads(path_io.read_text(path))
  out = {}
  if run_dir is not None:
    rows = path_io.read_jsonl(path_io.join(run_dir, "metrics.jsonl"))
    for key in ("reward_mean", "reward_std", "clip_frac", "entropy_selected", "valid_frac"):
      vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
      if vals:
        out[key] = float(np.mean(vals))
    for key in ("ntp_loss", "loss", "eval_loss"):
      vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
      if vals:
        out[f"last_{key}"] = float(vals[-1])
  if exp.get("selection_samples", 0):
    out.update(_selection(exp, model_path))
  path_io.makedirs(arm_dir)
  path_io.write_text(path, json.dumps(out, indent=2))
  return out


def _selection(exp, model_path: str) -> dict:
  """Fraction of ReFINE-selected positions (refine.selection of the model's run config) whose
  first rollout token is a query value, on held-out recall rows; `sel_chance` is the same
  fraction under uniform selection, `sel_window_value` the fraction whose k-token window holds
  a value token."""
  model, cfg = _load(model_path)
  if "refine" not in cfg or "num_chunks" not in cfg.refine or cfg.data.source != "recall":
    return {}
  b = recall.batch(get_tokenizer(cfg.data), int(cfg.data.seq_len), int(exp.selection_samples),
                   base_seed=int(exp.eval.base_seed), spec=recall.RecallSpec.of(cfg.data.recall),
                   add_bos=bool(cfg.data.add_bos))
  batch = {k: b[k] for k in ("inputs", "targets", "loss_mask")}
  graphdef, state = nnx.split(model)
  out = {}
  for name, mode in (("sel", cfg.refine.selection), ("sel_chance", "uniform")):
    rc = copy.deepcopy(cfg.refine)
    with rc.unlocked():
      rc.selection = mode
    fn = jax.jit(lambda s, bt, key, rc=rc: refine_step.collect(nnx.merge(graphdef, s), bt, key,
                                                                 rc))
    on, window, total = 0.0, 0.0, 0.0
    for i in range(4):  # a few selection draws
      col = jax.device_get(fn(state, batch, jax.random.key(i)))
      pos, valid = np.asarray(col.positions_Bc), np.asarray(col.valid_Bc)
      vm = b["value_mask"]
      k = int(rc.rollout_len)
      for r in range(pos.shape[0]):
        for p, ok in zip(pos[r], valid[r]):
          if ok:
            on += vm[r, p]
            window += float(vm[r, p:p + k].any())
            total += 1
    out[f"{name}_on_values"] = float(on / max(total, 1))
    if name == "sel":
      out["sel_window_value"] = float(window / max(total, 1))
  return out


def _compilation_cache(exp, workdir):
  """Seeds of one arm compile the same programs; a persistent cache compiles them once."""
  if not exp.get("compilation_cache", True):
    return
  try:
    if not jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", path_io.join(workdir, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except (AttributeError, ValueError) as e:  # an older/newer jax without these options
    print(f"experiment: no persistent compilation cache ({e})")


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


# ----------------------------------------------------------------------------- summary


def summarize(per_arm: dict[str, list[dict]], *, seeds=None, reference: str = "",
              diagnostics: dict | None = None, meta: dict | None = None,
              confidence: float = 0.95) -> dict:
  """{arm: [results per seed]} -> mean ± std aggregates, t-intervals, seed-paired differences
  arm - reference (every arm with as many seeds as the reference) and the markdown tables."""
  agg = {arm: report.aggregate(rs) for arm, rs in per_arm.items()}
  ivals = {arm: stats.intervals(rs, confidence) for arm, rs in per_arm.items()}
  paired = {}
  if reference in per_arm:
    ref = per_arm[reference]
    paired = {arm: stats.paired_differences(rs, ref, confidence) for arm, rs in per_arm.items()
              if arm != reference and len(rs) == len(ref) and len(rs) > 1}
  tables = [report.interval_table(ivals, title=f"Scores: mean over seeds [{confidence:.0%} "
                                               "t-interval]")]
  if paired:
    tables.append(report.paired_table(paired, title=(
        f"Paired differences arm - {reference} (per seed): mean ± std [{confidence:.0%} "
        "t-interval]")))
  if diagnostics:
    tables.append(report.diagnostics_table(diagnostics, budgets=(meta or {}).get("budgets"),
                                           title="Training and selection diagnostics (mean "
                                                 "over seeds)"))
  return {"seeds": list(seeds) if seeds is not None else None, "per_seed": per_arm,
          "aggregate": agg, "intervals": ivals, "paired": paired, "reference": reference,
          "diagnostics": diagnostics or {}, "meta": meta or {}, "table": tables[0],
          "tables": tables, "void": False}


def _json_keys(tree):
  """Int dict keys (context lengths) -> str, recursively, for json.dumps."""
  if isinstance(tree, dict):
    return {str(k): _json_keys(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_json_keys(v) for v in tree]
  return tree


def write_summary(summary: dict, workdir: str, title: str = "NTP vs ReFINE") -> dict:
  paths = {k: path_io.join(workdir, f"experiment.{k}") for k in ("json", "md", "png")}
  keep = ("seeds", "per_seed", "aggregate", "intervals", "paired", "reference", "diagnostics",
          "meta", "void")
  path_io.write_text(paths["json"], json.dumps(_json_keys({k: summary.get(k) for k in keep}),
                                               indent=2, default=_nan_none))
  gate = (summary.get("meta") or {}).get("gate") or {}
  path_io.write_text(paths["md"], f"# {title}\n\n" + _setup_line(summary) +
                     "\n".join(summary["tables"] + _gate_lines(gate, workdir)))
  report.plot_experiment(summary["intervals"], paths["png"], title=title,
                         paired=summary.get("paired") or None,
                         reference=summary.get("reference", ""))
  return paths


def _setup_line(summary) -> str:
  meta = summary.get("meta") or {}
  bits = []
  if summary.get("seeds") is not None:
    bits.append(f"seeds {summary['seeds']}")
  for arm, b in (meta.get("budgets") or {}).items():
    bits.append(f"{arm}: batch {b['batch_size']}, {b['steps']} steps, {b['updates']} updates")
  g = meta.get("gate")
  if g:
    bits.append(f"base: gate {g.get('metric', '')} {g['score']:.1f} ± {g.get('se', 0.0):.1f} "
                f"at step {g['step']} (band {g['band']})")
  if meta.get("wall_s", {}).get("total") is not None:
    bits.append(f"wall {meta['wall_s']['total'] / 60:.1f} min")
  return ("; ".join(bits) + "\n\n") if bits else ""


def _nan_none(x):
  return None if isinstance(x, float) and x != x else str(x)


def write_void(workdir: str, reason: str, *, title: str = "NTP vs ReFINE",
               meta: dict | None = None) -> dict:
  """experiment.json {"void": true, "reason", "meta"} and an experiment.md that says VOID and
  why (with the gate's score history) instead of a table."""
  paths = {k: path_io.join(workdir, f"experiment.{k}") for k in ("json", "md")}
  path_io.write_text(paths["json"], json.dumps(_json_keys({"void": True, "reason": reason,
                                                            "meta": meta or {}}), indent=2))
  lines = [f"# {title}", "", f"**VOID**: {reason}.", "",
           "No arm was trained: a base outside the headroom band cannot show a difference "
           "between objectives.", ""]
  gate = (meta or {}).get("gate") or {}
  lines += _gate_lines(gate, workdir)
  path_io.write_text(paths["md"], "\n".join(lines) + "\n")
  return paths


def _gate_lines(gate: dict, workdir: str) -> list[str]:
  """experiment.md's gate section: the picture (gate.png beside it) and the checks' table."""
  hist = gate.get("history") or []
  if not hist:
    return []
  report.plot_gate(gate, path_io.join(workdir, "gate.png"))
  lines = ["## Headroom gate", "", "![gate](gate.png)", "",
           "| base step | held-out score | standard error |", "|---|---|---|"]
  return lines + [f"| {h[0]} | {h[1]:.1f} | {h[2] if len(h) > 2 else 0.0:.2f} |"
                  for h in hist] + [""]


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}; use --config.field=value")
  exp = _CONFIG.value
  if exp is None:
    raise SystemExit("--config=configs/experiment.py is required")
  run_experiment(exp, _WORKDIR.value or os.path.join("runs", "experiment"))


if __name__ == "__main__":  # flags only for the command, not for library imports
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/experiment.py",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "default runs/experiment")
  cli.run(main)
