"""refine_jax.platforms: libtpu installed on a host without a TPU runs JAX on the CPU, quietly;
a TPU host, a GPU plugin or an explicit JAX_PLATFORMS is left alone."""
import importlib.util
import os
import subprocess
import sys

import pytest
from jax._src import hardware_utils

from refine_jax import platforms


@pytest.fixture
def fake_host(monkeypatch):
  """A host whose libtpu, TPU chip count, GPU plugins and platform choice the test sets; returns
  the switches to the CPU skip_absent_tpu makes (recorded, not applied)."""
  switched = []
  real_find_spec = importlib.util.find_spec

  def setup(*, libtpu=True, chips=0, gpu=False, env=None, chosen=""):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    if env is not None:
      monkeypatch.setenv("JAX_PLATFORMS", env)
    else:
      monkeypatch.setattr(platforms, "_platforms_chosen", lambda: chosen)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (object() if libtpu else None) if name == "libtpu" else real_find_spec(name, *a)))
    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id",
                        lambda: (chips, None))
    monkeypatch.setattr(platforms, "_gpu_plugin_installed", lambda: gpu)
    monkeypatch.setattr(platforms, "_run_on_cpu", lambda: switched.append("cpu"))
    return switched

  return setup


def test_libtpu_without_a_chip_runs_on_cpu(fake_host):
  switched = fake_host()
  assert platforms.skip_absent_tpu() and switched == ["cpu"]


@pytest.mark.parametrize("host", [dict(libtpu=False), dict(chips=4), dict(gpu=True),
                                  dict(env="tpu"), dict(chosen="cpu")],
                         ids=["no-libtpu", "tpu-vm", "gpu-plugin", "JAX_PLATFORMS", "chosen"])
def test_everything_else_is_left_alone(fake_host, host):
  switched = fake_host(**host)
  assert not platforms.skip_absent_tpu() and switched == []


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs the tpu-check extra (libtpu)")
def test_entry_points_print_no_libtpu_errors_on_a_cpu_host():
  if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
    pytest.skip("this host has a TPU")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  code = "import refine_jax.cli, jax; print(jax.devices()[0].platform)"
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300, check=True)
  assert proc.stdout.strip() == "cpu"
  assert "worker hostname" not in proc.stderr and "jellyfish" not in proc.stderr, proc.stderr
