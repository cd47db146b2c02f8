"""The shared per-chunk math of the Pallas kernels (pallas_math), run as plain JAX at the
production chunk size C = 64: forward, hand-written backward and the triangular solve."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import pallas_math as pm, reference

CFG = pm.MathCfg(precision=jax.lax.Precision.HIGHEST, explicit_transpose=False)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


@pytest.mark.parametrize("C,gated", [(64, False), (64, True), (24, True)])
def test_chunk_fwd_bwd_match_recurrence(C, gated):
  K, V = 32, 16
  rng = np.random.default_rng(C)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q, k, v = unit(r(C, K)) * K ** -0.5, unit(r(C, K)), r(C, V)
  beta = jax.nn.sigmoid(r(C, 1))
  g = -jax.nn.softplus(r(C, 1) - 1.0) if gated else None
  S, dO, dSn = r(K, V), r(C, V), r(K, V)

  def ref(q, k, v, beta, g, S):
    o, Sn = reference.recurrent(q[None, :, None], k[None, :, None], v[None, :, None],
                                beta[None, :, :1], None if g is None else g[None, :, :1],
                                scale=1.0, initial_state=S[None, None])
    return o[0, :, 0], Sn[0, 0]

  with jax.default_matmul_precision("highest"):
    (o2, S2), vjp = jax.vjp(ref, q, k, v, beta, g, S)
    want = vjp((dO, dSn))
  o1, S1 = pm.chunk_fwd(q, k, v, beta, g, S, CFG)
  assert _rel(o1, o2) < 1e-5 and _rel(S1, S2) < 1e-5
  got = pm.chunk_bwd(q, k, v, beta, g, S, dO, dSn, CFG)
  for name, a, b in zip(["dq", "dk", "dv", "dbeta", "dg", "dS"], got, want):
    if b is None:
      assert a is None
      continue
    assert _rel(a, b) < 1e-5, name


@pytest.mark.parametrize("C", [16, 64, 128])
def test_solve_is_exact_even_for_repeated_keys(C):
  """All-equal keys with beta = 1 make (-A)^n huge; the blocked substitution never forms it."""
  r, c = pm._iotas(C)
  rng = np.random.default_rng(0)
  for same in (False, True):
    k = rng.standard_normal((C, 16))
    if same:
      k = np.tile(k[:1], (C, 1))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    beta = np.ones((C, 1)) if same else rng.uniform(0, 1, (C, 1))
    A = np.tril(beta * (k @ k.T), -1)
    X = pm._inverse(jnp.asarray(A, jnp.float32), jnp.asarray(A.T, jnp.float32), r, c, CFG)
    want = np.linalg.inv(np.eye(C) + A)
    assert np.abs(np.asarray(X) - want).max() < 1e-5


def test_row_col_conversions():
  x = jnp.arange(8.0).reshape(8, 1)
  np.testing.assert_array_equal(pm.to_row(x), x.T)
  np.testing.assert_array_equal(pm.to_col(pm.to_row(x)), x)
