"""The Pallas kernels lower, on this CPU-only machine, to Triton IR (GPU) and Mosaic (TPU) at
production shapes: catches primitives or shapes a backend cannot take before a device runs."""
import jax.numpy as jnp
import pytest

from conftest import lower_text as _lower
from pallas_kernels import pallas_gpu, pallas_tpu


@pytest.mark.parametrize("gated,segments", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_kernels_lower(target, gated, segments):
  B, T, H, K, V, C = 1, 128, 2, 128, 128, 64
  N = T // C
  bf = lambda *s: jnp.zeros(s, jnp.bfloat16)
  f32 = lambda *s: jnp.zeros(s, jnp.float32)
  q, k, v, beta = bf(B, T, H, K), bf(B, T, H, K), bf(B, T, H, V), bf(B, T, H)
  g = bf(B, T, H) if gated else None
  mod, platform = (pallas_gpu, "cuda") if target == "gpu" else (pallas_tpu, "tpu")
  # The custom call names the lowering: Triton (not Mosaic GPU, which lacks ops we use) / Mosaic.
  call = "xla.gpu.triton" if target == "gpu" else "tpu_custom_call"
  # segment_ids: the packed-document reset flags [B, T] (float32), one more kernel input
  rs = (f32(B, T),) if segments else ()
  kw = lambda a: dict(reset=a[-1]) if segments else {}
  cut = lambda a: a[:-1] if segments else a
  fwd = lambda *a: mod.fwd(*cut(a), scale=K ** -0.5, chunk_size=C, **kw(a))
  txt = _lower(fwd, (q, k, v, beta, g, f32(B, H, K, V)) + rs, platform)
  assert "delta_rule_fwd" in txt and call in txt
  bwd = lambda *a: mod.bwd(*cut(a), scale=K ** -0.5, chunk_size=C, **kw(a))
  txt = _lower(bwd, (q, k, v, beta, g, f32(B, N, H, K, V), bf(B, T, H, V), f32(B, H, K, V),
                     f32(B, N, H, K, V)) + rs, platform)
  assert "delta_rule_bwd" in txt and call in txt
