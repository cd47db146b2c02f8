"""Arms of an experiment: config files with key=value overrides, chained into stages, and the
check that arms train with the same rows and optimiser updates."""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

from refine_jax.train import stages

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of a config file (relative paths: cwd first, then the repo root)."""
  cands = [path] if os.path.isabs(path) else [path, os.path.join(_REPO, path)]
  found = next((p for p in cands if os.path.isfile(p)), None)
  if found is None:
    raise FileNotFoundError(f"config file {path!r} not found (looked in {cands}).")
  name = "_experiment_cfg_" + os.path.splitext(os.path.basename(found))[0]
  spec = importlib.util.spec_from_file_location(name, found)
  module = importlib.util.module_from_spec(spec)
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

def arm_names(exp) -> list[str]:
  order = [a.strip() for a in str(exp.arm_order).split(",") if a.strip()]
  names = order or list(exp.arms.keys())
  missing = [a for a in names if a not in exp.arms]
  if missing:
    raise ValueError(f"arm_order names {missing} that are not in arms ({list(exp.arms)}).")
  return names

def stage_config(path: str, overrides: str, *, common: str, seed: int, steps: int,
                 init: str) -> ml_collections.ConfigDict:
  """One stage's resolved config for an arm/seed."""
  cfg = load_config_file(path)
  apply_overrides(cfg, common)
  apply_overrides(cfg, overrides)
  with cfg.unlocked():
    cfg.seed = int(seed)
    cfg.data.shuffle_seed = int(seed)
    if steps > 0:
      cfg.train.steps = int(steps)
    cfg.init_checkpoint = init
    # The experiment evaluates each arm itself and always gives init.
    cfg.midtrain.run_eval = False
    cfg.midtrain.warmup_steps = cfg.posttrain.warmup_steps = 0
  return cfg

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
  if len(set(keys.values())) > 1 and not exp.allow_unmatched:
    rows = "; ".join(f"{n}: batch {b['batch_size']}, {b['steps']} steps, {b['updates']} updates"
                     for n, b in budgets.items())
    raise ValueError(f"arms are not matched ({rows}): give every arm the same batch, steps and "
                     "optimiser updates (an NTP arm gets ReFINE's refine.ppo_epochs x "
                     "ppo_minibatches via train.ntp_epochs x train.ntp_minibatches), or set "
                     "allow_unmatched=true.")
  return budgets
