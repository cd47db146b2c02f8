"""Run a Pallas op per device under a mesh (shard_map), so XLA never partitions a kernel.

A pallas_call lowers to one opaque custom call, which XLA's SPMD partitioner cannot split:
given sharded operands it gathers them onto every device and runs the whole op on each.
The delta rule is independent per (batch, head), so under a mesh context (`jax.set_mesh`,
which refine_jax's training loop enters) ops runs the kernels inside shard_map instead:
batch over BATCH_AXES, heads over HEAD_AXES, every other mesh axis replicated, and no
communication at all. Outside a mesh context nothing changes.
"""
from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec as P

# Mesh axis names (refine_jax.parallel's); names missing from a mesh are simply not used.
BATCH_AXES = ("data", "fsdp")
HEAD_AXES = ("tensor",)


def context_mesh():
  """The abstract mesh of the enclosing `jax.set_mesh`, or None (no mesh / one device)."""
  get = getattr(jax.sharding, "get_abstract_mesh", None)
  mesh = get() if get is not None else None
  if mesh is None or mesh.empty or math.prod(mesh.shape.values()) <= 1:
    return None
  return mesh


def _free_axes(mesh):
  """Axes not already manual (e.g. when called inside a user's shard_map)."""
  manual = getattr(jax.sharding.AxisType, "Manual", None)
  types = getattr(mesh, "axis_types", None) or (None,) * len(mesh.axis_names)
  return {a for a, t in zip(mesh.axis_names, types) if t != manual}


def _axes_for(dim, names, mesh, free):
  """The longest prefix of `names` (present, free, size > 1) whose product divides dim."""
  axes = tuple(a for a in names if a in free and mesh.shape[a] > 1)
  while axes and dim % math.prod(mesh.shape[a] for a in axes):
    axes = axes[:-1]
  return axes or None


def call(fn, q, k, v, beta, g, s0, out_layouts, segment_ids=None):
  """fn(q, k, v, beta, g, s0) -> tuple of outputs laid out as `out_layouts` (e.g. "BTHV",
  "BHKV"), run per device under a mesh context and as is outside one. g and s0 may be None.
  With segment_ids ([B, T], sharded over batch like the rest) fn also takes it, last."""
  seg = segment_ids is not None
  extra = (segment_ids,) if seg else ()
  mesh = context_mesh()
  if mesh is None:
    return tuple(fn(q, k, v, beta, g, s0, *extra))
  gated, has_s0 = g is not None, s0 is not None

  def body(q, k, v, beta, *rest):
    rest = list(rest)
    return tuple(fn(q, k, v, beta, rest.pop(0) if gated else None,
                    rest.pop(0) if has_s0 else None, *rest))

  args = (q, k, v, beta) + ((g,) if gated else ()) + ((s0,) if has_s0 else ()) + extra
  ins = ("BTHK", "BTHK", "BTHV", "BTH") + (("BTH",) if gated else ()) + (
      ("BHKV",) if has_s0 else ()) + (("BT",) if seg else ())
  return per_shard(body, mesh, q.shape[0], q.shape[2], ins, out_layouts)(*args)


def per_shard(fn, mesh, batch, heads, in_layouts, out_layouts):
  """shard_map(fn) with specs from layout strings: "B" batch axis, "H" head axis, any other
  letter an unsharded dim (e.g. "BTHK", "BHKV", "BNHKV"). `batch`/`heads` are the global
  sizes (a dim the mesh axes do not divide stays unsharded). Returns fn itself when nothing
  would be sharded."""
  free = _free_axes(mesh)
  b = _axes_for(batch, BATCH_AXES, mesh, free)
  h = _axes_for(heads, HEAD_AXES, mesh, free)
  if b is None and h is None:
    return fn
  spec = lambda layout: P(*[b if c == "B" else h if c == "H" else None for c in layout])
  # The kernels touch only their own shard: every output varies over exactly the axes its
  # inputs do, which check_vma cannot see through a custom call, hence off.
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(s) for s in in_layouts),
                       out_specs=tuple(spec(s) for s in out_layouts),
                       axis_names=free, check_vma=False)
