"""Build a model from flat params without random init, and read flat params back.

Flat params are {nnx path tuple: array} over the model's nnx.Param variables, one entry per
layer ("layers", i, ...) also for a scanned model (its stacked params are split and
re-stacked here, so file formats and names never depend on model.scan_layers); the rest of
the model's state (RNG counters, buffers) is materialised by a jitted build whose parameter
initialisers XLA drops as dead code, so a 1B model never draws 1B random numbers here.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refine_jax.models import lm
from refine_jax.models import build_model


def _get(var):  # flax >= 0.12 prefers get_value(); older ones only have .value
  return var.get_value() if hasattr(var, "get_value") else var.value


def _set(var, value):
  if hasattr(var, "set_value"):
    var.set_value(value)
  else:
    var.value = value


def _builder(model_cfg):
  return lambda: build_model(model_cfg, rngs=nnx.Rngs(0))


def abstract_params(model_cfg) -> dict[tuple, jax.ShapeDtypeStruct]:
  """{nnx path: ShapeDtypeStruct} of the model's params (no compute)."""
  model = nnx.eval_shape(_builder(model_cfg))
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return dict(lm.per_layer_params((p, _get(v)) for p, v in nnx.to_flat_state(params)))


def flat_params(model) -> dict[tuple, np.ndarray]:
  """{nnx path: numpy array} of a live model's params."""
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return dict(lm.per_layer_params((p, np.asarray(jax.device_get(_get(v))))
                                  for p, v in nnx.to_flat_state(params)))


def abstract_state(model_cfg):
  """(graphdef, abstract params nnx.State, abstract rest) of the model `model_cfg` builds."""
  return nnx.split(nnx.eval_shape(_builder(model_cfg)), nnx.Param, ...)


def model_from_state(model_cfg, params_state):
  """A model with the given params nnx.State (structure of abstract_state's params)."""
  build = _builder(model_cfg)
  graphdef, _, abs_rest = abstract_state(model_cfg)
  if jax.tree.leaves(abs_rest):
    rest = jax.jit(lambda: nnx.split(build(), nnx.Param, ...)[2])()
  else:
    rest = abs_rest
  return nnx.merge(graphdef, params_state, rest)


def model_from_params(model_cfg, params: dict[tuple, Any]):
  """A model whose params are `params` (all of them, shapes checked by the caller)."""
  _, abs_params, _ = abstract_state(model_cfg)
  flat = nnx.to_flat_state(abs_params)
  want_per_layer = dict(lm.per_layer_params((p, _get(v)) for p, v in flat))
  for path, want in want_per_layer.items():
    a = params[path]
    if tuple(a.shape) != tuple(want.shape):
      raise ValueError(f"param {'.'.join(map(str, path))}: expected shape "
                       f"{tuple(want.shape)}, got {tuple(a.shape)}")
  layers = int(model_cfg.layers)
  for path, var in flat:
    _set(var, jnp.asarray(lm.stacked_value(path, params, layers), dtype=_get(var).dtype))
  return model_from_state(model_cfg, nnx.from_flat_state(flat))
