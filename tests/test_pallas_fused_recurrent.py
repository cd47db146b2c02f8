"""Fused recurrent (decode) kernels against the naive recurrence: outputs, final state and
every gradient, for both Pallas kernels (interpreted on CPU, for real on a GPU / TPU): T == 1
through the one entry (pallas_kernels.delta_rule_scan dispatches decode steps to them), short
continuations through the kernel function; plus dispatch (fallback / errors), scan-of-steps
use and lowering."""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import lower_text
import pallas_kernels as pk
from pallas_kernels import ops, reference
from pallas_kernels import fused_recurrent as fr

# On a GPU (TPU) machine the GPU (TPU) kernel runs for real; elsewhere in the interpreters.
_ON = jax.default_backend()
_ON = "gpu" if _ON in ("gpu", "cuda", "rocm") else _ON


def _backend(which):
  if _ON in ("gpu", "tpu") and which != _ON:
    pytest.skip(f"{which} interpreter check; the {_ON} kernel runs on this machine")
  return f"pallas_{which}" if _ON == which else f"interpret_{which}"


def _inputs(B, T, H, K, V, dtype, gated, with_s0, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  d = dict(q=unit(r(B, T, H, K)), k=unit(r(B, T, H, K)), v=r(B, T, H, V),
           beta=jax.nn.sigmoid(r(B, T, H)))
  d = {n: x.astype(dtype) for n, x in d.items()}
  if gated:
    d["g"] = (-jax.nn.softplus(r(B, T, H) - 1.0)).astype(dtype)
  if with_s0:
    d["S0"] = r(B, H, K, V) * 0.5
  return d


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


def _loss_and_grads(fn, d, w_o, w_s):
  def loss(d):
    o, S = fn(d)
    return jnp.sum(o.astype(jnp.float32) * w_o) + jnp.sum(S * w_s), (o, S)
  return jax.jit(jax.value_and_grad(loss, has_aux=True))(d)


def _weights(B, T, H, K, V):
  rng = np.random.default_rng(1)
  return (jnp.asarray(rng.standard_normal((B, T, H, V)), jnp.float32),
          jnp.asarray(rng.standard_normal((B, H, K, V)), jnp.float32))


@functools.lru_cache(maxsize=None)
def _reference(B, T, H, K, V, dtype, gated, with_s0):
  """Loss, outputs and gradients of the naive recurrence (float32), shared by the backends."""
  d = _inputs(B, T, H, K, V, dtype, gated, with_s0)

  def ref(d):
    d = {n: x.astype(jnp.float32) for n, x in d.items()}
    return reference.recurrent(d["q"], d["k"], d["v"], d["beta"], d.get("g"),
                               initial_state=d.get("S0"))

  with jax.default_matmul_precision("highest"):   # an exact reference on GPU/TPU too
    return _loss_and_grads(ref, d, *_weights(B, T, H, K, V))


def _fused(backend, q, k, v, beta, g=None, initial_state=None):
  """T == 1: the public entry (checks its dispatch); T > 1: the kernel function itself."""
  if q.shape[1] == 1:
    return pk.delta_rule_scan(q, k, v, beta, g, initial_state=initial_state,
                              backend=backend)[:2]
  target, interpret = ops._PALLAS[backend]
  return fr.fused_recurrent(q, k, v, beta, g, initial_state, scale=q.shape[-1] ** -0.5,
                            target=target, interpret=interpret)


def _check(backend, B, T, H, K, V, dtype, gated, with_s0, tol):
  d = _inputs(B, T, H, K, V, dtype, gated, with_s0)
  ours = lambda d: _fused(backend, d["q"], d["k"], d["v"], d["beta"], d.get("g"),
                          d.get("S0"))
  (_, (o1, S1)), g1 = _loss_and_grads(ours, d, *_weights(B, T, H, K, V))
  (_, (o2, S2)), g2 = _reference(B, T, H, K, V, dtype, gated, with_s0)
  assert o1.shape == (B, T, H, V) and o1.dtype == d["v"].dtype
  assert S1.shape == (B, H, K, V) and S1.dtype == jnp.float32
  errs = {"o": _rel(o1, o2), "final_state": _rel(S1, S2)}
  errs.update({"d" + n: _rel(g1[n], g2[n]) for n in d})
  bad = {n: e for n, e in errs.items() if not e < tol}
  assert not bad, f"{backend}: relative errors above {tol}: {bad} (all: {errs})"


# (B, T, H, K, V, gated, with initial state): a decode step, short continuations, K != V,
# no initial state (the kernels start from zeros without reading one).
CASES = [
    (2, 1, 2, 16, 32, True, True),
    (1, 3, 2, 32, 16, False, True),
    (1, 3, 1, 16, 16, True, False),
]


@pytest.mark.parametrize("which", ["gpu", "tpu"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_fp32(which, case):
  B, T, H, K, V, gated, s0 = case
  _check(_backend(which), B, T, H, K, V, jnp.float32, gated, s0, 1e-5)


@pytest.mark.parametrize("which", ["gpu", "tpu"])
def test_matches_reference_bf16(which):
  _check(_backend(which), 2, 3, 2, 16, 32, jnp.bfloat16, True, True, 1e-2)


@pytest.mark.parametrize("which", ["gpu", "tpu"])
def test_production_head_dims(which):
  """K = V = 128 (TPU: the lane-dense [B, T, H*D] layout), T = 5 as in a rollout."""
  _check(_backend(which), 1, 5, 2, 128, 128, jnp.float32, True, True, 1e-5)


def test_scan_of_decode_steps_matches_reference():
  """The rollout pattern: a jitted lax.scan of one-token calls carrying the state (the state
  is aliased in place there), differentiated through; equals one T-token recurrence."""
  backend = _backend("gpu" if _ON != "tpu" else "tpu")
  B, T, H, K, V = 2, 3, 2, 16, 16
  d = _inputs(B, T, H, K, V, jnp.float32, True, True)
  w = jnp.asarray(np.random.default_rng(2).standard_normal((B, T, H, V)), jnp.float32)

  def scanned(d):
    xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0)[:, :, None],
                      {n: d[n] for n in ("q", "k", "v", "beta", "g")})

    def body(S, x):
      o, S = _fused(backend, x["q"], x["k"], x["v"], x["beta"], x["g"], S)
      return S, o[:, 0]
    S, o = jax.lax.scan(body, d["S0"], xs)
    return jnp.moveaxis(o, 0, 1), S

  def ref(d):
    return reference.recurrent(d["q"], d["k"], d["v"], d["beta"], d["g"],
                               initial_state=d["S0"])

  def loss(fn, d):
    o, S = fn(d)
    return jnp.sum(o * w) + jnp.sum(S ** 2)

  l1, g1 = jax.jit(jax.value_and_grad(lambda d: loss(scanned, d)))(d)
  with jax.default_matmul_precision("highest"):
    l2, g2 = jax.jit(jax.value_and_grad(lambda d: loss(ref, d)))(d)
  assert _rel(l1, l2) < 1e-5
  for n in d:
    assert _rel(g1[n], g2[n]) < 1e-5, n


@pytest.mark.parametrize("which", ["gpu", "tpu"])
def test_callers_state_is_not_overwritten(which):
  """The kernel aliases the state in place; a caller's (non-donated) array must survive."""
  backend = _backend(which)
  d = _inputs(1, 1, 1, 16, 16, jnp.float32, False, True)
  S0 = d["S0"]
  before = np.asarray(S0).copy()
  o, S = _fused(backend, d["q"], d["k"], d["v"], d["beta"], None, S0)
  jax.block_until_ready((o, S))
  np.testing.assert_array_equal(np.asarray(S0), before)
  assert _rel(S, before) > 1e-3   # the step did change the state


def test_unsupported_shapes_give_reasons():
  ur = fr.unsupported_reason
  f32, bf16 = jnp.float32, jnp.bfloat16
  assert ur((2, 1, 4, 128), (2, 1, 4, 128), [bf16, f32], "gpu") is None
  assert ur((2, 5, 4, 128), (2, 5, 4, 256), [bf16, f32], "tpu") is None
  assert ur((1, 1, 1, 1), (1, 1, 1, 1), [f32], "gpu") is None   # any power of two
  assert "K=48" in ur((1, 1, 1, 48), (1, 1, 1, 64), [f32], "gpu")
  assert "V=24" in ur((1, 1, 1, 16), (1, 1, 1, 24), [f32], "gpu")
  assert "K=12" in ur((1, 1, 1, 12), (1, 1, 1, 16), [f32], "tpu")
  assert "V=600" in ur((1, 1, 1, 16), (1, 1, 1, 600), [f32], "tpu")
  assert "T=65" in ur((1, 65, 1, 16), (1, 65, 1, 16), [f32], "tpu")
  assert "float16" in ur((1, 1, 1, 16), (1, 1, 1, 16), [jnp.float16], "tpu")
  assert ur((1, 1, 1, 16), (1, 1, 1, 16), [jnp.float16], "gpu") is None


def test_explicit_pallas_backend_raises_on_unsupported():
  z = lambda *s: jnp.zeros(s, jnp.float32)
  with pytest.raises(ValueError, match="K=48.*backend='xla_chunked'"):
    pk.delta_rule(z(1, 1, 1, 48), z(1, 1, 1, 48), z(1, 1, 1, 16), z(1, 1, 1),
                  backend="interpret_gpu")


def test_auto_falls_back_with_one_warning(monkeypatch):
  """auto on an accelerator with a shape the kernel does not take: the xla path, same result,
  one warning; on CPU auto is the xla path without a warning."""
  d = _inputs(1, 1, 1, 24, 16, jnp.float32, True, True)   # K = 24: not a power of two
  args = (d["q"], d["k"], d["v"], d["beta"], d["g"])
  want = reference.recurrent(*args, initial_state=d["S0"])
  if _ON == "cpu":
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      got = pk.delta_rule_scan(*args, initial_state=d["S0"])
    assert _rel(got[0], want[0]) < 1e-5
  monkeypatch.setattr(ops, "_platform_target", lambda: "gpu")
  monkeypatch.setattr(ops, "_warned", set())
  with pytest.warns(RuntimeWarning, match="K=24.*backend='xla_chunked'"):
    got = pk.delta_rule_scan(*args, initial_state=d["S0"])
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # only once
    pk.delta_rule_scan(*args, initial_state=d["S0"])
  assert _rel(got[0], want[0]) < 1e-5 and _rel(got[1], want[1]) < 1e-5


def test_bad_decode_inputs_give_one_clear_error():
  z = lambda *s: jnp.zeros(s, jnp.float32)
  q, v, b = z(1, 1, 3, 16), z(1, 1, 3, 8), z(1, 1, 3)
  with pytest.raises(ValueError, match="Unknown backend 'cuda'"):
    pk.delta_rule_scan(q, q, v, b, backend="cuda")
  with pytest.raises(ValueError, match="k has shape"):
    pk.delta_rule_scan(q, z(1, 1, 3, 8), v, b)
  with pytest.raises(ValueError, match="beta has shape"):
    pk.delta_rule_scan(q, q, v, z(1, 1))
  with pytest.raises(ValueError, match="initial_state has shape"):
    pk.delta_rule_scan(q, q, v, b, initial_state=z(1, 3, 8, 16))
  with pytest.raises(TypeError, match="v must be a floating-point"):
    pk.delta_rule_scan(q, q, v.astype(jnp.int32), b)


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_kernels_lower_at_production_shapes(target, T):
  """Triton IR / Mosaic at K = V = 128, bf16 inputs, gated: catches a primitive or block
  shape the real backend cannot take, on this CPU-only machine."""
  B, H, K, V = 2, 4, 128, 128
  bf = lambda *s: jnp.zeros(s, jnp.bfloat16)
  args = (bf(B, T, H, K), bf(B, T, H, K), bf(B, T, H, V), bf(B, T, H), bf(B, T, H),
          jnp.zeros((B, H, K, V), jnp.float32))
  call, platform = (fr._gpu_call, "cuda") if target == "gpu" else (fr._tpu_call, "tpu")
  txt = lower_text(lambda *a: call(*a, scale=K ** -0.5, interpret=False, alias=True), args,
               platform)
  # the custom call names the lowering: Triton (not Mosaic GPU) / Mosaic TPU
  assert "fused_recurrent" in txt
  assert ("xla.gpu.triton" if target == "gpu" else "tpu_custom_call") in txt
