"""`init_checkpoint` before anything is built: starting weights bring their model and tokenizer.

`resolve(config, explicit)` is called once by the entry point (refine_jax.main), before
validation. When init_checkpoint names a checkpoint that carries its own config — a hub id
(hf://owner/name[@revision], downloaded into the HF cache and replaced by its local snapshot
dir), an HF/FLA dir, a bundle, or a run dir (config.json at it or above it) — the stage takes
from it:
  model.*   every field that shapes the weights (not the runtime knobs in RUNTIME_FIELDS)
  data.*    the tokenizer (TOKENIZER_FIELDS), when the checkpoint ships or names one
A field the user set explicitly keeps its value if it equals the checkpoint's; a different
model.* value is one error naming the field, both values and the fix. An explicit tokenizer
wins (it may be a local copy of the same files; validation checks it fits the vocab).
A bare Orbax params dir has no config: the config stays as given (the pre-existing contract).
The stages' own warm-up runs (init_checkpoint set inside midtrain/posttrain/ttt) never pass
here: they share the stage's config already.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Iterable

import jax
from absl import logging
from flax import nnx, traverse_util

from refine_jax import checkpoint as ckpt_lib
from refine_jax import paths
from refine_jax.checkpoint import trees
from refine_jax.checkpoint.params import find_run_config
from refine_jax.data import tokenizers
from refine_jax.interop import bundle, hf_checkpoint, hf_config, hub
from refine_jax.config import default_model_config

# model.* fields that do not change what the weights compute (kernels, layout, precision).
RUNTIME_FIELDS = ("dtype", "logits_dtype", "backend", "chunk_size", "scan_layers", "remat",
                  "initializer_range", "attention.impl")
TOKENIZER_FIELDS = ("tokenizer", "tokenizer_path", "tokenizer_bos", "tokenizer_eos",
                    "tokenizer_pad")


def resolve(config, explicit: Iterable[str] = ()):
  """A copy of `config` with init_checkpoint's model.* and tokenizer filled in (see above).

  explicit: dotted names the user set (main.py: the --config.* overrides); every other field
  is a config-file default that the checkpoint replaces.
  """
  source = config.init_checkpoint
  if not source:
    return config
  try:
    path = hub.local_dir(source)  # hf:// only: configs have one syntax for hub ids
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"init_checkpoint={source}: {e}") from e
  check_path(path)  # missing / a file
  model_fields, data_fields = checkpoint_fields(path)
  explicit = set(explicit)
  conflicts = [(name, _get(config, name), value) for name, value in model_fields.items()
               if name in explicit and _norm(_get(config, name)) != _norm(value)]
  if conflicts:
    raise ValueError(
        ", ".join(f"{n}={_show(mine)} (the checkpoint has {_show(theirs)})"
                  for n, mine, theirs in conflicts)
        + f" set explicitly, but init_checkpoint={source} brings its own model config; drop "
        + " ".join(f"--config.{n}" for n, _, _ in conflicts)
        + ", or use a checkpoint whose model matches.")
  own_tokenizer = any(f"data.{f}" in explicit for f in TOKENIZER_FIELDS[:2])
  if own_tokenizer and data_fields:
    logging.warning("init_checkpoint=%s ships the tokenizer %s; data.tokenizer* was set "
                    "explicitly, so yours is used.", source, data_fields.get("data.tokenizer_path"))
  updates = {k: v for k, v in model_fields.items() if k not in explicit}
  if not own_tokenizer:
    updates.update({k: v for k, v in data_fields.items() if k not in explicit})
  config = copy.deepcopy(config)
  with config.unlocked():
    for name, value in updates.items():
      _set(config, name, value)
    config.init_checkpoint = path  # a hub id's snapshot dir: what the loaders read
  if "model.vocab_size" in model_fields and not data_fields and not own_tokenizer:
    _check_tokenizer_fits(config, source)
  if path != source and _is_main_process():
    print(f"init_checkpoint={source} -> {path}")
  return config


def check_path(path):
  """ValueError unless init_checkpoint `path` is '', a hub id (hf://owner/name[@revision];
  fetched by resolve) or an existing directory."""
  if not path or hub.parse(path) is not None:  # parse: ValueError for a malformed hf:// id
    return
  paths.check(path, "init_checkpoint")
  if not paths.exists(path):  # local or gs://
    hint = (f" (a Hugging Face model is written hf://{path})"
            if hub.parse(path, bare=True) is not None else "")
    raise ValueError(f"init_checkpoint={path!r} does not exist{hint}; give a run directory, an "
                     "Orbax checkpoint, a bundle, an HF/FLA directory or a hub id "
                     "hf://owner/name[@revision], or '' for a fresh init.")
  if not paths.isdir(path):
    raise ValueError(f"init_checkpoint={path!r} is a file, not a checkpoint directory; give "
                     "the run directory, its checkpoints/<step> directory, a bundle or an "
                     "HF/FLA directory (config.json + *.safetensors).")


def checkpoint_fields(path: str) -> tuple[dict, dict]:
  """({"model.<field>": value}, {"data.<field>": value}) that the checkpoint at `path` fixes;
  both empty when it carries no config (a bare Orbax params dir, a missing path)."""
  paths.check(path, "init_checkpoint")
  if not paths.isdir(path):  # a local dir or a gs:// run dir
    return {}, {}
  if bundle.is_bundle(path):
    cfg_path = os.path.join(path, "config.json")
  elif hf_checkpoint.is_hf_dir(path):
    hf_cfg = hf_config.read_hf_config(path)
    model = hf_config.hf_to_model_fields(hf_cfg, dict(default_model_config().items()))
    tok = bundle.tokenizer_fields(path)
    if tok:  # specials from its tokenizer_config.json, not from the config file's tokenizer
      tok.update(tokenizer_bos="", tokenizer_eos="", tokenizer_pad="")
    return _flat(model, "model"), _flat(tok, "data")
  else:
    cfg_path = find_run_config(path)
    if cfg_path is None:
      return {}, {}
  raw = json.loads(paths.read_text(cfg_path))
  model = _flat(raw.get("model") or {}, "model")
  for name in RUNTIME_FIELDS:
    model.pop(f"model.{name}", None)
  data = {k: v for k, v in (raw.get("data") or {}).items() if k in TOKENIZER_FIELDS}
  tp = data.get("tokenizer_path")
  if tp and bundle.is_bundle(path) and not os.path.isabs(tp):  # bundles store it relative
    data["tokenizer_path"] = os.path.abspath(os.path.join(path, tp))
  return model, _flat(data, "data")


def load_params(path: str, abstract):
  """(params, source) for `abstract` (an nnx.State of ShapeDtypeStructs with shardings) from
  an HF/FLA dir, or anything checkpoint.load_params takes (run dir, step, bundle, params)."""
  if hf_checkpoint.is_hf_dir(path) and not bundle.is_bundle(path):
    model, _, _ = hf_checkpoint.load_hf(path)
    params = trees.params_from_pure(abstract, trees.params_to_pure(nnx.state(model, nnx.Param)))
    return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract), path
  return ckpt_lib.load_params(path, abstract)


def _check_tokenizer_fits(config, source: str) -> None:
  """An HF dir without tokenizer files leaves the config file's tokenizer: say so if it cannot
  be this model's (validation would otherwise suggest changing model.vocab_size)."""
  n = tokenizers.get_tokenizer(config.data).vocab_size
  if n > config.model.vocab_size:
    raise ValueError(
        f"init_checkpoint={source} ships no tokenizer (tokenizer.json / tokenizer.model) and "
        f"its vocab_size={config.model.vocab_size} is smaller than data.tokenizer="
        f"{config.data.tokenizer!r} ({n} ids); set data.tokenizer and data.tokenizer_path to "
        "the model's tokenizer.")


def _is_main_process() -> bool:
  return jax.process_index() == 0


def _flat(d: dict, prefix: str) -> dict:
  """{"model.attention.window": v, ...}: the dotted field names of a nested section."""
  plain = {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in d.items()}
  return {f"{prefix}.{k}": v for k, v in traverse_util.flatten_dict(plain, sep=".").items()}


def _get(config, name: str):
  node = config
  for part in name.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def _set(config, name: str, value) -> None:
  *parents, leaf = name.split(".")
  raw = {leaf: value}
  for p in reversed(parents):
    raw = {p: raw}
  bundle.merge(config, raw)


def _norm(v):
  if isinstance(v, (list, tuple)):
    return tuple(_norm(x) for x in v)
  return v


def _show(v) -> str:
  return repr(list(v) if isinstance(v, tuple) else v)
