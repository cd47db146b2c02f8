"""Mesh construction and logical-axis partition rules."""

from refine_jax.parallel.mesh import (MESH_AXES, make_mesh, maybe_initialize_distributed,
                                      mesh_context, resolve_mesh_shape)
from refine_jax.parallel.rules import (BATCH_AXES, LOGICAL_RULES, batch_sharding, logical_to_spec,
                                       replicated, state_shardings)
