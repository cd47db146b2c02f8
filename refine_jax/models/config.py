"""`model.*` validation and derived sizes (every field and its default: refine_jax/config.py).

Fields whose FLA default differs between DeltaNet and Gated DeltaNet are placeholders (None =
the arch's FLA default): expand_v (1 / 2), use_gate (False / True), head_dim, num_v_heads.
"""
from __future__ import annotations

import dataclasses

ARCHS = ("deltanet", "gated_deltanet", "transformer", "lact")
LOGITS_DTYPES = ("float32", "model")
REMAT_CHOICES = ("none", "full", "dots", "dots_no_batch")  # models/lm.py maps each to a policy


def remat_mode(value) -> str:
  """model.remat as a policy name; booleans (older configs) mean full / none."""
  if isinstance(value, bool) or value is None:
    return "full" if value else "none"
  if value not in REMAT_CHOICES:
    raise ValueError(f"model.remat={value!r}; use one of {REMAT_CHOICES}")
  return value


@dataclasses.dataclass(frozen=True)
class DeltaDims:
  """Resolved fast-weight mixer sizes."""
  heads: int        # q/k heads H
  v_heads: int      # value heads HV (>= H; value head j reads q/k head j // (HV // H))
  head_k_dim: int
  head_v_dim: int

  @property
  def key_dim(self):
    return self.heads * self.head_k_dim

  @property
  def value_dim(self):
    return self.v_heads * self.head_v_dim


def delta_dims(cfg, gated: bool) -> DeltaDims:
  """Head sizes exactly as FLA's DeltaNet (expand_k/expand_v) / GatedDeltaNet (head_dim)."""
  H = cfg.heads
  if cfg.head_dim:
    dk = int(cfg.head_dim)
  else:
    key_dim = int(cfg.hidden * cfg.expand_k)
    if key_dim % H:
      raise ValueError(f"model.hidden*model.expand_k={key_dim} must be divisible by "
                       f"model.heads={H}; change model.heads or set model.head_dim")
    dk = key_dim // H
  if not gated:
    if cfg.num_v_heads not in (None, H):
      raise ValueError(f"model.num_v_heads={cfg.num_v_heads} is only for gated_deltanet; "
                       "leave it unset for deltanet")
    value_dim = int(cfg.hidden * (1.0 if cfg.expand_v is None else cfg.expand_v))
    if value_dim % H:
      raise ValueError(f"model.hidden*model.expand_v={value_dim} must be divisible by "
                       f"model.heads={H}")
    if cfg.head_dim:
      raise ValueError("model.head_dim is a gated_deltanet field; deltanet sizes heads by "
                       "model.expand_k / model.expand_v")
    return DeltaDims(H, H, dk, value_dim // H)
  ev = 2.0 if cfg.expand_v is None else cfg.expand_v
  dv = int(dk * ev)
  if abs(dk * ev - dv) > 1e-5:
    raise ValueError(f"model.expand_v={ev} times head_dim={dk} is not an integer")
  HV = cfg.num_v_heads or H
  if HV < H or HV % H:
    raise ValueError(f"model.num_v_heads={HV} must be a multiple of model.heads={H}")
  return DeltaDims(H, HV, dk, dv)


def layer_kinds(cfg) -> list[str]:
  """Mixer kind of each layer: 'deltanet' | 'gated_deltanet' | 'attention' | 'lact'."""
  if cfg.arch not in ARCHS:
    raise ValueError(f"model.arch={cfg.arch!r} is unknown; use one of {ARCHS}")
  if cfg.arch == "transformer":
    return ["attention"] * cfg.layers
  attn = set(int(i) for i in (cfg.attn_layers or ()))
  bad = [i for i in attn if not 0 <= i < cfg.layers]
  if bad:
    raise ValueError(f"model.attn_layers={tuple(cfg.attn_layers)} has indices outside "
                     f"[0, model.layers={cfg.layers})")
  return ["attention" if i in attn else cfg.arch for i in range(cfg.layers)]


def validate(cfg) -> None:
  """One clear error naming the offending field."""
  for name in ("hidden", "layers", "heads", "vocab_size", "conv_size", "chunk_size"):
    v = cfg[name]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      raise ValueError(f"model.{name}={v!r} must be a positive integer")
  remat_mode(cfg.remat)
  if cfg.logits_dtype not in LOGITS_DTYPES:
    raise ValueError(f"model.logits_dtype={cfg.logits_dtype!r}; use one of {LOGITS_DTYPES} "
                     "(float32: float32 LM head; model: the head computes in model.dtype)")
  if cfg.chunk_size & (cfg.chunk_size - 1):
    raise ValueError(f"model.chunk_size={cfg.chunk_size} must be a power of two (e.g. 64)")
  # Gated DeltaNet sizes heads by head_dim (FLA's 1.3B: hidden 2048, 6 heads of 256); every
  # other mixer splits hidden into heads.
  sized_by_head_dim = cfg.arch == "gated_deltanet" and cfg.head_dim and not cfg.attn_layers
  if cfg.hidden % cfg.heads and not sized_by_head_dim:
    raise ValueError(f"model.hidden={cfg.hidden} is not divisible by model.heads={cfg.heads}; "
                     "pick heads dividing hidden")
  if cfg.qk_norm not in ("l2", "sum"):
    raise ValueError(f"model.qk_norm={cfg.qk_norm!r}; use 'l2' or 'sum'")
  if cfg.qk_activation not in ("silu", "relu", "elu", "identity"):
    raise ValueError(f"model.qk_activation={cfg.qk_activation!r}; use silu|relu|elu|identity")
  kinds = layer_kinds(cfg)
  if "deltanet" in kinds:
    delta_dims(cfg, gated=False)
  if "gated_deltanet" in kinds:
    delta_dims(cfg, gated=True)
