"""Shared pytest setup: the repo root and tests/ on sys.path, and a helper to run Python in a
subprocess with N fake CPU devices (XLA_FLAGS must be set before JAX is imported, so it can't be
done in-process once another test has imported JAX)."""

import contextlib
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for _p in (TESTS, ROOT):  # tests/ too: helpers such as tiny.py import by name in any import mode
  if _p not in sys.path:
    sys.path.insert(0, _p)


def run_python(args, *, devices=1, timeout=600, cwd=ROOT, check=True):
  """`python ARGS...` with `devices` host CPU devices; returns the CompletedProcess."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS, env.get("PYTHONPATH", "")])  # + tiny.py
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable] + list(args), cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"python {' '.join(args)} failed (rc={proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def lower_text(fn, args, platform):
  """StableHLO text of jit(fn)(*args) lowered for `platform` ("cuda" | "tpu") on this CPU
  machine; skips the test when this jaxlib cannot lower for it."""
  import jax  # pylint: disable=g-import-not-at-top
  from pallas_kernels import pallas_gpu  # pylint: disable=g-import-not-at-top
  target = pallas_gpu.abstract_gpu() if platform == "cuda" else contextlib.nullcontext()
  try:
    with target:
      return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
  except (ImportError, ModuleNotFoundError) as e:  # jaxlib built without that dialect
    pytest.skip(f"cannot lower for {platform} here: {e}")


@pytest.fixture
def python_subprocess():
  return run_python
