"""Ahead-of-time compile of a stage's exact train step for a TPU slice, on any host.

libtpu builds compile-only TPU devices from a topology name, so XLA:TPU (and Mosaic, for the
Pallas kernels) compiles the step a pod would run — same model, mesh, shardings, loss and
optimiser as `python -m refine_jax.main` (stages.step_spec + loop.jit_step) — with abstract
arguments: nothing of real size is allocated. Memory comes from XLA's own memory analysis of
that program; FLOPs from its jaxpr (train/flops.py: XLA's cost analysis counts loop bodies
once). Used by benchmarks/scale_check.py and tests/test_scale_check.py.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import topologies

from refine_jax import parallel
from refine_jax.models import build_model
from refine_jax.train import flops as flops_lib
from refine_jax.train import loop, optim, stages, state as state_lib

GiB = 1 << 30

# Cloud TPU slice names -> libtpu topology. v5p names count TensorCores (2 per chip: v5p-8
# is 4 chips), v5e/v6e names count chips.
TOPOLOGIES = {
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4",
    "v5p-64": "v5p:2x4x4",
    "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4",
    "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4",
}
# Per chip: HBM bytes and dense bf16 peak FLOP/s (public spec sheets).
CHIPS = {"v5p": (95 * GiB, 459e12), "v5e": (16 * GiB, 197e12), "v6e": (32 * GiB, 918e12)}
FIT_FRACTION = 0.9   # "fits" = peak <= 90% of one chip's HBM (headroom for runtime buffers)


@dataclasses.dataclass
class Report:
  config: str
  stage: str
  topology: str
  chips: int
  mesh: dict
  params: int
  peak_bytes_per_chip: int
  hbm_bytes_per_chip: int
  memory: dict          # XLA's memory analysis per chip: arguments, outputs, aliased, temps
                        # (temps only, plus compile_error, when XLA refused: out of HBM)
  flops_per_step: float  # matmul FLOPs of one step, all chips (lax.cond: costliest branch)
  flops_per_step_cheapest_branches: float  # the same with every lax.cond's cheapest branch
  flops_per_chip: float
  tokens_per_step: int
  compile_s: float
  peak_flops_per_chip: float
  step_s_at: dict       # {"40%": s, "100%": s} of bf16 peak
  tokens_per_s_at: dict
  fits: bool
  unknown_loops: int = 0

  def to_json(self):
    return dataclasses.asdict(self)


def topology_devices(name: str):
  """Compile-only TPU devices of a named slice (e.g. "v5p-8"); needs libtpu."""
  if name not in TOPOLOGIES:
    raise ValueError(f"--topology={name!r} is unknown; use one of {sorted(TOPOLOGIES)}")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    devices = topologies.get_topology_desc(TOPOLOGIES[name], "tpu").devices
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(f"libtpu cannot build the compile-only topology {name} ({e}); install "
                       "the libtpu wheel matching jax: pip install -e \".[tpu-check]\"") from e
  return list(devices)


def for_tpu(config):
  """The config as it resolves on a TPU: bf16 compute for dtype=auto, Pallas TPU kernels for
  backend=auto (on this CPU host both would resolve to the CPU choices)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    if config.model.dtype == "auto":
      config.model.dtype = "bfloat16"
    if config.model.backend == "auto":
      config.model.backend = "pallas_tpu"
  return config


def _abstract_batch(spec, mesh):
  sh = parallel.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sh) for k, (shape, dtype) in
          spec.items()}


def _build(config, mesh):
  """(jitted step, abstract args, step fn, StepSpec) exactly as run_training builds them."""
  spec = stages.step_spec(config)
  ms = state_lib.abstract_model_state(
      lambda: build_model(config.model, rngs=nnx.Rngs(int(config.seed))), mesh)
  tx = spec.tx
  if tx is None:
    tx, _ = optim.make_optimizer(config.train, spec.updates_per_step)
  opt_sh = state_lib.opt_state_shardings(tx, ms.params, ms.param_shardings, mesh)
  opt_state = state_lib.abstract(jax.eval_shape(tx.init, ms.params), opt_sh)
  step_fn = spec.make_step(ms.graphdef, tx, int(config.train.microbatches))
  jstep = loop.jit_step(step_fn, ms, opt_sh, mesh)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                             sharding=parallel.replicated(mesh))
  args = (ms.params, opt_state, ms.rest, _abstract_batch(spec.batch, mesh), rng)
  return jstep, args, step_fn, spec, ms


def _oom_memory(e):
  """Memory XLA reported needing when it refused to compile for lack of HBM; re-raises
  anything else."""
  m = re.search(r"HLO temporaries \(([0-9.]+)([KMGT])\)", str(e))
  if "RESOURCE_EXHAUSTED" not in str(e) or not m:
    raise e
  temp = int(float(m.group(1)) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
                                   "T": 1 << 40}[m.group(2)])
  return {"argument": 0, "output": 0, "alias": 0, "temp": temp, "generated_code": 0,
          "compile_error": str(e).splitlines()[0][:300]}


def step_flops(config, devices) -> tuple[int, int, int]:
  """Matmul FLOPs of one train step, all chips, counting every lax.cond's costliest and its
  cheapest branch (flops.count), and the loops of unknown trip count. Traced once, on the XLA
  chunked path: the same math as the Pallas kernels, and visible to the jaxpr walk."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.backend = "xla_chunked"
  mesh = parallel.make_mesh(config.mesh, devices)
  _, args, step_fn, _, _ = _build(config, mesh)
  closed = jax.make_jaxpr(step_fn)(*args)
  (most, unknown), (least, _) = (flops_lib.count_jaxpr(closed, f) for f in (max, min))
  return most, least, unknown


def compile_step(config, topology: str, *, config_name: str = "", dump_to: str = "") -> Report:
  """Compiles config's train step for `topology` and reads its memory, FLOPs and time.
  dump_to: a folder for XLA:TPU's dumps of this compile (HLO after optimisation, buffer
  assignment and `*memory-usage-report.txt`: which buffers are live at the peak)."""
  devices = topology_devices(topology)
  config = for_tpu(config)
  mesh = parallel.make_mesh(config.mesh, devices)
  jstep, args, _, spec, ms = _build(config, mesh)
  t0 = time.perf_counter()
  try:
    with parallel.mesh_context(mesh):
      # XLA_FLAGS reach the CPU client only; the TPU compiler takes them as compile options.
      opts = {"xla_dump_to": dump_to, "xla_dump_hlo_as_text": True} if dump_to else None
      compiled = jstep.trace(*args).lower().compile(compiler_options=opts)
    mem = compiled.memory_analysis()
    memory = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in
              ("argument", "output", "alias", "temp", "generated_code")}
  except Exception as e:  # pylint: disable=broad-except
    memory = _oom_memory(e)   # XLA refuses a program over HBM: that is a "does not fit"
  compile_s = time.perf_counter() - t0
  # Donated params/optimiser state are both argument and output: count them once.
  peak = (memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
          + memory["generated_code"])
  total_flops, lower_flops, unknown = step_flops(config, devices)
  gen = topology.split("-")[0]
  hbm, peak_flops = CHIPS[gen]
  chips = len(devices)
  per_chip = total_flops / chips
  tokens = int(np.prod(spec.batch["inputs"][0]))
  step_s = {f"{int(f * 100)}%": per_chip / (peak_flops * f) for f in (0.4, 1.0)}
  params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(ms.params)))
  return Report(
      config=config_name, stage=config.stage, topology=topology, chips=chips,
      mesh=dict(mesh.shape), params=params, peak_bytes_per_chip=int(peak),
      hbm_bytes_per_chip=hbm, memory=memory, flops_per_step=float(total_flops),
      flops_per_step_cheapest_branches=float(lower_flops),
      flops_per_chip=float(per_chip), tokens_per_step=tokens, compile_s=compile_s,
      peak_flops_per_chip=peak_flops, step_s_at=step_s,
      tokens_per_s_at={k: tokens / v for k, v in step_s.items()},
      fits=bool(peak <= FIT_FRACTION * hbm), unknown_loops=unknown)


def ntp_twin(config):
  """The same model, batch, mesh and per-device microbatch trained with plain NTP (the
  pretrain step): the baseline for the ReFINE / NTP cost ratios."""
  config = copy.deepcopy(config)
  with config.unlocked():
    # The same sequences per device per microbatch as the stage's updates (a PPO update
    # accumulates over microbatches of one of ppo_minibatches minibatches).
    if config.stage == "midtrain":
      mbs = int(config.refine.ppo_minibatches)
      config.train.microbatches = int(config.train.microbatches) * mbs
    config.stage = "pretrain"
  return config

