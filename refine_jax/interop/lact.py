"""LaCT HF-format checkpoints (a1600012888/LaCT `lact_llm`: model_type "lact_swiglu",
`LaCTForCausalLM`) <-> refine_jax `model.arch = "lact"` (refine_jax/models/lact.py).

LaCT's trunk uses FLA's names (embeddings, layers.{i}.attn_norm / mlp_norm / mlp.*, norm,
lm_head), so only the mixer keys need a rewrite before the shared table of hf_weights:
  attn.qkv.weight [3D, D] (q, k, v stacked, `.chunk(3)` order)  <-> attn.{q,k,v}_proj
  attn.qkv.bias   [3D]                                            <-> attn.{q,k,v}_proj.bias
  attn.w0.w_left / w_right (low-rank W0, [Hf, dh, r] / [Hf, r, dk]) <-> attn.w0_left / w0_right
  attn.w2.w_left / w_right                                         <-> attn.w2_left / w2_right
  attn.momentum_proj.0.{weight,bias} (Linear inside nn.Sequential) <-> attn.momentum_proj
w0 / w1 / w2 (full rank), qk_scale / qk_offset [D, 2], lr_proj, ttt_scale_proj, ttt_norm,
q_norm / k_norm and o_proj keep their names. The fast-weight matrices are [Hf, out, in] in
both. LaCT fixes base_lr = 1e-3 (its "mamba" lr parameterisation).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from refine_jax.interop.safetensors_io import CheckpointFormatError

MODEL_TYPE = "lact_swiglu"
ARCHITECTURE = "LaCTForCausalLM"

# LaCTSWIGLUConfig defaults (configuration_lact_swiglu.py).
DEFAULTS = dict(
    hidden_size=2048, num_hidden_layers=24, num_attn_heads=32, num_lact_heads=4, inter_multi=1,
    qkv_bias=False, attn_qk_norm=False, lact_chunk_size=2048, use_muon=False, lr_dim=1,
    qkv_silu=True, no_v_silu=False, lr_parameterization="mamba", learnable_ttt_scale=True,
    use_momentum=True, ttt_loss_type="dot_product", ttt_prenorm=False, ttt_nope=False,
    w0_w2_low_rank=-1, window_size=2048, rope_theta=10000.0, max_position_embeddings=2048,
    hidden_ratio=4, intermediate_size=None, hidden_act="swish", initializer_range=0.006,
    elementwise_affine=True, norm_eps=1e-6, use_cache=True, pad_token_id=None, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False, fuse_norm=True, last_layer_fuse_norm=True,
    fuse_swiglu=True, fuse_cross_entropy=True, vocab_size=32000, fw_init_gain=0.5,
    use_fused_kernel=False, fp32_states=False,
)
# LaCT field -> our model.* field (top level) ...
MODEL_MAP = dict(hidden_size="hidden", num_hidden_layers="layers", num_attn_heads="heads",
                 vocab_size="vocab_size", hidden_ratio="hidden_ratio",
                 intermediate_size="intermediate_size", norm_eps="norm_eps",
                 tie_word_embeddings="tie_word_embeddings")
# ... and -> model.lact.* (refine_jax.models.lact.LACT_DEFAULTS)
LACT_MAP = dict(num_lact_heads="num_fw_heads", inter_multi="inter_multi",
                lact_chunk_size="chunk", window_size="window", rope_theta="rope_theta",
                qkv_bias="qkv_bias", attn_qk_norm="attn_qk_norm", qkv_silu="qkv_silu",
                no_v_silu="no_v_silu", use_momentum="use_momentum", use_muon="use_muon",
                learnable_ttt_scale="learnable_ttt_scale", ttt_nope="ttt_nope",
                w0_w2_low_rank="w0_w2_low_rank", fw_init_gain="fw_init_gain")
# Settings our mixer implements only at LaCT's default (anything else changes the math).
FIXED = ("lr_dim", "lr_parameterization", "ttt_loss_type", "ttt_prenorm", "hidden_act",
         "elementwise_affine")
BASE_LR = 1e-3


def resolved(hf_cfg: dict[str, Any]) -> dict[str, Any]:
  return {k: hf_cfg.get(k, d) for k, d in DEFAULTS.items()}


def model_fields(hf_cfg: dict[str, Any], model_defaults: dict[str, Any]) -> dict[str, Any]:
  """{model field: value} (with a "lact" sub-dict) for a LaCT config.json."""
  c = resolved(hf_cfg)
  for k in FIXED:
    if c[k] != DEFAULTS[k]:
      raise CheckpointFormatError(
          f"config.json sets {k}={c[k]!r}; refine_jax's LaCT mixer implements only LaCT's "
          f"default {DEFAULTS[k]!r}, so this checkpoint cannot be converted exactly.")
  out: dict[str, Any] = {"arch": "lact", "attn_layers": ()}
  out.update({ours: c[k] for k, ours in MODEL_MAP.items() if ours in model_defaults})
  lact = dict(model_defaults.get("lact") or {})
  missing = [ours for ours in LACT_MAP.values() if lact and ours not in lact]
  if not lact or missing:
    raise CheckpointFormatError(
        "refine_jax.models.lact is not available (or lacks fields "
        f"{missing}); LaCT checkpoints need the LaCT mixer.")
  lact.update({ours: c[k] for k, ours in LACT_MAP.items()})
  lact["base_lr"] = BASE_LR
  out["lact"] = lact
  return out


def to_hf_config(model_cfg, base: dict | None = None) -> dict[str, Any]:
  cfg = dict(DEFAULTS)
  if base and base.get("model_type") == MODEL_TYPE:
    cfg.update(base)
  for k, ours in MODEL_MAP.items():
    if ours in model_cfg:
      cfg[k] = model_cfg[ours]
  lact = model_cfg["lact"]
  for k, ours in LACT_MAP.items():
    cfg[k] = lact[ours]
  if float(lact.get("base_lr", BASE_LR) or BASE_LR) != BASE_LR:
    raise CheckpointFormatError(
        f"model.lact.base_lr={lact['base_lr']}; LaCT's format hard-codes base_lr={BASE_LR}.")
  cfg.update(model_type=MODEL_TYPE, architectures=[ARCHITECTURE])
  return cfg


_RENAMES = [  # (LaCT pattern, our pattern) inside `model.layers.{i}.attn.`
    (r"\.attn\.(w0|w2)\.w_(left|right)$", r".attn.\1_\2"),
    (r"\.attn\.momentum_proj\.0\.(weight|bias)$", r".attn.momentum_proj.\1"),
]
_INVERSE = [
    (r"\.attn\.(w0|w2)_(left|right)$", r".attn.\1.w_\2"),
    (r"\.attn\.momentum_proj\.(weight|bias)$", r".attn.momentum_proj.0.\1"),
]


def from_lact_keys(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """LaCT state dict -> the key layout hf_weights' table uses (fused qkv split)."""
  out = {}
  for key, a in tensors.items():
    m = re.match(r"^(.*\.attn)\.qkv\.(weight|bias)$", key)
    if m:
      if a.shape[0] % 3:
        raise CheckpointFormatError(f"{key} has shape {tuple(a.shape)}; its first dim must be "
                                    "3 * hidden_size (q, k, v stacked).")
      for name, part in zip("qkv", np.split(np.asarray(a), 3, axis=0)):
        out[f"{m.group(1)}.{name}_proj.{m.group(2)}"] = part
      continue
    for pat, rep in _RENAMES:
      key = re.sub(pat, rep, key)
    out[key] = a
  return out


def to_lact_keys(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of from_lact_keys (q, k, v fused back into attn.qkv)."""
  out, parts = {}, {}
  for key, a in tensors.items():
    m = re.match(r"^(.*\.attn)\.([qkv])_proj\.(weight|bias)$", key)
    if m:
      parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = a
      continue
    for pat, rep in _INVERSE:
      key = re.sub(pat, rep, key)
    out[key] = a
  for (prefix, kind), p in parts.items():
    out[f"{prefix}.qkv.{kind}"] = np.concatenate([p["q"], p["k"], p["v"]], axis=0)
  return out
