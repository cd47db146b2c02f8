"""Per-run diagnostics of an experiment: training means from metrics.jsonl and where ReFINE's
entropy selection lands on held-out recall rows."""

from __future__ import annotations

import copy
import json

import jax
import numpy as np
from flax import nnx

from refine_jax import paths as path_io
from refine_jax.data import recall
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.pretrained import load_pretrained
from refine_jax.refine import step as refine_step


def diagnostics(exp, arm_dir: str, run_dir: str | None, model_path: str) -> dict:
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
  if exp.selection_samples:
    out.update(_selection(exp, model_path))
  path_io.makedirs(arm_dir)
  path_io.write_text(path, json.dumps(out, indent=2))
  return out

def _selection(exp, model_path: str) -> dict:
  """Fraction of ReFINE-selected positions (refine.selection of the model's run config) whose
  first rollout token is a query value, on held-out recall rows; `sel_chance` is the same
  fraction under uniform selection, `sel_window_value` the fraction whose k-token window holds
  a value token."""
  model, cfg = load_pretrained(model_path)
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
