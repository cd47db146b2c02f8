"""Keep libtpu out of runs on machines without a TPU.

With libtpu installed (the `tpu-check` extra, for compiling TPU programs on a CPU host) JAX
initialises its TPU backend on every command and libtpu prints several lines of errors ("No
jellyfish device found", "unexpected worker hostname") on a host that has no TPU chip. The
entry points (refine_jax.cli) call `skip_absent_tpu()` before JAX picks its backends.
Compile-only TPU topologies (`jax.experimental.topologies`, used by train/aot.py and
benchmarks/tpu_compile_check.py) do not need the TPU backend and keep working.
"""

import importlib.util
import os
import pkgutil


def _gpu_plugin_installed() -> bool:
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top  (namespace of PJRT plugins)
  except ImportError:
    return False
  return any(("cuda" in m.name or "rocm" in m.name)
             for m in pkgutil.iter_modules(jax_plugins.__path__))


def _platforms_chosen() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""


def _run_on_cpu() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")


def skip_absent_tpu() -> bool:
  """Runs JAX on the CPU when libtpu is installed, this host has no TPU chip, no GPU plugin is
  installed and nobody chose the platforms (JAX_PLATFORMS / jax_platforms unset). Returns
  whether it did. A TPU VM, a GPU machine or an explicit choice is left alone."""
  if importlib.util.find_spec("libtpu") is None or _platforms_chosen():
    return False
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except Exception:  # pylint: disable=broad-except  (a private helper: if it moves, do nothing)
    return False
  if chips or _gpu_plugin_installed():
    return False
  _run_on_cpu()
  return True
