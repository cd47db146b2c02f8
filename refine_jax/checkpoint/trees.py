"""Checkpoint layouts for trees: params as nnx pure dicts, other pytrees as nested dicts by path.

Orbax stores nested dicts of arrays most robustly, so what is written is always plain nested dicts
with string keys; these helpers convert to that and back onto a template of the live structure.
Params use nnx.to_pure_dict / replace_by_pure_dict as Orbax's NNX examples do; what is kept
here is what those cannot do: relayout between scanned ([L, ...] under layers.*) and unrolled
(layers.<i>.*) checkpoints, and optax states (named tuples) as nested dicts by path.
"""

import jax
from flax import nnx, traverse_util

from refine_jax.models import lm


def params_to_pure(state):
  """nnx.State -> nested dict {name: array} (the FLA-like parameter layout on disk)."""
  return _str_keys(nnx.to_pure_dict(state))


def params_from_pure(template, pure):
  """Values of `pure` placed into a copy of the nnx.State `template` (keys must match exactly,
  up to the layer layout: scanned [L, ...] params and per-layer ones convert both ways)."""
  want = {_key(p): v for p, v in traverse_util.flatten_dict(nnx.to_pure_dict(template)).items()}
  have = {_key(p): v for p, v in traverse_util.flatten_dict(pure).items()}
  if set(want) != set(have):
    have = _relayout(want, have)
  missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  if missing or extra:
    raise ValueError(f"checkpoint parameters do not match the model: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}; build the model with the same model.* config as "
                     "the run that wrote the checkpoint.")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(
      template, is_leaf=lambda x: isinstance(x, nnx.Variable))
  out = []
  for path, var in leaves:
    name = _key(tuple(_part(p) for p in path))
    value = have[name]
    want_shape = tuple(_value(var).shape)
    if tuple(value.shape) != want_shape:
      raise ValueError(f"checkpoint parameter {name} has shape {tuple(value.shape)} but the model "
                       f"expects {want_shape}; match the model.* config of the checkpoint.")
    out.append(var.replace(value) if isinstance(var, nnx.Variable) else value)
  return jax.tree.unflatten(treedef, out)


def _relayout(want, have):
  """`have` re-keyed to `want`'s layer layout (stack or split the per-layer params)."""

  def norm(path):  # ("layers", "3", ...) -> ("layers", 3, ...), as lm's per-layer paths
    path = tuple(path)
    if len(path) > 1 and path[0] == "layers" and str(path[1]).isdigit():
      return ("layers", int(path[1])) + path[2:]
    return path

  per_layer = {norm(p): v for p, v in lm.per_layer_params(
      (tuple(k.split("/")), v) for k, v in have.items())}
  n = 1 + max((p[1] for p in per_layer if p[0] == "layers" and isinstance(p[1], int)),
              default=-1)
  out = {}
  for key in want:
    try:
      out[key] = lm.stacked_value(norm(key.split("/")), per_layer, n)
    except KeyError:
      return have  # a real mismatch: report it against the original keys
  return out


def tree_to_nested(tree):
  """Any pytree -> nested dict keyed by path components (e.g. an optax state)."""
  nested = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    node = nested
    parts = ["_" + _part(p) for p in path] or ["_"]
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = leaf
  return nested


def tree_from_nested(template, nested):
  """Inverse of tree_to_nested onto `template`'s structure."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, _ in paths:
    node = nested
    for part in ["_" + _part(p) for p in path] or ["_"]:
      node = node[part]
    leaves.append(node)
  return jax.tree.unflatten(treedef, leaves)


def _value(x):
  if isinstance(x, nnx.Variable):
    return x.get_value() if hasattr(x, "get_value") else x.value
  return x


def _part(p):
  for attr in ("key", "idx", "name"):
    if hasattr(p, attr):
      return str(getattr(p, attr))
  return str(p)


def _key(parts):
  return "/".join(str(p) for p in parts)


def _str_keys(d):
  return {str(k): _str_keys(v) if isinstance(v, dict) else v for k, v in d.items()}
