"""Backend dispatch, Pallas fallback and input validation of pallas_kernels.ops."""
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import chunked, ops

B, T, H, K, V = 1, 10, 2, 4, 3


def _args(dtype=jnp.float32):
  ks = jax.random.split(jax.random.PRNGKey(0), 5)
  q = jax.random.normal(ks[0], (B, T, H, K), dtype)
  k = jax.random.normal(ks[1], (B, T, H, K), dtype) * 0.5
  v = jax.random.normal(ks[2], (B, T, H, V), dtype)
  beta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, T, H))).astype(dtype)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, T, H))).astype(dtype)
  return q, k, v, beta, g


class _FakeEntry(types.ModuleType):
  """Stands in for pallas_entry: records calls, answers with the chunked form."""

  def __init__(self, reason=None):
    super().__init__("pallas_kernels.pallas_entry")
    self.reason, self.calls = reason, []

  def unsupported_reason(self, q_shape, v_shape, dtype, chunk_size, target):
    return self.reason

  def pallas_delta_rule(self, q, k, v, beta, g, *, scale, initial_state, chunk_size, target,
                        interpret, return_chunk_states):
    self.calls.append(dict(target=target, interpret=interpret, scale=scale,
                           chunk_size=chunk_size, return_chunk_states=return_chunk_states))
    o, S, cs = chunked.chunked(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                               chunk_size=chunk_size)
    return o, S, cs if return_chunk_states else None


@pytest.fixture
def fake_entry(monkeypatch):
  def install(entry):
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.setattr(ops, "_entry", entry)
    return entry
  return install


def test_auto_on_cpu_is_xla_chunked():
  q, k, v, beta, g = _args()
  assert jax.default_backend() == "cpu"
  o, S = pk.gated_delta_rule(q, k, v, g, beta, chunk_size=4)
  o_c, S_c, _ = chunked.chunked(q, k, v, beta, g, chunk_size=4)
  np.testing.assert_array_equal(o, o_c)
  np.testing.assert_array_equal(S, S_c)


def test_scale_and_output_final_state():
  q, k, v, beta, _ = _args()
  o1, S1 = pk.delta_rule(q, k, v, beta, scale=0.3, backend="xla_recurrent")
  o2, S2 = pk.delta_rule(q * (0.3 / K ** -0.5), k, v, beta, backend="xla_recurrent")
  np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(S1, S2, rtol=1e-6)
  o3, S3 = pk.delta_rule(q, k, v, beta, scale=0.3, output_final_state=False)
  assert S3 is None
  np.testing.assert_allclose(o3, o1, rtol=1e-5, atol=1e-6)


def test_auto_uses_pallas_on_gpu_when_supported(fake_entry, monkeypatch):
  entry = fake_entry(_FakeEntry(reason=None))
  monkeypatch.setattr(ops, "_platform_target", lambda: "gpu")
  q, k, v, beta, g = _args()
  o, S, cs = pk.delta_rule_scan(q, k, v, beta, g, chunk_size=4, return_chunk_states=True)
  assert entry.calls == [dict(target="gpu", interpret=False, scale=K ** -0.5, chunk_size=4,
                              return_chunk_states=True)]
  assert cs.shape == (B, 3, H, K, V)


def test_auto_falls_back_once_when_unsupported(fake_entry, monkeypatch):
  entry = fake_entry(_FakeEntry(reason="K=4 is not a multiple of 16"))
  monkeypatch.setattr(ops, "_platform_target", lambda: "tpu")
  q, k, v, beta, _ = _args()
  with pytest.warns(RuntimeWarning, match="K=4 is not a multiple of 16"):
    o, S = pk.delta_rule(q, k, v, beta, chunk_size=4)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # second call: no second warning
    pk.delta_rule(q, k, v, beta, chunk_size=4)
  assert entry.calls == []
  o_c, S_c, _ = chunked.chunked(q, k, v, beta, None, chunk_size=4)
  np.testing.assert_array_equal(o, o_c)


@pytest.mark.parametrize("backend,target,interpret", [
    ("pallas_gpu", "gpu", False), ("pallas_tpu", "tpu", False), ("interpret", "tpu", True),
    ("interpret_gpu", "gpu", True), ("interpret_tpu", "tpu", True)])
def test_explicit_pallas_backends(fake_entry, backend, target, interpret):
  entry = fake_entry(_FakeEntry())
  q, k, v, beta, g = _args()
  o, S = pk.gated_delta_rule(q, k, v, g, beta, scale=0.5, chunk_size=8, backend=backend)
  assert entry.calls == [dict(target=target, interpret=interpret, scale=0.5, chunk_size=8,
                              return_chunk_states=False)]
  assert o.shape == (B, T, H, V) and S.shape == (B, H, K, V)


def test_one_token_calls_take_the_fused_decode_kernel(fake_entry, monkeypatch):
  """T == 1 (a decode step) goes to fused_recurrent's kernel, never to the chunked entry; with
  chunk states asked for it stays on the chunked path."""
  entry = fake_entry(_FakeEntry())
  calls = []
  real = ops._fused.fused_recurrent
  monkeypatch.setattr(ops._fused, "fused_recurrent",
                      lambda *a, **kw: calls.append(kw) or real(*a, **kw))
  q, k, v, beta, g = (x[:, :1] for x in _args())
  q, k, v = (jnp.tile(x, (1, 1, 1, 4)) for x in (q, k, v))  # K = 16, V = 12 -> 16 below
  v = jnp.concatenate([v, v[..., :4]], -1)
  o, S = pk.gated_delta_rule(q, k, v, g, beta, scale=0.5, backend="interpret_gpu")
  assert entry.calls == [] and calls == [dict(scale=0.5, target="gpu", interpret=True)]
  want = pk.gated_delta_rule(q, k, v, g, beta, scale=0.5, backend="xla_recurrent")
  np.testing.assert_allclose(o, want[0], rtol=1e-5, atol=1e-6)
  pk.delta_rule_scan(q, k, v, beta, g, chunk_size=8, backend="interpret_gpu",
                     return_chunk_states=True)
  assert len(entry.calls) == 1 and len(calls) == 1


def test_explicit_pallas_backend_errors(fake_entry):
  q, k, v, beta, _ = _args()
  fake_entry(_FakeEntry(reason="T too short"))
  with pytest.raises(ValueError, match="T too short.*xla_chunked"):
    pk.delta_rule(q, k, v, beta, backend="pallas_gpu")


def test_works_under_jit_with_static_backend():
  q, k, v, beta, g = _args()
  f = jax.jit(pk.gated_delta_rule, static_argnames=("chunk_size", "backend"))
  o, S = f(q, k, v, g, beta, chunk_size=4, backend="xla_chunked")
  o_r, S_r = pk.gated_delta_rule(q, k, v, g, beta, backend="xla_recurrent")
  np.testing.assert_allclose(o, o_r, rtol=1e-5, atol=1e-6)


def _bad_cases():
  q, k, v, beta, g = _args()
  S0 = jnp.zeros((B, H, K, V))
  good = dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=S0)
  return good, [
      (dict(q=q[0]), ValueError, r"q must be 4-D \[B, T, H, K\]"),
      (dict(k=k[:, :, :, :3]), ValueError, r"k has shape .* must be q's shape"),
      (dict(v=v[:, :5]), ValueError, r"v has shape .*\[B, T, H, V\] with q's B, T, H"),
      (dict(v=v[:, :, :1]), ValueError, r"v has shape"),
      (dict(beta=beta[..., None]), ValueError, r"beta has shape .*\[B, T, H\]"),
      (dict(g=g[:, :3]), ValueError, r"g has shape .*\[B, T, H\]"),
      (dict(initial_state=jnp.zeros((B, H, V, K))), ValueError,
       r"initial_state has shape \(1, 2, 3, 4\) but must be \[B, H, K, V\] = \(1, 2, 4, 3\)"),
      (dict(q=q.astype(jnp.int32)), TypeError, r"q must be a floating-point array.*astype"),
      (dict(beta=beta > 0.5), TypeError, r"beta must be a floating-point array"),
      (dict(initial_state=S0.astype(jnp.int32)), TypeError, r"initial_state must be a float"),
      (dict(q=q[:, :0], k=k[:, :0], v=v[:, :0], g=g[:, :0], beta=beta[:, :0]), ValueError,
       r"T = 0 tokens"),
  ]


@pytest.mark.parametrize("case", range(11))
def test_bad_inputs_raise_clear_errors(case):
  good, cases = _bad_cases()
  override, err, match = cases[case]
  a = {**good, **override}
  with pytest.raises(err, match=match):
    pk.gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"],
                        initial_state=a["initial_state"])


@pytest.mark.parametrize("chunk_size", [0, 48, -4, 16.0])
def test_chunk_size_must_be_power_of_two(chunk_size):
  q, k, v, beta, _ = _args()
  with pytest.raises(ValueError, match="chunk_size must be a positive power of two"):
    pk.delta_rule(q, k, v, beta, chunk_size=chunk_size)


def test_unknown_backend_lists_valid_ones():
  q, k, v, beta, _ = _args()
  with pytest.raises(ValueError, match="Unknown backend 'triton'.*xla_chunked, xla_recurrent"):
    pk.delta_rule(q, k, v, beta, backend="triton")


def test_gated_requires_g():
  q, k, v, beta, _ = _args()
  with pytest.raises(ValueError, match="gated_delta_rule needs g"):
    pk.gated_delta_rule(q, k, v, None, beta)


def test_advance_state_validation():
  q, k, v, beta, g = _args()
  S = jnp.zeros((B, H, K, V))
  with pytest.raises(ValueError, match=r"mask has shape .*\[B, L\]"):
    pk.advance_state(S, k, v, beta, g, jnp.ones((B, T + 1)))
  with pytest.raises(ValueError, match=r"v has shape .*\[B, L, H, V\]"):
    pk.advance_state(S, k, v[..., :2], beta)
  with pytest.raises(ValueError, match=r"state must be 4-D"):
    pk.advance_state(S[0], k, v, beta)
  with pytest.raises(TypeError, match=r"state must be a floating-point"):
    pk.advance_state(S.astype(jnp.int32), k, v, beta)
  with pytest.raises(ValueError, match=r"Unknown backend 'triton'"):
    pk.advance_state(S, k, v, beta, backend="triton")
  # One vocabulary: a layer's Pallas backend name takes the XLA chunked advance (no kernel).
  np.testing.assert_array_equal(pk.advance_state(S, k, v, beta, g, backend="pallas_gpu"),
                                pk.advance_state(S, k, v, beta, g, backend="xla_chunked"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["interpret", "interpret_gpu"])
def test_real_interpret_backend_matches_xla_chunked(backend):
  """End to end through the real pallas_entry (kernels in the Pallas interpreter)."""
  ks = jax.random.split(jax.random.PRNGKey(3), 5)
  Bq, Tq, Hq, D = 1, 40, 1, 16
  q = jax.random.normal(ks[0], (Bq, Tq, Hq, D))
  k = jax.random.normal(ks[1], (Bq, Tq, Hq, D))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  v = jax.random.normal(ks[2], (Bq, Tq, Hq, D))
  beta = jax.nn.sigmoid(jax.random.normal(ks[3], (Bq, Tq, Hq)))
  g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (Bq, Tq, Hq)))
  o, S, cs = pk.delta_rule_scan(q, k, v, beta, g, chunk_size=16, backend=backend,
                                return_chunk_states=True)
  o_r, S_r, cs_r = pk.delta_rule_scan(q, k, v, beta, g, chunk_size=16, backend="xla_chunked",
                                      return_chunk_states=True)
  for a, b in ((o, o_r), (S, S_r), (cs, cs_r)):
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4


def test_gpu_kernels_fall_back_when_jax_drops_pallas_triton(fake_entry, monkeypatch):
  """jax deprecated the Pallas Triton backend (0.11): if a release removes it, auto on GPU
  uses XLA (one warning naming why), pallas_gpu says why, and the interpreter still runs."""
  from pallas_kernels import pallas_gpu
  entry = fake_entry(_FakeEntry(reason=None))
  monkeypatch.setattr(pallas_gpu, "triton_reason", lambda: "jax 9.9 has no Pallas Triton")
  monkeypatch.setattr(ops, "_platform_target", lambda: "gpu")
  q, k, v, beta, g = _args()
  with pytest.warns(RuntimeWarning, match="no Pallas Triton.*xla_chunked"):
    o, _ = pk.delta_rule(q, k, v, beta, chunk_size=4)
  assert entry.calls == []
  np.testing.assert_array_equal(o, chunked.chunked(q, k, v, beta, chunk_size=4)[0])
  with pytest.raises(ValueError, match="no Pallas Triton"):
    pk.delta_rule(q, k, v, beta, backend="pallas_gpu")
  pk.delta_rule(q, k, v, beta, backend="interpret_gpu")
  assert entry.calls[-1]["interpret"]
  # T == 1 (the fused decode kernel) resolves the same way.
  monkeypatch.setattr(ops, "_warned", set())
  with pytest.warns(RuntimeWarning, match="no Pallas Triton.*xla_chunked"):
    pk.delta_rule(q[:, :1], k[:, :1], v[:, :1], beta[:, :1])
  with pytest.raises(ValueError, match="no Pallas Triton"):
    pk.delta_rule(q[:, :1], k[:, :1], v[:, :1], beta[:, :1], backend="pallas_gpu")


def test_bf16_semantics_of_xla_and_gpu_kernel_as_documented():
  """ops.py's "bf16 inputs": XLA computes exactly float32 math on the bf16 values (o rounded
  once), while the GPU kernel feeds bf16 operands to its dots. The two differ by a few bf16
  roundings: unit roundoff u = 2^-9; o is rounded on both sides (u each) and a chain of
  dots with bf16-rounded operands adds ~2u per operand pair, so the bound is 8u = 2^-6
  (measured ~4e-3 for o, the state and every gradient). If the lower check fails, the
  kernel now matches XLA: update ops.py and WORKSPACE.md."""
  rng = np.random.default_rng(0)
  Bq, Tq, Hq, D, C = 1, 64, 1, 16, 16
  n = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  x = dict(q=unit(n(Bq, Tq, Hq, D)), k=unit(n(Bq, Tq, Hq, D)), v=n(Bq, Tq, Hq, D),
           beta=jax.nn.sigmoid(n(Bq, Tq, Hq)), g=-jax.nn.softplus(n(Bq, Tq, Hq) - 1.0))
  xb = {k_: a.astype(jnp.bfloat16) for k_, a in x.items()}
  s0 = 0.5 * n(Bq, Hq, D, D)
  w = n(Bq, Tq, Hq, D)

  def run(backend, xx):
    def loss(xx):
      o, S, _ = pk.delta_rule_scan(xx["q"], xx["k"], xx["v"], xx["beta"], xx["g"],
                                   initial_state=s0, chunk_size=C, backend=backend)
      return jnp.sum(o.astype(jnp.float32) * w) + jnp.sum(S), (o, S)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(xx)

  rel = lambda a, b: float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                           / np.linalg.norm(np.asarray(b, np.float64)))
  (_, (o_x, S_x)), g_x = run("xla_chunked", xb)
  (_, (o_f, S_f)), _ = run("xla_chunked", {k_: a.astype(jnp.float32) for k_, a in xb.items()})
  assert o_x.dtype == jnp.bfloat16 and S_x.dtype == jnp.float32
  np.testing.assert_array_equal(o_x, o_f.astype(jnp.bfloat16))   # float32 math, o rounded once
  np.testing.assert_array_equal(S_x, S_f)
  (_, (o_k, S_k)), g_k = run("interpret_gpu", xb)
  errs = dict(o=rel(o_k, o_x), S=rel(S_k, S_x))
  errs.update({"d" + k_: rel(g_k[k_], g_x[k_]) for k_ in x})
  assert max(errs.values()) < 2.0 ** -6, errs
  assert rel(S_k, S_x) > 2.0 ** -12, errs   # a real (documented) difference, not f32 noise
