"""Device mesh from `config.mesh` (axes data, fsdp, tensor) and multi-host start-up."""

import contextlib
import math
import os

import jax
import numpy as np
from absl import logging

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh_cfg, num_devices):
  """(data, fsdp, tensor) device counts; at most one field may be -1 (= the rest)."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  for axis, n in zip(MESH_AXES, sizes):
    if n == 0 or n < -1:
      raise ValueError(f"mesh.{axis}={n}: a device count must be >= 1, or -1 for 'the rest'.")
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: only one of mesh.data/fsdp/tensor "
                     "may be -1 (the rest); give the others explicit sizes.")
  fixed = math.prod(n for n in sizes if n != -1)
  if fixed > num_devices or num_devices % fixed:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices (or a divisor "
                     f"of {num_devices}) but {num_devices} are available; lower "
                     "mesh.data/fsdp/tensor so their product divides the device count.")
  if -1 in sizes:
    sizes[sizes.index(-1)] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {fixed} of {num_devices} devices; "
                     "set one of mesh.data/fsdp/tensor to -1 to use the rest.")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None):
  """A `jax.sharding.Mesh` with axes (data, fsdp, tensor), all in Auto mode."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  try:  # topology-aware order on TPU/GPU; plain reshape where that is not available
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # pylint: disable=broad-except
    grid = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(grid, MESH_AXES)


def mesh_context(mesh):
  """`jax.set_mesh(mesh)` as a context manager (a no-op on jax without it). Tracing inside
  it lets pallas_kernels run its Pallas kernels per device in shard_map."""
  set_mesh = getattr(jax, "set_mesh", None)
  return set_mesh(mesh) if set_mesh is not None else contextlib.nullcontext()


def _launched_multihost():
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "WORLD_SIZE"):
    if int(env.get(var, "1") or 1) > 1:
      return True
  # Cloud TPU pod slices list their workers; one name means a single host.
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


_initialized = False


def maybe_initialize_distributed():
  """`jax.distributed.initialize()` once when the environment says multi-host; call first."""
  global _initialized
  if _initialized or not _launched_multihost():
    return False
  jax.distributed.initialize()  # reads coordinator/process ids from the launcher's env
  _initialized = True
  logging.info("jax.distributed initialised: process %d of %d", jax.process_index(),
               jax.process_count())
  return True
