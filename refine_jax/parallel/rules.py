"""Logical axis names (set on params by the models) -> mesh axes, and the shardings built from them.

fsdp splits the large model dimension (embed) and the batch; tensor splits heads, mlp and vocab.
A dimension that the mesh axes do not divide is replicated instead, so tiny test models run on
any mesh; an axis is used at most once per array.

Not flax.linen.logical_to_mesh_axes (flax.nnx has no own copy): it knows neither the mesh nor the
shape, so an axis it gives a dim we then replicate is lost to later dims (heads=3, mlp=8 on
tensor=2: P(None, None), ours P(None, 'tensor')); it assigns in rule order, not dim order
(('mlp', 'heads') -> P(None, 'tensor')); it refuses a whole tuple when one axis is taken
(('embed', 'batch') -> P(None, ('data', 'fsdp')), ours P('fsdp', 'data')); it maps unknown
names silently to None and rejects a name repeated in one array.
"""

import math

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("conv", None),
    ("norm", None),
    ("layers", None),  # the stacked-layer axis of scanned params: every device holds all layers
)


def logical_to_spec(names, shape, mesh, rules=LOGICAL_RULES):
  """PartitionSpec for an array of `shape` whose dims carry logical `names` (None = replicated)."""
  # Own loop, not Flax's helper: the fallback needs the mesh and shape per dim (module docstring).
  table = dict(rules)
  names = tuple(names or ())
  if len(names) != len(shape):
    raise ValueError(f"logical names {names} do not match array shape {tuple(shape)}; "
                     "give one name (or None) per dimension in nnx.with_partitioning.")
  used, spec = set(), []
  for name, dim in zip(names, shape):
    axes = table.get(name) if name is not None else None
    if name is not None and name not in table:
      raise ValueError(f"unknown logical axis name {name!r}; known: {sorted(table)}. Add it to "
                       "refine_jax.parallel.rules.LOGICAL_RULES.")
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    # Drop size-1 and already-used mesh axes; replicate when the rest does not divide the dim.
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
    if not axes or dim % math.prod(mesh.shape[a] for a in axes):
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def _names_of(variable):
  meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
  return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


def state_shardings(state, mesh, rules=LOGICAL_RULES):
  """NamedSharding tree matching an nnx.State (or any pytree of Variables / arrays)."""
  def one(x):
    if isinstance(x, nnx.Variable):
      value = x.get_value() if hasattr(x, "get_value") else x.value
      names = _names_of(x) or (None,) * len(value.shape)
      return x.replace(NamedSharding(mesh, logical_to_spec(names, value.shape, mesh, rules)))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh):
  """Leading (batch) dim over data x fsdp; everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())
