"""Device mesh from `config.mesh` (axes data, fsdp, tensor) and multi-host start-up."""

import contextlib
import math
import os
import sys
import threading

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
  """A `jax.sharding.Mesh` with axes (data, fsdp, tensor), all in Auto mode: `jax.make_mesh`
  (topology-aware device order on TPU/GPU), a plain reshape where it cannot place a shape."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(shape, MESH_AXES, auto, devices=devices)
  except (ValueError, NotImplementedError):  # e.g. a TPU slice shape it has no layout for
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def mesh_context(mesh):
  """`jax.set_mesh(mesh)` as a context manager (a no-op on jax without it). Tracing inside
  it lets pallas_kernels run its Pallas kernels per device in shard_map."""
  set_mesh = getattr(jax, "set_mesh", None)
  return set_mesh(mesh) if set_mesh is not None else contextlib.nullcontext()


def _env_int(name):
  value = os.environ.get(name, "")
  try:
    return int(value) if value else None
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer; the launcher must set it to a "
                     "number.") from None


def _slurm_coordinator():
  """JAX's own reading of the SLURM coordinator (first node of the step, port from the job id);
  only used to name it in error messages."""
  try:
    # jax-private module (may move between versions): imported inside the try that covers it.
    from jax._src.clusters.slurm_cluster import SlurmCluster  # pylint: disable=g-import-not-at-top
    return SlurmCluster.get_coordinator_address(None, os.environ.get("JAX_COORDINATOR_PORT"))
  except Exception:  # pylint: disable=broad-except
    return "the first host of SLURM_STEP_NODELIST"


def launch_spec():
  """How this process was launched: None for a single process, else a dict with the
  jax.distributed.initialize arguments it needs (None = JAX detects them from the cluster env)
  and `coordinator` / `num_processes` / `process_id` / `source` for messages.

  Launchers understood: SLURM (srun sets SLURM_NTASKS, SLURM_PROCID, ...), Open MPI, Cloud TPU
  pod slices (TPU_WORKER_HOSTNAMES), and the generic JAX_COORDINATOR_ADDRESS=host:port with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    n, i = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
    slurm_n = _env_int("SLURM_NTASKS")
    if (n is None or i is None) and slurm_n is None:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']} is set but "
                       "JAX_NUM_PROCESSES and JAX_PROCESS_ID are not; set both on every process "
                       "(the same count everywhere, ids 0..count-1).")
    if n is not None and i is not None and not 0 <= i < n:
      raise ValueError(f"JAX_PROCESS_ID={i} must be in [0, JAX_NUM_PROCESSES={n}).")
    return dict(kwargs=dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                            num_processes=n, process_id=i),
                coordinator=env["JAX_COORDINATOR_ADDRESS"], num_processes=n or slurm_n,
                process_id=i if i is not None else _env_int("SLURM_PROCID"),
                source="JAX_COORDINATOR_ADDRESS")
  if (_env_int("SLURM_NTASKS") or 1) > 1:
    return dict(kwargs={}, coordinator=_slurm_coordinator(), num_processes=_env_int(
        "SLURM_NTASKS"), process_id=_env_int("SLURM_PROCID"), source="SLURM")
  if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return dict(kwargs={}, coordinator="Open MPI's first rank",
                num_processes=_env_int("OMPI_COMM_WORLD_SIZE"),
                process_id=_env_int("OMPI_COMM_WORLD_RANK"), source="Open MPI")
  # Cloud TPU pod slices list their workers; one name means a single host.
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    hosts = env["TPU_WORKER_HOSTNAMES"].split(",")
    return dict(kwargs={}, coordinator=f"{hosts[0]} (TPU worker 0)", num_processes=len(hosts),
                process_id=_env_int("TPU_WORKER_ID"), source="TPU_WORKER_HOSTNAMES")
  return None


_initialized = False


def _watchdog(seconds, message):
  """Prints `message` and exits 2 unless cancelled within `seconds`. JAX's own timeout aborts
  the process from C++ with a stack trace; this fires first, with one line naming the fix."""
  done = threading.Event()

  def fire():
    if not done.wait(seconds):
      print(f"error: {message}", file=sys.stderr, flush=True)
      os._exit(2)  # pylint: disable=protected-access

  threading.Thread(target=fire, daemon=True, name="refine_jax-dist-watchdog").start()
  return done


def _check_counts_agree(spec, who, timeout_s):
  """Every process publishes the process count its launcher gave it and reads the others', so
  a mismatch stops all of them with one line (else the odd one leaves and the rest hit a gloo
  timeout deep inside a collective)."""
  n, formed, me = spec["num_processes"], jax.process_count(), jax.process_index()
  counts = {me: n}
  try:
    # jax-private module (may move between versions): imported inside the try that covers it.
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    client = distributed.global_state.client
    client.key_value_set(f"refine_jax/process_count/{me}", str(n))
    for j in range(formed):
      if j != me:
        value = client.blocking_key_value_get(f"refine_jax/process_count/{j}",
                                              int(timeout_s * 1000))
        counts[j] = None if value == "None" else int(value)
  except Exception as e:  # pylint: disable=broad-except
    if n is not None and n != formed:
      counts[-1] = formed  # still report our own mismatch below
    else:
      logging.warning("could not compare process counts across processes: %s", e)
  known = {j: c for j, c in counts.items() if c is not None and j >= 0}
  if known and (len(set(known.values())) > 1 or set(known.values()) != {formed}):
    told = ", ".join(f"process {j}: {c}" for j, c in sorted(known.items()))
    raise ValueError(f"{who}: the processes were started with different process counts "
                     f"({told}) and the coordinator at {spec['coordinator']} formed a job of "
                     f"{formed}; start every process with the same count "
                     f"({spec['source']}).")


def maybe_initialize_distributed(timeout_s: float = 300.0):
  """`jax.distributed.initialize()` once when the launcher's environment says multi-process;
  call before any other JAX call. Each process waits up to `timeout_s` for all the others to
  reach the coordinator, then exits with one line naming the coordinator and what to check."""
  global _initialized
  if _initialized:
    return False
  spec = launch_spec()
  if spec is None:
    return False
  # CPU collectives between processes need a transport (gloo); accelerators bring their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  n, i = spec["num_processes"], spec["process_id"]
  who = f"process {i if i is not None else '?'} of {n if n is not None else '?'}"
  done = _watchdog(float(timeout_s), (
      f"{who} ({spec['source']}): the {n} processes did not all reach the coordinator at "
      f"{spec['coordinator']} within {timeout_s:g} s. Check that every process was started "
      "with the same process count, that the coordinator host:port is reachable from this "
      "host (firewall, hostname), and that process 0 is running; raise mesh.dist_timeout_s "
      "if hosts start slowly."))
  # JAX's own timeout is the backstop (it aborts the process); ours fires first.
  jax.distributed.initialize(**spec["kwargs"], initialization_timeout=int(timeout_s) + 60)
  done.set()
  _initialized = True
  _check_counts_agree(spec, who, timeout_s)
  logging.info("jax.distributed initialised: process %d of %d", jax.process_index(),
               jax.process_count())
  return True
