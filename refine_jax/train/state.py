"""Model and optimiser state laid out on the mesh: sharded init, abstract trees for restore."""

import dataclasses
from typing import Any

import jax
import optax
from flax import nnx

from refine_jax.parallel import rules as rules_lib


@dataclasses.dataclass
class ModelState:
  """An nnx model split into graphdef + Param state + the rest, with their shardings."""
  graphdef: Any
  params: Any           # nnx.State of Param, sharded
  rest: Any             # nnx.State of every other Variable (usually empty), replicated/sharded
  param_shardings: Any  # same structure as params, NamedSharding leaves
  rest_shardings: Any

  def model(self, params=None):
    """A live nnx model on `params` (default: the current ones)."""
    return nnx.merge(self.graphdef, self.params if params is None else params, self.rest)


def abstract_model_state(model_fn, mesh, rules=rules_lib.LOGICAL_RULES):
  """ModelState whose params / rest are ShapeDtypeStructs carrying their shardings: what the
  jitted step is lowered with ahead of time (benchmarks/scale_check.py); nothing is allocated."""
  graphdef, abs_params, abs_rest = nnx.split(nnx.eval_shape(model_fn), nnx.Param, ...)
  p_sh = rules_lib.state_shardings(abs_params, mesh, rules)
  r_sh = rules_lib.state_shardings(abs_rest, mesh, rules)
  return ModelState(graphdef, abstract(abs_params, p_sh), abstract(abs_rest, r_sh), p_sh, r_sh)


def init_model_state(model_fn, mesh, rules=rules_lib.LOGICAL_RULES):
  """Builds `model_fn()` directly into its shardings (no full copy on one device)."""
  abs_ms = abstract_model_state(model_fn, mesh, rules)
  graphdef, p_sh, r_sh = abs_ms.graphdef, abs_ms.param_shardings, abs_ms.rest_shardings

  def init():
    _, params, rest = nnx.split(model_fn(), nnx.Param, ...)
    return params, rest

  if mesh.size == 1:  # eager is cheaper than compiling the initialiser
    params, rest = jax.device_put(init(), (p_sh, r_sh))
  else:
    params, rest = jax.jit(init, out_shardings=(p_sh, r_sh))()
  return ModelState(graphdef, params, rest, p_sh, r_sh)


def abstract(tree, shardings):
  """ShapeDtypeStruct tree carrying `shardings` (a restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def opt_state_shardings(tx, params, param_shardings, mesh):
  """Optimiser-state shardings: moments follow their params, counters are replicated."""
  abs_state = jax.eval_shape(tx.init, params)
  repl = rules_lib.replicated(mesh)
  # tree_map_params walks the param-shaped subtrees (mu, nu) in step with param_shardings.
  return optax.tree_map_params(
      tx, lambda _, s: s, abs_state, param_shardings,
      transform_non_params=lambda _: repl,
      is_leaf=lambda x: isinstance(x, nnx.Variable))


def init_opt_state(tx, model_state, mesh):
  """(opt_state, opt_shardings) created on the mesh."""
  o_sh = opt_state_shardings(tx, model_state.params, model_state.param_shardings, mesh)
  if mesh.size == 1:
    opt_state = jax.device_put(tx.init(model_state.params), o_sh)
  else:
    opt_state = jax.jit(tx.init, in_shardings=(model_state.param_shardings,),
                        out_shardings=o_sh)(model_state.params)
  return opt_state, o_sh

