"""Matmul FLOPs of a traced function, loops counted as many times as they run.

XLA's cost analysis counts a while-loop body once, and scanned layers, chunk scans, rollout
decoders and microbatch loops are all while loops: its number for a scanned 24-layer step is
off by 24x and more. This walks the jaxpr instead: dot_general (and convolutions) at
2 * M * N * K, scan bodies times their length, fori-style while loops times their trip count,
cond = the costliest branch (or the cheapest: a bracket), and every nested jaxpr (jit, remat, custom_vjp/jvp, shard_map).
Elementwise work is left out, as in the usual model-FLOPs (MFU) convention.
"""
from __future__ import annotations

import math

import jax
from jax.extend import core as jcore


def _dot_flops(eqn) -> int:
  (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  contract = math.prod(lhs[d] for d in lc)
  batch = math.prod(lhs[d] for d in lb)
  free_l = math.prod(d for i, d in enumerate(lhs) if i not in lc and i not in lb)
  free_r = math.prod(d for i, d in enumerate(rhs) if i not in rc and i not in eqn.params[
      "dimension_numbers"][1][1])
  return 2 * batch * free_l * free_r * contract


def _conv_flops(eqn) -> int:
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape  # kernel: out_features, in_features/groups, spatial...
  dn = eqn.params["dimension_numbers"]
  spec = dn.rhs_spec  # (out, in, spatial...)
  per_out = math.prod(rhs[d] for d in spec[1:])
  return 2 * math.prod(out) * per_out


def _trip_count(eqn):
  """Trip count of a fori_loop-style while (counter compared to a literal); None if unknown."""
  cond = eqn.params["cond_jaxpr"].jaxpr
  consts = eqn.invars[:eqn.params["cond_nconsts"]]
  body_nc = eqn.params["body_nconsts"]
  init = eqn.invars[eqn.params["cond_nconsts"] + body_nc:]
  for ce in cond.eqns:
    if ce.primitive.name != "lt":
      continue
    a, b = ce.invars
    if not isinstance(b, jcore.Literal):
      continue
    idx = list(cond.invars).index(a) - len(consts) if a in cond.invars else None
    if idx is None or idx < 0:
      continue
    start = init[idx]
    if isinstance(start, jcore.Literal):
      return max(int(b.val) - int(start.val), 0)
    return None
  return None


def _sub_jaxprs(eqn):
  for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    j = eqn.params.get(name)
    if j is not None:
      yield getattr(j, "jaxpr", j)


class Counter:
  """flops(jaxpr) with a note of any loop whose trip count it had to guess (counted once)."""

  def __init__(self, cond=max):
    self.unknown_loops = 0
    self.cond = cond  # max: the costliest branch (an upper bound); min: the cheapest

  def jaxpr(self, jaxpr) -> int:
    return sum(self.eqn(e) for e in jaxpr.eqns)

  def eqn(self, eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
      return _dot_flops(eqn)
    if name == "conv_general_dilated":
      return _conv_flops(eqn)
    if name == "scan":
      return int(eqn.params["length"]) * self.jaxpr(eqn.params["jaxpr"].jaxpr)
    if name == "while":
      n = _trip_count(eqn)
      if n is None:
        self.unknown_loops += 1
        n = 1
      return n * self.jaxpr(eqn.params["body_jaxpr"].jaxpr)
    if name == "cond":
      return self.cond(self.jaxpr(b.jaxpr) for b in eqn.params["branches"])
    if name == "shard_map":  # the body sees one device's shard: times the devices it runs on
      mesh = eqn.params["mesh"]
      return mesh.size * sum(self.jaxpr(j) for j in _sub_jaxprs(eqn))
    return sum(self.jaxpr(j) for j in _sub_jaxprs(eqn))


def count(fn, *args, cond=max, **kwargs) -> tuple[int, int]:
  """(matmul FLOPs of fn(*args), loops with an unknown trip count). args may be abstract.
  cond=min counts the cheapest branch of every lax.cond (e.g. LaCT's decode-time chunk
  update, which runs only when a row's chunk fills): with max the two bracket the truth."""
  return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs), cond)


def count_jaxpr(closed, cond=max) -> tuple[int, int]:
  """count() of an already traced (closed) jaxpr."""
  c = Counter(cond)
  return c.jaxpr(closed.jaxpr), c.unknown_loops
