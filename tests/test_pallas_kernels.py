"""Pallas delta-rule kernels (GPU/Triton and TPU/Mosaic, interpret mode on CPU) against the
naive recurrence: outputs, final and chunk states, and every gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import pallas_entry, reference


# On a GPU (TPU) machine the GPU (TPU) kernels run for real; elsewhere in the interpreters.
_ON = jax.default_backend()
_ON = "gpu" if _ON in ("gpu", "cuda", "rocm") else _ON
on_device = lambda target: _ON == target
skip_on_accel = pytest.mark.skipif(_ON in ("gpu", "tpu"),
                                   reason="interpreter check; the device kernels run instead")


def _inputs(B, T, H, K, V, dtype, gated, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q, k, v = unit(r(B, T, H, K)), unit(r(B, T, H, K)), r(B, T, H, V)
  beta = jax.nn.sigmoid(r(B, T, H))
  g = -jax.nn.softplus(r(B, T, H) - 1.0) if gated else None
  S0 = r(B, H, K, V) * 0.5
  cast = lambda x: None if x is None else x.astype(dtype)
  return dict(q=cast(q), k=cast(k), v=cast(v), beta=cast(beta), g=cast(g), S0=S0)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


def _segment_ids(B, T, C):
  """Packed documents: one starting mid-chunk, one at a chunk boundary, a length-1 document,
  trailing padding (0); odd rows shifted."""
  seg = np.ones((B, T), np.int32)
  for b in range(B):
    o = 2 * (b % 2)
    for i, s in enumerate([3 + o, C, C + 1, 2 * C + 3 + o, T - 9]):
      seg[b, s:] = i + 2
    seg[b, T - 4:] = 0
  return jnp.asarray(seg)


def _check(target, B, T, H, K, V, C, dtype, gated, tol, block_v=None, chunk_states=True,
           segments=False):
  x = _inputs(B, T, H, K, V, dtype, gated)
  seg = _segment_ids(B, T, C) if segments else None
  names = ["q", "k", "v", "beta", "S0"] + (["g"] if gated else [])
  N = -(-T // C)
  rng = np.random.default_rng(1)
  w_o = jnp.asarray(rng.standard_normal((B, T, H, V)), jnp.float32)
  w_s = jnp.asarray(rng.standard_normal((B, H, K, V)), jnp.float32)
  w_c = jnp.asarray(rng.standard_normal((B, N, H, K, V)), jnp.float32)

  def run(fn, d):
    o, S, cs = fn(d)
    loss = jnp.sum(o.astype(jnp.float32) * w_o) + jnp.sum(S * w_s)
    if chunk_states:
      loss = loss + jnp.sum(cs * w_c)
    return loss, (o, S, cs)

  def ours(d):
    return pallas_entry.pallas_delta_rule(
        d["q"], d["k"], d["v"], d["beta"], d.get("g"), scale=None, initial_state=d["S0"],
        chunk_size=C, target=target, interpret=not on_device(target),
        return_chunk_states=chunk_states,
        block_v=block_v, segment_ids=seg)

  def ref(d):
    d = {n: d[n].astype(jnp.float32) for n in names}
    return reference.recurrent_chunk_states(
        d["q"], d["k"], d["v"], d["beta"], d.get("g"), initial_state=d["S0"], chunk_size=C,
        segment_ids=seg)

  args = {n: x[n] for n in names}
  (_, out1), g1 = jax.jit(jax.value_and_grad(lambda d: run(ours, d), has_aux=True))(args)
  with jax.default_matmul_precision("highest"):   # an exact reference on GPU/TPU too
    (_, out2), g2 = jax.jit(jax.value_and_grad(lambda d: run(ref, d), has_aux=True))(args)
  errs = {"o": _rel(out1[0], out2[0]), "final_state": _rel(out1[1], out2[1])}
  if chunk_states:
    errs["chunk_states"] = _rel(out1[2], out2[2])
    assert out1[2].shape == (B, N, H, K, V)
  else:
    assert out1[2] is None
  errs.update({"d" + n: _rel(g1[n], g2[n]) for n in names})
  assert out1[0].shape == (B, T, H, V) and out1[0].dtype == x["v"].dtype
  bad = {n: e for n, e in errs.items() if not e < tol}
  assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"


# (B, T, H, K, V, C, gated, block_v): T not a multiple of C, K != V, V split into blocks,
# C = 32 (two 16-blocks in the triangular solve).
GPU_CASES = [
    (1, 40, 2, 16, 32, 16, False, None),
    (2, 37, 1, 32, 16, 32, True, None),
    (1, 48, 1, 16, 32, 16, True, 16),
]


@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_kernel_matches_reference_fp32(case):
  B, T, H, K, V, C, gated, bv = case
  _check("gpu", B, T, H, K, V, C, jnp.float32, gated, 1e-4, block_v=bv)


def test_gpu_kernel_bf16():
  _check("gpu", 1, 40, 2, 16, 32, 16, jnp.bfloat16, True, 1e-2)


def test_gpu_kernel_bf16_dot_operands(monkeypatch):
  """The bf16-operand variant of the dots (a launch option) stays within bf16 tolerance."""
  from pallas_kernels import pallas_gpu
  monkeypatch.setitem(pallas_gpu.TUNING, "bf16_dots", 1)
  _check("gpu", 1, 70, 1, 16, 16, 32, jnp.bfloat16, True, 1e-2)


def test_gpu_kernel_without_chunk_states():
  """The non-differentiated call skips the chunk-state output; gradients still match."""
  _check("gpu", 1, 50, 1, 16, 16, 32, jnp.float32, False, 1e-4, chunk_states=False)


# Production shapes (C = 64, several V-blocks): only on a real GPU. Float32 inputs only up
# to K = V = 64 (pallas_entry.unsupported_reason: shared memory).
@pytest.mark.skipif(not on_device("gpu"), reason="needs a GPU")
@pytest.mark.parametrize("gated,dtype,tol,bv,d", [
    (False, jnp.bfloat16, 1e-2, None, 128), (True, jnp.bfloat16, 1e-2, 32, 128),
    (True, jnp.bfloat16, 1e-2, 128, 128), (True, jnp.float32, 1e-4, None, 64)])
def test_gpu_kernel_device_shapes(gated, dtype, tol, bv, d):
  _check("gpu", 2, 300, 4, d, d, 64, dtype, gated, tol, block_v=bv)


# TPU (Mosaic) kernels in the TPU interpreter.
TPU_CASES = [
    (1, 40, 2, 16, 32, 16, True, None),
    (2, 30, 1, 32, 8, 24, False, None),   # C = 24: three 8-blocks in the solve
    (1, 20, 2, 128, 256, 8, True, 128),   # lane-dense [B, T, H*D] layout, two V-blocks
    (1, 150, 1, 16, 16, 8, True, None),   # N = 19 chunks: three 8-row beta/g blocks
]


@skip_on_accel
@pytest.mark.parametrize("case", TPU_CASES)
def test_tpu_kernel_matches_reference_fp32(case):
  B, T, H, K, V, C, gated, bv = case
  _check("tpu", B, T, H, K, V, C, jnp.float32, gated, 1e-4, block_v=bv)


def test_kernels_with_packed_documents():
  """segment_ids where the layout is most involved: GPU with V split into two blocks, TPU
  with N = 10 chunks (the reset rows stream in two 8-row blocks) and a padded tail. The
  reference's segment handling is itself checked in tests/test_ops_segments.py."""
  _check("gpu", 2, 60, 1, 16, 32, 16, jnp.float32, True, 1e-4, block_v=16, segments=True)
  if not on_device("gpu"):
    _check("tpu", 1, 78, 1, 8, 8, 8, jnp.float32, False, 1e-4, segments=True)


@skip_on_accel
def test_tpu_kernel_bf16():
  _check("tpu", 1, 24, 1, 16, 16, 8, jnp.bfloat16, False, 1e-2)


def test_unsupported_shapes_give_reasons():
  ur = pallas_entry.unsupported_reason
  assert ur((2, 100, 4, 64), (2, 100, 4, 128), jnp.bfloat16, 64, "gpu") is None
  assert ur((2, 100, 4, 64), (2, 100, 4, 128), jnp.float32, 64, "tpu") is None
  assert "K=48" in ur((1, 8, 1, 48), (1, 8, 1, 64), jnp.float32, 64, "gpu")
  assert "V=8" in ur((1, 8, 1, 16), (1, 8, 1, 8), jnp.float32, 64, "gpu")
  assert "chunk_size=24" in ur((1, 8, 1, 16), (1, 8, 1, 16), jnp.float32, 24, "gpu")
  assert "chunk_size=12" in ur((1, 8, 1, 16), (1, 8, 1, 16), jnp.float32, 12, "tpu")
  assert "heads" in ur((1, 8, 2, 16), (1, 8, 4, 16), jnp.float32, 16, "gpu")
  assert "int32" in ur((1, 8, 1, 16), (1, 8, 1, 16), jnp.int32, 16, "gpu")
  assert "float16" in ur((1, 8, 1, 16), (1, 8, 1, 16), jnp.float16, 16, "tpu")
  # VMEM bounds found by the Mosaic compiler (benchmarks/tpu_compile_check.py --sweep); beta/g
  # stream in 8-chunk row blocks, so T is not bounded (compiled up to 2^20 on v4 and v5e).
  assert ur((1, 1 << 20, 1, 128), (1, 1 << 20, 1, 128), jnp.bfloat16, 64, "tpu") is None
  assert "bfloat16" in ur((1, 8, 1, 1024), (1, 8, 1, 1024), jnp.float32, 64, "tpu")
  assert "multiple of 128" in ur((1, 8, 1, 512), (1, 8, 1, 264), jnp.bfloat16, 64, "tpu")
  assert ur((1, 8, 1, 1024), (1, 8, 1, 1024), jnp.bfloat16, 64, "tpu") is None
  assert "bfloat16" in ur((1, 8, 1, 128), (1, 8, 1, 128), jnp.float32, 64, "gpu")  # smem
  assert ur((1, 8, 1, 64), (1, 8, 1, 64), jnp.float32, 64, "gpu") is None
  assert ur((1, 8, 1, 128), (1, 8, 1, 128), jnp.bfloat16, 64, "gpu") is None
  with pytest.raises(ValueError, match="K=48"):
    z = jnp.zeros((1, 8, 1, 48))
    pallas_entry.pallas_delta_rule(z, z, jnp.zeros((1, 8, 1, 64)), jnp.zeros((1, 8, 1)),
                                   target="gpu", interpret=True)
