"""FLA / HF state-dict keys <-> NNX parameter paths, with the layout transposes.

The model's NNX attribute names mirror FLA's state-dict keys (refine_jax/models/layers.py), so
a key is the NNX path joined by "." with the leaf renamed and a "model." prefix for the
trunk. Layouts (torch -> NNX):
  Linear        `*_proj.weight`, `lm_head.weight`  [out, in]   -> kernel [in, out]   (.T)
  Short conv    `*_conv1d.weight`                  [C, 1, W]   -> kernel [W, C]      ([:, 0, :].T)
  Embedding     `model.embeddings.weight`          [V, D]      -> embedding [V, D]   (same)
  Norms, A_log, dt_bias, biases                                -> same
The table is built from the model itself, so a missing / extra / misshapen tensor is found
before anything is loaded. This is the only FLA key/layout map: the converter, the bundle
loader and the FLA-logit checks all go through it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from refine_jax.interop.safetensors_io import CheckpointFormatError
from refine_jax.models import lm

_LEAF_RENAME = {"kernel": "weight", "embedding": "weight", "scale": "weight"}
# Trunk attributes that FLA keeps under `model.`; everything else (lm_head) is top level.
_TOP_LEVEL = ("lm_head",)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: its NNX path, HF key, and the two layout maps."""
  path: tuple
  key: str
  nnx_shape: tuple
  hf_shape: tuple
  to_hf: Callable[[np.ndarray], np.ndarray]
  from_hf: Callable[[np.ndarray], np.ndarray]


def hf_key(path: tuple) -> str:
  parts = [str(p) for p in path]
  parts[-1] = _LEAF_RENAME.get(parts[-1], parts[-1])
  if parts[0] != "model" and parts[0] not in _TOP_LEVEL:
    parts = ["model"] + parts
  return ".".join(parts)


def _entry(path: tuple, shape: tuple) -> Entry:
  key, leaf, shape = hf_key(path), str(path[-1]), tuple(shape)
  if leaf == "kernel" and "conv1d" in key:
    if len(shape) == 2:  # ShortConv [W, C] <-> torch Conv1d [C, 1, W]
      return Entry(path, key, shape, (shape[1], 1, shape[0]),
                   lambda a: np.ascontiguousarray(a.T[:, None, :]),
                   lambda a: np.ascontiguousarray(a[:, 0, :].T))
    if len(shape) == 3:  # nnx.Conv depthwise [W, 1, C]
      return Entry(path, key, shape, shape[::-1],
                   lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)),
                   lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)))
  if leaf == "kernel" and len(shape) == 2:  # Linear
    return Entry(path, key, shape, shape[::-1],
                 lambda a: np.ascontiguousarray(a.T), lambda a: np.ascontiguousarray(a.T))
  if leaf == "kernel":
    raise CheckpointFormatError(f"no FLA layout known for {'.'.join(map(str, path))} {shape}")
  return Entry(path, key, shape, shape, np.asarray, np.asarray)


def param_table(params_flat: dict[tuple, Any]) -> dict[str, Entry]:
  """{HF key: Entry} for a flat {nnx path: array or ShapeDtypeStruct} of model params."""
  table: dict[str, Entry] = {}
  for path, v in params_flat.items():
    e = _entry(tuple(path), tuple(v.shape))
    if e.key in table:
      raise CheckpointFormatError(f"two params map to HF key {e.key!r}: "
                                  f"{table[e.key].path} and {e.path}")
    table[e.key] = e
  return table


def hf_to_params(tensors: dict[str, np.ndarray], table: dict[str, Entry], *,
                 tied: bool = False, dtype=np.float32) -> dict[tuple, np.ndarray]:
  """HF tensors -> {nnx path: array in NNX layout}, after checking names and shapes.

  tied: the checkpoint ties lm_head to the embeddings (tie_word_embeddings); FLA's
  save_pretrained then omits lm_head.weight, and a stored copy is accepted and ignored when
  our model has no separate head.
  """
  tensors = dict(tensors)
  if tied and "lm_head.weight" in table and "lm_head.weight" not in tensors:
    tensors["lm_head.weight"] = tensors.get("model.embeddings.weight")
  if tied and "lm_head.weight" not in table:
    tensors.pop("lm_head.weight", None)
  missing = sorted(k for k in table if tensors.get(k) is None)
  unexpected = sorted(set(tensors) - set(table))
  if missing or unexpected:
    msg = []
    if missing:
      msg.append(f"missing keys {_short(missing)}")
    if unexpected:
      msg.append(f"unexpected keys {_short(unexpected)}")
    raise CheckpointFormatError(
        "checkpoint does not match the model built from its config.json: " + "; ".join(msg)
        + ". Check that config.json belongs to these weights (sizes, layers, use_gate, "
        "use_short_conv, num_v_heads...).")
  out = {}
  for key, e in table.items():
    a = tensors[key]
    if tuple(a.shape) != e.hf_shape:
      raise CheckpointFormatError(
          f"shape mismatch for {key}: expected {e.hf_shape} (from config.json), got "
          f"{tuple(a.shape)}.")
    out[e.path] = np.asarray(e.from_hf(np.asarray(a))).astype(dtype)
  return out


def params_to_hf(params_flat: dict[tuple, Any], *, dtype=None) -> dict[str, np.ndarray]:
  """{nnx path: array} -> HF tensors (FLA layout), optionally cast (e.g. ml_dtypes.bfloat16)."""
  out = {}
  for key, e in param_table(params_flat).items():
    a = e.to_hf(np.asarray(params_flat[e.path]))
    out[key] = a if dtype is None else a.astype(dtype)
  return out


def _short(keys: list[str], n: int = 6) -> str:
  return str(keys[:n])[:-1] + (f", ... ({len(keys)} in all)]" if len(keys) > n else "]")


# ---- A live model <-> an FLA state dict (torch layouts), in memory.

def _per_layer(flat) -> dict[tuple, Any]:
  return dict(lm.per_layer_params((tuple(p), v[...]) for p, v in flat))


def fla_state_dict(model) -> dict[str, np.ndarray]:
  """The model's params under FLA's `*ForCausalLM` state-dict keys, torch layouts, float32."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return params_to_hf({p: np.asarray(v) for p, v in _per_layer(flat).items()}, dtype=np.float32)


def load_fla_state_dict(model, sd: dict) -> None:
  """Loads an FLA/HF state dict into `model` in place; names and shapes are checked first."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  params = hf_to_params(sd, param_table(_per_layer(flat)))
  for path, var in flat:
    value = lm.stacked_value(path, params, getattr(model, "num_layers", None))
    var[...] = jnp.asarray(value, var[...].dtype)
  nnx.update(model, nnx.from_flat_state(flat))
