"""The language model: embeddings -> blocks -> final RMSNorm -> lm_head, plus caches.

Mirrors FLA's `{DeltaNet,GatedDeltaNet}ForCausalLM` (fla 0.5/0.6). State-dict map (FLA key ->
NNX path; FLA's `model.` prefix is dropped; kernels are torch weights transposed):
  model.embeddings.weight            -> embeddings.embedding
  model.layers.{i}.attn_norm.weight  -> layers[i].attn_norm.weight
  model.layers.{i}.attn.*            -> layers[i].attn.*   (see deltanet.py)
  model.layers.{i}.mlp_norm.weight   -> layers[i].mlp_norm.weight
  model.layers.{i}.mlp.{gate,up,down}_proj.weight -> layers[i].mlp.*.kernel
  model.norm.weight                  -> norm.weight
  lm_head.weight                     -> lm_head.kernel
A cache is a tuple with one mixer cache per layer.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from refine_jax.models import layers
from refine_jax.models.config import layer_kinds, validate


class LMOutput(NamedTuple):
  logits: jax.Array          # [B, T, vocab] float32
  hidden_states: jax.Array   # [B, T, D] after the final norm, float32
  cache: Any                 # tuple of per-layer caches, or None
  captured: Any              # tuple of per-layer captures (capture=True), or None


def mixer_class(kind: str):
  """Mixer class for a layer kind; attention / LaCT come from their own modules."""
  if kind == "deltanet":
    from refine_jax.models.deltanet import DeltaNet
    return DeltaNet
  if kind == "gated_deltanet":
    from refine_jax.models.deltanet import GatedDeltaNet
    return GatedDeltaNet
  if kind == "attention":
    from refine_jax.models import attention
    return _find_mixer(attention, "attention")
  if kind == "lact":
    from refine_jax.models import lact
    return _find_mixer(lact, "lact")
  raise ValueError(f"unknown mixer kind {kind!r}")


def _find_mixer(mod, kind):
  for name in ("MIXER", "Attention", "LaCT", "Lact", "LaCTMixer"):
    cls = getattr(mod, name, None)
    if isinstance(cls, type):
      return cls
  raise ImportError(f"refine_jax.models.{mod.__name__.rsplit('.', 1)[-1]} exports no {kind} "
                    "mixer class")


class Block(nnx.Module):
  """h += Mixer(RMSNorm(h)); h += MLP(RMSNorm(h))."""

  def __init__(self, cfg, layer_idx: int, kind: str, *, rngs: nnx.Rngs):
    dt = layers.compute_dtype(cfg.dtype)
    self.attn_norm = layers.RMSNorm(cfg.hidden, eps=cfg.norm_eps, rngs=rngs)
    self.attn = mixer_class(kind)(cfg, layer_idx, rngs=rngs)
    self.mlp_norm = layers.RMSNorm(cfg.hidden, eps=cfg.norm_eps, rngs=rngs)
    width = layers.mlp_width(cfg.hidden, cfg.hidden_ratio, cfg.intermediate_size)
    self.mlp = layers.GatedMLP(cfg.hidden, width, std=cfg.initializer_range, dtype=dt, rngs=rngs)

  def __call__(self, h_BTD, cache=None, *, capture=False):
    y, cache, captured = self.attn(self.attn_norm(h_BTD), cache, capture=capture)
    h_BTD = h_BTD + y.astype(h_BTD.dtype)
    h_BTD = h_BTD + self.mlp(self.mlp_norm(h_BTD)).astype(h_BTD.dtype)
    return h_BTD, cache, captured


class LM(nnx.Module):
  """Causal LM over any mix of mixers (config `model.arch` + `model.attn_layers`)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    validate(cfg)
    self.tie_word_embeddings = bool(cfg.tie_word_embeddings)
    self.dtype = layers.compute_dtype(cfg.dtype)
    self.remat = bool(cfg.remat)
    self.kinds = tuple(layer_kinds(cfg))
    std = cfg.initializer_range
    self.embeddings = nnx.Embed(
        cfg.vocab_size, cfg.hidden, dtype=jnp.float32, param_dtype=jnp.float32,
        embedding_init=layers.partitioned(layers.normal_init(std), ("vocab", "embed")),
        rngs=rngs)
    self.layers = nnx.List([Block(cfg, i, kind, rngs=rngs) for i, kind in enumerate(self.kinds)])
    self.norm = layers.RMSNorm(cfg.hidden, eps=cfg.norm_eps, rngs=rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = layers.linear(cfg.hidden, cfg.vocab_size, ("embed", "vocab"), std=std,
                                   dtype=self.dtype, rngs=rngs)

  def __call__(self, input_ids_BT, cache=None, *, capture=False) -> LMOutput:
    if input_ids_BT.ndim != 2:
      raise ValueError(f"input_ids must be [batch, time]; got shape {input_ids_BT.shape}")
    if cache is not None and len(cache) != len(self.layers):
      raise ValueError(f"cache has {len(cache)} layers, the model {len(self.layers)}")
    if capture and cache is not None:
      raise ValueError("capture=True needs a full-sequence forward without a cache")
    # The residual stream stays float32; mixers and MLPs compute in model.dtype.
    h = self.embeddings(input_ids_BT)
    new_cache, captured = [], []
    for i, block in enumerate(self.layers):
      c = None if cache is None else cache[i]
      if self.remat and cache is None:
        h, c, cap = nnx.remat(lambda blk, x: blk(x, None, capture=capture))(block, h)
      else:
        h, c, cap = block(h, c, capture=capture)
      new_cache.append(c)
      captured.append(cap)
    h = self.norm(h)
    if self.tie_word_embeddings:
      logits = self.embeddings.attend(h.astype(self.dtype))
    else:
      logits = self.lm_head(h)
    return LMOutput(logits=logits.astype(jnp.float32),
                    hidden_states=h.astype(jnp.float32),
                    cache=None if cache is None else tuple(new_cache),
                    captured=tuple(captured) if capture else None)

  def init_cache(self, batch: int, max_len: int):
    """Empty cache for `batch` sequences of up to `max_len` tokens (attention KV buffers)."""
    return tuple(b.attn.init_cache(batch, max_len) for b in self.layers)

  def cache_at(self, captured, positions_Bn, max_len: int):
    """Caches after tokens[b, :positions[b, i] + 1] for batch B*n (row b*n + i).

    `captured` comes from `model(tokens, capture=True)`; positions must lie in [0, T) (not
    checked under jit: indices are clamped). No re-run of the prefix.
    """
    if captured is None or len(captured) != len(self.layers):
      raise ValueError("cache_at needs the `captured` of model(tokens, capture=True)")
    if positions_Bn.ndim != 2:
      raise ValueError(f"positions must be [batch, n]; got shape {positions_Bn.shape}")
    return tuple(b.attn.cache_at(cap, positions_Bn, max_len)
                 for b, cap in zip(self.layers, captured))


def build_model(model_cfg, *, rngs: nnx.Rngs) -> LM:
  """The LM for a `model.*` config (see config.default_model_config)."""
  return LM(model_cfg, rngs=rngs)


def param_count(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ---- FLA / HF state-dict names (the converter and the FLA-logit checks use these).

def _fla_key(path) -> tuple[str, str]:
  """NNX param path -> (FLA state-dict key, layout) with layout in {same, linear, conv}."""
  names = [str(p) for p in path]
  leaf = names[-1]
  if names[:1] == ["lm_head"]:
    return "lm_head.weight", "linear"
  prefix = "model." + ".".join(names[:-1])
  if leaf == "embedding":
    return prefix + ".weight", "same"
  if leaf == "kernel":
    return prefix + ".weight", ("conv" if names[-2].endswith("conv1d") else "linear")
  if leaf in ("weight", "bias"):
    return prefix + "." + leaf, "same"
  return "model." + ".".join(names), "same"      # bare params: A_log, dt_bias, ...


def _to_torch(x, layout):
  x = np.asarray(x)
  if layout == "linear":
    return x.T                      # nnx [in, out] -> torch [out, in]
  if layout == "conv":
    return x.T[:, None, :]          # ours [W, C] -> torch Conv1d [C, 1, W]
  return x


def _from_torch(x, layout):
  x = np.asarray(x)
  if layout == "linear":
    return x.T
  if layout == "conv":
    return x[:, 0, :].T
  return x


def fla_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """Params under FLA's `*ForCausalLM` state-dict keys and torch layouts (float32 numpy)."""
  out = {}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key, layout = _fla_key(path)
    out[key] = _to_torch(v[...], layout).astype(np.float32)
  return out


def load_fla_state_dict(model: nnx.Module, sd: dict, *, strict: bool = True) -> None:
  """Loads an FLA/HF state dict (torch layouts) into `model` in place.

  strict: every model param must be present with the right shape, and no key left over.
  """
  state = nnx.state(model, nnx.Param)
  flat = nnx.to_flat_state(state)
  used, missing = set(), []
  for path, var in flat:
    key, layout = _fla_key(path)
    if key not in sd:
      missing.append(key)
      continue
    val = _from_torch(sd[key], layout)
    if val.shape != var[...].shape:
      raise ValueError(f"{key}: checkpoint shape {np.shape(sd[key])} does not match the "
                       f"model's {_to_torch(var[...], layout).shape}; check the model config")
    var[...] = jnp.asarray(val, var[...].dtype)
    used.add(key)
  extra = sorted(set(sd) - used)
  if strict and (missing or extra):
    raise ValueError(f"state dict mismatch: missing {missing[:8]}, unexpected {extra[:8]}")
  nnx.update(model, nnx.from_flat_state(flat))
