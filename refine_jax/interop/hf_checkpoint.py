"""Load / save FLA-format HF checkpoints (config.json + safetensors) as refine_jax models."""
from __future__ import annotations

import json
import os
from typing import Any

import ml_dtypes  # numpy has no bfloat16; ml_dtypes ships with jax
import numpy as np
from absl import logging

from refine_jax.config import default_model_config
from refine_jax.data.tokenizers import get_tokenizer
from refine_jax.interop import bundle, hf_config, hf_weights, lact, modelio, safetensors_io
from refine_jax.models import config as model_config
from refine_jax.models.config import delta_dims


def is_hf_dir(path: str) -> bool:
  """A directory holding HF weights or an HF config.json (model_type at the top level)."""
  if not os.path.isdir(path):
    return False
  names = os.listdir(path)
  if any(n.endswith(".safetensors") or n == safetensors_io.INDEX_FILE
         or n in ("pytorch_model.bin", "pytorch_model.bin.index.json") for n in names):
    return True
  cfg = os.path.join(path, "config.json")
  if os.path.isfile(cfg):
    try:
      with open(cfg) as f:
        raw = json.load(f)
    except (OSError, ValueError):
      return False
    return isinstance(raw, dict) and ("model_type" in raw or "architectures" in raw)
  return False


def hf_model_config(hf_cfg: dict[str, Any], base_model_cfg=None):
  """Our model ConfigDict for an FLA config.json dict (validated by the model's rules)."""
  cfg = base_model_cfg if base_model_cfg is not None else default_model_config()
  cfg = cfg.copy_and_resolve_references()
  fields = hf_config.hf_to_model_fields(hf_cfg, dict(cfg.items()))
  with cfg.unlocked():
    for k, v in fields.items():
      if isinstance(v, dict):
        with cfg[k].unlocked():
          cfg[k].update(v)
      else:
        cfg[k] = v
  model_config.validate(cfg)
  return cfg


def load_hf(hf_dir: str, *, config=None):
  """(model, config, hf_cfg) from an FLA checkpoint dir. Params are float32.

  config: a base ConfigDict whose model section is overwritten from config.json (default:
  the project's base config); data.tokenizer* point at the dir's tokenizer files if any.
  """
  hf_cfg = hf_config.read_hf_config(hf_dir)  # config first: its errors are the clearer ones
  tensors = safetensors_io.read_tensors(hf_dir)
  is_lact = hf_cfg["model_type"] == hf_config.LACT_MODEL_TYPE
  if is_lact:
    tensors = lact.from_lact_keys(tensors)
    known = lact.DEFAULTS
  else:
    known = hf_config.FLA_DEFAULTS[hf_cfg["model_type"]]
  ignored = hf_config.unknown_fields(hf_cfg, known)
  if ignored:
    logging.warning("%s/config.json: fields %s are not %s config fields; ignored.", hf_dir,
                    ignored, hf_cfg["model_type"])
  config = bundle.base_config() if config is None else config
  with config.unlocked():
    config.model = hf_model_config(hf_cfg, config.model)
    data_fields = bundle.tokenizer_fields(hf_dir)
    if data_fields:
      with config.data.unlocked():
        config.data.update(data_fields)
    elif not data_fields and not _tokenizer_fits(config):
      logging.warning("%s has no tokenizer.json / tokenizer.model, and data.tokenizer=%r has "
                      "more ids than this model's vocab_size=%d; set data.tokenizer and "
                      "data.tokenizer_path.", hf_dir,
                      config.data.tokenizer, config.model.vocab_size)
  table = hf_weights.param_table(modelio.abstract_params(config.model))
  tied = bool(hf_config.resolved_fla_fields(hf_cfg)["tie_word_embeddings"])
  params = hf_weights.hf_to_params(tensors, table, tied=tied)
  return modelio.model_from_params(config.model, params), config, hf_cfg


def _tokenizer_fits(config) -> bool:
  """The config's tokenizer (e.g. the byte tokenizer's 259 ids) fits the model's vocab_size."""
  try:
    return get_tokenizer(config.data).vocab_size <= int(config.model.vocab_size)
  except Exception:  # pylint: disable=broad-except  (no tokenizer file: it does not fit)
    return False


def save_hf(model, config, out_dir: str, *, hf_base: dict | None = None, dtype=None,
            max_shard_bytes: int | None = None, tokenizer_dir: str | None = None) -> list[str]:
  """Writes config.json + model.safetensors (sharded past max_shard_bytes) in FLA's format.

  hf_base: the config.json this model was imported from, so FLA-only fields survive;
  dtype: e.g. "bfloat16" to halve the files (default: the params' float32).
  """
  model_cfg = config.model
  fields = dict(model_cfg.items())
  fields.update(_resolved_sizes(model_cfg))
  token_ids = {}
  try:  # bos/eos/pad: the imported config.json's, else the tokenizer the data section names
    if hf_base is not None:
      raise LookupError
    tok = get_tokenizer(config.data)
    token_ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                 "pad_token_id": tok.pad_id}
  except Exception:  # imported ids, or no usable tokenizer: keep hf_base's / FLA's defaults
    pass
  hf_cfg = hf_config.model_to_hf_config(fields, base=hf_base, token_ids=token_ids)
  np_dtype = None
  if dtype is not None:
    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16,
                "float32": np.float32}.get(str(dtype))
    if np_dtype is None:
      raise ValueError(f"dtype={dtype!r}; use float32, bfloat16 or float16")
    hf_cfg["torch_dtype"] = str(dtype)
  else:
    hf_cfg["torch_dtype"] = "float32"
  tensors = hf_weights.params_to_hf(modelio.flat_params(model), dtype=np_dtype)
  if model_cfg.arch == "lact":
    tensors = lact.to_lact_keys(tensors)
  if hf_cfg.get("tie_word_embeddings") and "lm_head.weight" in tensors:
    if not np.array_equal(tensors["lm_head.weight"], tensors["model.embeddings.weight"]):
      raise ValueError("model.tie_word_embeddings is set but lm_head differs from the "
                       "embeddings; export with tie_word_embeddings=False.")
    del tensors["lm_head.weight"]  # as save_pretrained does for tied weights
  os.makedirs(out_dir, exist_ok=True)
  for stale in (safetensors_io.SINGLE_FILE, safetensors_io.INDEX_FILE):
    if os.path.exists(os.path.join(out_dir, stale)):
      os.remove(os.path.join(out_dir, stale))
  files = safetensors_io.write_tensors(out_dir, tensors, max_shard_bytes=max_shard_bytes)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  if tokenizer_dir:
    files += bundle.copy_tokenizer_files(tokenizer_dir, out_dir)
  return files + ["config.json"]


def _resolved_sizes(model_cfg) -> dict[str, Any]:
  """FLA needs explicit sizes where our config leaves a placeholder (None = arch default)."""
  arch = model_cfg.arch
  out: dict[str, Any] = {}
  if arch == "gated_deltanet":
    d = delta_dims(model_cfg, gated=True)
    out.update(head_dim=d.head_k_dim,
               expand_v=2.0 if model_cfg.expand_v is None else model_cfg.expand_v,
               num_v_heads=d.v_heads, use_gate=True if model_cfg.use_gate is None
               else bool(model_cfg.use_gate))
  elif arch == "deltanet":
    d = delta_dims(model_cfg, gated=False)
    out.update(expand_v=1.0 if model_cfg.expand_v is None else model_cfg.expand_v,
               use_gate=False if model_cfg.use_gate is None else bool(model_cfg.use_gate))
  return out
