"""FLA / HF `config.json` <-> refine_jax `model.*` config.

FLA (flash-linear-attention) names: `DeltaNetConfig` (model_type "delta_net") and
`GatedDeltaNetConfig` (model_type "gated_deltanet"). Our model config mirrors FLA's names
where they exist; only the three size fields are renamed (hidden_size -> hidden,
num_hidden_layers -> layers, num_heads -> heads).

Fields are resolved as: value in config.json, else FLA's class default (config.json files
written by older FLA versions omit newer fields). A field our model does not have must sit
at FLA's default, else the checkpoint computes something we cannot reproduce -> clear error.
"""
from __future__ import annotations

import json
import os
from typing import Any

from refine_jax.interop.safetensors_io import CheckpointFormatError
from refine_jax.interop import lact

# model_type -> (our model.arch, FLA architectures[0])
ARCHS = {
    "delta_net": ("deltanet", "DeltaNetForCausalLM"),
    "gated_deltanet": ("gated_deltanet", "GatedDeltaNetForCausalLM"),
}
ARCH_TO_MODEL_TYPE = {arch: mt for mt, (arch, _) in ARCHS.items()}

# FLA class defaults (configuration_delta_net.py / configuration_gated_deltanet.py, fla 0.6).
_COMMON_DEFAULTS = dict(
    attn_mode="chunk", hidden_size=2048, use_gate=False, use_short_conv=True,
    allow_neg_eigval=False, conv_size=4, max_position_embeddings=2048, hidden_ratio=4,
    intermediate_size=None, hidden_act="swish", norm_eps=1e-6, attn=None, use_cache=True,
    pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    initializer_range=0.02, fuse_norm=True, fuse_swiglu=True, fuse_cross_entropy=True,
    fuse_linear_cross_entropy=False, use_l2warp=False, vocab_size=32000,
    attnres_block_size=None,
)
FLA_DEFAULTS = {
    "delta_net": dict(
        _COMMON_DEFAULTS, expand_k=1.0, expand_v=1.0, use_beta=True, use_output_norm=True,
        num_heads=16, qk_norm="l2", qk_activation="silu", num_hidden_layers=24),
    "gated_deltanet": dict(
        _COMMON_DEFAULTS, expand_v=2.0, use_gate=True, head_dim=256, num_heads=6,
        num_v_heads=None, num_hidden_layers=21),
}

# FLA field -> our model.* field, per model_type. Fields absent here are FLA-only knobs that
# do not change the math (kernel choice, fused ops, init range): kept in `hf_config` only.
_COMMON_MAP = dict(
    hidden_size="hidden", num_hidden_layers="layers", num_heads="heads",
    vocab_size="vocab_size", conv_size="conv_size", use_short_conv="use_short_conv",
    use_gate="use_gate", allow_neg_eigval="allow_neg_eigval", hidden_ratio="hidden_ratio",
    intermediate_size="intermediate_size", norm_eps="norm_eps", hidden_act="hidden_act",
    tie_word_embeddings="tie_word_embeddings", attn="attn",
    attnres_block_size="attnres_block_size",
)
FIELD_MAP = {
    "delta_net": dict(_COMMON_MAP, expand_k="expand_k", expand_v="expand_v",
                      use_beta="use_beta", use_output_norm="use_output_norm",
                      qk_norm="qk_norm", qk_activation="qk_activation"),
    "gated_deltanet": dict(_COMMON_MAP, head_dim="head_dim", expand_v="expand_v",
                           num_v_heads="num_v_heads"),
}
# Token ids go to the data section (the tokenizer), not the model.
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  """config.json of an HF/FLA checkpoint dir, with its model_type checked."""
  if not os.path.isdir(hf_dir):
    raise CheckpointFormatError(f"HF checkpoint directory {hf_dir!r} does not exist.")
  path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(path):
    raise CheckpointFormatError(
        f"{hf_dir} has no config.json; an HF/FLA checkpoint dir needs config.json next to "
        "model.safetensors (copy it from the model's hub page).")
  with open(path) as f:
    cfg = json.load(f)
  model_type_of(cfg, where=path)
  return cfg


LACT_MODEL_TYPE = "lact_swiglu"  # refine_jax/interop/lact.py
SUPPORTED = {**{mt: a for mt, (_, a) in ARCHS.items()}, LACT_MODEL_TYPE: "LaCTForCausalLM"}


def model_type_of(hf_cfg: dict[str, Any], *, where: str = "config.json") -> str:
  mt = hf_cfg.get("model_type")
  if mt not in SUPPORTED:
    archs = hf_cfg.get("architectures")
    raise CheckpointFormatError(
        f"{where}: model_type={mt!r} (architectures={archs}) is not supported; refine_jax "
        f"converts model_type in {sorted(SUPPORTED)} ({', '.join(SUPPORTED.values())}).")
  return mt


# Keys every HF config.json may carry that do not describe the model's math.
_HF_GENERIC = {"architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
               "_name_or_path", "auto_map", "output_hidden_states", "output_attentions",
               "return_dict", "use_return_dict", "is_encoder_decoder", "tokenizer_class",
               "id2label", "label2id", "problem_type", "chunk_size_feed_forward",
               "keys_to_ignore_at_inference", "torchscript", "pruned_heads"}


def unknown_fields(hf_cfg: dict[str, Any], known) -> list[str]:
  """config.json fields neither FLA's/LaCT's class nor HF's base config defines."""
  return sorted(k for k in hf_cfg if k not in known and k not in _HF_GENERIC)


def resolved_fla_fields(hf_cfg: dict[str, Any]) -> dict[str, Any]:
  """Every FLA (or LaCT) field of this model_type: config.json value, else the default."""
  mt = model_type_of(hf_cfg)
  if mt == LACT_MODEL_TYPE:
    return lact.resolved(hf_cfg)
  return {k: hf_cfg.get(k, d) for k, d in FLA_DEFAULTS[mt].items()}


def hf_to_model_fields(hf_cfg: dict[str, Any], model_fields: dict[str, Any]) -> dict[str, Any]:
  """Our model.* overrides for an FLA config, checked against the fields our model has.

  model_fields: the model config's fields with their defaults (default_model_config()).
  Returns {field: value} including model.arch. Raises on an FLA setting we cannot honour.
  """
  mt = model_type_of(hf_cfg)
  if mt == LACT_MODEL_TYPE:
    return lact.model_fields(hf_cfg, model_fields)
  fla = resolved_fla_fields(hf_cfg)
  out: dict[str, Any] = {"arch": ARCHS[mt][0]}
  for fla_name, ours in FIELD_MAP[mt].items():
    value = fla[fla_name]
    if ours in model_fields:
      out[ours] = value
    elif value != FLA_DEFAULTS[mt][fla_name]:
      raise CheckpointFormatError(
          f"config.json sets {fla_name}={value!r}, which refine_jax's model does not implement "
          f"(it only supports FLA's default {FLA_DEFAULTS[mt][fla_name]!r}); "
          "this checkpoint cannot be converted exactly.")
  # Fields of the other arch / hybrids must not leak in from a base config.
  for ours in ("head_dim", "num_v_heads") if mt == "delta_net" else ():
    if ours in model_fields:
      out[ours] = None
  if "attn_layers" in model_fields:
    out["attn_layers"] = ()
  if fla["hidden_act"] != "swish":
    raise CheckpointFormatError(
        f"config.json sets hidden_act={fla['hidden_act']!r}; only 'swish' (SwiGLU) is supported.")
  return out


def model_to_hf_config(model_fields: dict[str, Any], *, base: dict[str, Any] | None = None,
                       token_ids: dict[str, Any] | None = None) -> dict[str, Any]:
  """An FLA config.json dict for our model.* fields.

  base: the original config.json (from an earlier import) so FLA-only fields round-trip;
  token_ids: bos/eos/pad ids from the tokenizer.
  """
  arch = model_fields.get("arch")
  if arch == "lact":
    cfg = lact.to_hf_config(model_fields, base)
    for k, v in (token_ids or {}).items():
      if k in TOKEN_ID_FIELDS and v is not None:
        cfg[k] = int(v)
    cfg.setdefault("torch_dtype", "float32")
    return cfg
  if arch not in ARCH_TO_MODEL_TYPE:
    raise CheckpointFormatError(
        f"model.arch={arch!r} has no FLA/HF format; --to-hf exports "
        f"{sorted(ARCH_TO_MODEL_TYPE) + ['lact']} (model_type {sorted(SUPPORTED)}).")
  mt = ARCH_TO_MODEL_TYPE[arch]
  cfg = dict(FLA_DEFAULTS[mt])
  if base and base.get("model_type") == mt:
    cfg.update(base)
  for fla_name, ours in FIELD_MAP[mt].items():
    if ours in model_fields:
      cfg[fla_name] = _plain(model_fields[ours])
  for k, v in (token_ids or {}).items():
    if k in TOKEN_ID_FIELDS and v is not None:
      cfg[k] = int(v)
  cfg["model_type"] = mt
  cfg["architectures"] = [ARCHS[mt][1]]
  cfg.setdefault("torch_dtype", "float32")
  return cfg


def _plain(v: Any) -> Any:
  """JSON-friendly value (ConfigDict leaves may be tuples / FieldReferences)."""
  if isinstance(v, tuple):
    return [_plain(x) for x in v]
  if hasattr(v, "to_dict"):
    return v.to_dict()
  return v
