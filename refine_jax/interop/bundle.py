"""The inference bundle: a directory holding one model's params and its config.

    DIR/bundle.json    {"format": "refine_jax.bundle/1", "source": ...}  (marks the kind)
    DIR/config.json    the resolved config (same schema as a run directory's config.json)
    DIR/params/        Orbax checkpoint of the params, as a run's checkpoints/<step>/params
    DIR/tokenizer/     tokenizer files, when the source had them (HF tokenizer.json, .model)
    DIR/hf_config.json the original FLA config.json, when converted from HF (for --to-hf)

Params use the training checkpoints' layout (a nested dict by NNX path), restored with
refine_jax.checkpoint.load_params against the model config.json builds (every key and shape
checked), and `init_checkpoint=DIR` works on a bundle. Written by `refine_jax.convert` and `refine_jax.export`; read by
`refine_jax.load_pretrained`.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import config_dict

from refine_jax import config as config_lib
from refine_jax.checkpoint import load_params, trees
from refine_jax.interop import modelio

FORMAT = "refine_jax.bundle/1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "generation_config.json")


def is_bundle(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "bundle.json"))


def save_params(params_dir: str, model) -> None:
  """The model's params as an Orbax checkpoint in the training checkpoints' `params` layout
  (refine_jax.checkpoint.trees), so `init_checkpoint=<bundle dir>` loads it too."""
  if os.path.exists(params_dir):
    shutil.rmtree(params_dir)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(params_dir), trees.params_to_pure(nnx.state(model, nnx.Param)))


def restore_model(bundle_dir: str, model_cfg):
  """The model `model_cfg` builds, with params restored from bundle_dir/params."""
  _, abs_params, _ = modelio.abstract_state(model_cfg)
  params, _ = load_params(os.path.join(bundle_dir, "params"), abs_params)
  return modelio.model_from_state(model_cfg, params)


def save_bundle(out_dir: str, model, config, *, source: str, tokenizer_dir: str | None = None,
                hf_config: dict | None = None) -> str:
  """Writes model params + config (+ tokenizer files) to out_dir. Returns out_dir.

  tokenizer_dir: a dir of HF tokenizer files to ship (HF import); otherwise the tokenizer
  file(s) config.data.tokenizer_path names are copied. Either way data.tokenizer_path in
  the bundle's config.json is relative to the bundle (made absolute by load_bundle).
  """
  os.makedirs(out_dir, exist_ok=True)
  config = _to_dict(config)
  data = config.setdefault("data", {})
  tok_out = os.path.join(out_dir, "tokenizer")
  if os.path.exists(tok_out):
    shutil.rmtree(tok_out)
  if tokenizer_dir:
    if copy_tokenizer_files(tokenizer_dir, tok_out):
      data.update(tokenizer_fields(tok_out, relative_to=out_dir))
  elif data.get("tokenizer", "byte") != "byte" and data.get("tokenizer_path"):
    src = data["tokenizer_path"]
    if os.path.isdir(src):
      copy_tokenizer_files(src, tok_out)
      data["tokenizer_path"] = "tokenizer"
    elif os.path.isfile(src):
      copy_tokenizer_files(os.path.dirname(src), tok_out)  # e.g. tokenizer_config.json
      os.makedirs(tok_out, exist_ok=True)
      shutil.copy2(src, os.path.join(tok_out, os.path.basename(src)))
      data["tokenizer_path"] = os.path.join("tokenizer", os.path.basename(src))
  save_params(os.path.join(out_dir, "params"), model)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True, default=_json_default)
  if hf_config is not None:
    with open(os.path.join(out_dir, "hf_config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
  with open(os.path.join(out_dir, "bundle.json"), "w") as f:
    json.dump({"format": FORMAT, "source": source}, f, indent=2)
  return out_dir


def load_bundle(bundle_dir: str):
  """(model, config ConfigDict) from a bundle dir; tokenizer paths made absolute."""
  with open(os.path.join(bundle_dir, "bundle.json")) as f:
    fmt = json.load(f).get("format")
  if fmt != FORMAT:
    raise ValueError(f"{bundle_dir}/bundle.json has format {fmt!r}; this refine_jax reads "
                     f"{FORMAT!r}.")
  with open(os.path.join(bundle_dir, "config.json")) as f:
    raw = json.load(f)
  data = raw.get("data") or {}
  tp = data.get("tokenizer_path")
  if tp and not os.path.isabs(tp):
    data["tokenizer_path"] = os.path.abspath(os.path.join(bundle_dir, tp))
  config = config_from_dict(raw)
  return restore_model(bundle_dir, config.model), config


def read_hf_config_copy(bundle_dir: str) -> dict | None:
  path = os.path.join(bundle_dir, "hf_config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ---- tokenizer files ----

def copy_tokenizer_files(src_dir: str, dst_dir: str) -> list[str]:
  names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src_dir, n))]
  if names:
    os.makedirs(dst_dir, exist_ok=True)
  for n in names:
    shutil.copy2(os.path.join(src_dir, n), os.path.join(dst_dir, n))
  return names


def tokenizer_fields(tok_dir: str, *, relative_to: str | None = None) -> dict[str, str]:
  """data.tokenizer / data.tokenizer_path for the tokenizer files in tok_dir ({} if none).

  tokenizer.json wins (data's HF tokenizer reads the directory, incl. tokenizer_config.json
  for the special tokens); else a sentencepiece tokenizer.model.
  """
  def rel(p):
    return os.path.relpath(p, relative_to) if relative_to else os.path.abspath(p)
  if os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
    return {"tokenizer": "hf", "tokenizer_path": rel(tok_dir)}
  if os.path.isfile(os.path.join(tok_dir, "tokenizer.model")):
    return {"tokenizer": "sentencepiece",
            "tokenizer_path": rel(os.path.join(tok_dir, "tokenizer.model"))}
  return {}


# ---- config <-> JSON ----

def _json_default(v):
  if isinstance(v, tuple):
    return list(v)
  if hasattr(v, "to_dict"):
    return v.to_dict()
  if isinstance(v, np.generic):
    return v.item()
  raise TypeError(f"config value {v!r} ({type(v).__name__}) is not JSON-serialisable")


def _to_dict(config) -> dict:
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(d, default=_json_default))


def base_config():
  """The base config (refine_jax.config), which a saved config is merged into."""
  return config_lib.base_config()


def config_from_dict(raw: dict):
  """ConfigDict from a saved config: the base config updated with the saved values.

  Starting from the base keeps field types and placeholders (None-able fields); sections or
  fields the base does not know are kept too (an old run's config still loads).
  """
  cfg = base_config()
  with cfg.unlocked():
    merge(cfg, raw)
  return cfg


def merge(cfg, raw: dict) -> None:
  """Saved values (nested dicts) into the ConfigDict cfg (unlocked): lists become tuples where
  cfg has a tuple or a placeholder, a typed field taking another type is replaced."""
  for k, v in raw.items():
    cur = cfg.get(k, None) if k in cfg else None
    if isinstance(v, dict) and isinstance(cur, config_dict.ConfigDict):
      with cur.unlocked():
        merge(cur, v)
    elif isinstance(v, list):
      cfg[k] = tuple(v) if isinstance(cur, tuple) or cur is None else v
    else:
      try:
        cfg[k] = v
      except TypeError:  # a typed placeholder getting another type: keep the saved value
        del cfg[k]
        cfg[k] = v
