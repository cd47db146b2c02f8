"""`model.*` config: every field and its default, plus validation and derived sizes.

Field names mirror FLA's DeltaNetConfig / GatedDeltaNetConfig where one exists:
  hidden_size -> hidden, num_hidden_layers -> layers, num_heads -> heads; the rest keep FLA's
  names (vocab_size, expand_k, expand_v, head_dim, num_v_heads, conv_size, use_short_conv,
  use_beta, use_gate, qk_norm, qk_activation, allow_neg_eigval, hidden_ratio,
  intermediate_size, norm_eps, initializer_range, tie_word_embeddings).
Fields whose FLA default differs between DeltaNet and Gated DeltaNet are placeholders (None =
the arch's FLA default): expand_v (1 / 2), use_gate (False / True), head_dim, num_v_heads.
"""
from __future__ import annotations

import dataclasses

from ml_collections import config_dict

from refine_jax.models import attention, lact

ARCHS = ("deltanet", "gated_deltanet", "transformer", "lact")
LOGITS_DTYPES = ("float32", "model")


def _defaults(fields: dict) -> config_dict.ConfigDict:
  """A mixer module's sub-section defaults. None defaults become untyped placeholders so
  `--config.model.attention.window=2048` works from the command line (config_flags cannot
  override a plain None field)."""
  return config_dict.ConfigDict(
      {k: config_dict.placeholder(object) if v is None else v for k, v in fields.items()})


def default_model_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.arch = "deltanet"          # deltanet | gated_deltanet | transformer | lact
  c.vocab_size = 512           # set to the tokenizer's vocab size by the stage configs
  c.hidden = 256
  c.layers = 4
  c.heads = 4
  # DeltaNet / Gated DeltaNet mixer (FLA names).
  c.expand_k = 1.0             # head_k_dim = hidden * expand_k / heads unless head_dim is set
  c.expand_v = config_dict.placeholder(float)   # None: 1.0 DeltaNet, 2.0 GDN
  c.head_dim = config_dict.placeholder(int)     # GDN head_k_dim (FLA head_dim)
  c.num_v_heads = config_dict.placeholder(int)  # GDN value heads (GVA); None = heads
  c.use_short_conv = True
  c.conv_size = 4
  c.use_beta = True
  c.use_gate = config_dict.placeholder(bool)    # None: False DeltaNet, True GDN
  c.qk_norm = "l2"             # l2 | sum
  c.qk_activation = "silu"     # silu | relu | elu | identity
  c.allow_neg_eigval = False
  # MLP, norms, init, head.
  c.hidden_ratio = 4
  c.intermediate_size = config_dict.placeholder(int)
  c.norm_eps = 1e-6
  c.initializer_range = 0.02
  c.tie_word_embeddings = False
  # Hybrids: indices of softmax-attention layers inside a deltanet / gated_deltanet / lact
  # model (FLA's `attn.layers`). arch "transformer" makes every layer attention.
  c.attn_layers = ()
  # Numerics / kernels.
  # Compute dtype; params (and the residual stream) stay float32. "auto" = bfloat16 on GPU/TPU,
  # float32 on CPU (where bf16 is slow and tests compare against float32 references).
  c.dtype = "auto"
  # LM head (untied lm_head or tied embeddings.attend) dtype: "float32" = float32 operands and
  # result whatever model.dtype is (RL log-probs, entropies, PPO ratios and NTP need logits
  # without bf16 rounding: bf16 steps are 0.125 once |logit| >= 16; MaxText's
  # logits_dot_in_fp32); "model" = the head computes in model.dtype (bf16-rounded logits when
  # that is bfloat16; the behaviour before this field existed).
  c.logits_dtype = "float32"
  c.backend = "auto"           # pallas_kernels backend
  c.chunk_size = 64            # fast-weight chunk length (also the cache_at advance length)
  # Layers: one lax.scan over stacked params (compile time flat in depth); hybrids unroll.
  c.scan_layers = True
  # Per-block rematerialisation in the backward pass: none | full (keep only each block's
  # input) | dots (keep matmul outputs) | dots_no_batch (keep weight-matmul outputs only).
  c.remat = config_dict.FieldReference("none", field_type=object)  # bools: full / none
  c.attention = _defaults(attention.ATTENTION_DEFAULTS)
  c.lact = _defaults(lact.LACT_DEFAULTS)
  return c


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
  remat = cfg.get("remat", "none")
  if not (isinstance(remat, bool) or remat in ("none", "full", "dots", "dots_no_batch")):
    raise ValueError(f"model.remat={remat!r}; use none | full | dots | dots_no_batch")
  logits_dtype = cfg.get("logits_dtype", "float32")
  if logits_dtype not in LOGITS_DTYPES:
    raise ValueError(f"model.logits_dtype={logits_dtype!r}; use one of {LOGITS_DTYPES} "
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
