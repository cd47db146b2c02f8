"""xla_chunked vs the token recurrence (reference.py): outputs, states and all input gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import chunked, reference


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _inputs(seed, B, T, H, K, V, gated, init, beta_max=1.0, g_shift=0.0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 8)
  q = jax.random.normal(ks[0], (B, T, H, K))
  k = jax.random.normal(ks[1], (B, T, H, K))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)  # the layers L2-normalise k
  v = jax.random.normal(ks[2], (B, T, H, V))
  beta = beta_max * jax.nn.sigmoid(jax.random.normal(ks[3], (B, T, H)))
  g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, T, H)) + g_shift) if gated else None
  S0 = jax.random.normal(ks[5], (B, H, K, V)) if init else None
  ct_o = jax.random.normal(ks[6], (B, T, H, V))
  ct_S = jax.random.normal(ks[7], (B, H, K, V))
  return dict(q=q, k=k, v=v, beta=beta, g=g, initial_state=S0), ct_o, ct_S


def _value_and_grads(fn, args, ct_o, ct_S):
  """Outputs and the gradient of <o, ct_o> + <S, ct_S> w.r.t. every array argument."""
  names = [n for n, x in args.items() if x is not None]

  def loss(arrs):
    o, S = fn(**{**args, **arrs})
    return jnp.sum(o * ct_o) + jnp.sum(S * ct_S), (o, S)

  (_, (o, S)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      {n: args[n] for n in names})
  return o, S, grads


CASES = [  # B, T, H, K, V, chunk, gated, init
    (2, 37, 2, 8, 5, 16, False, False),   # T not a multiple of the chunk, K != V
    (2, 37, 2, 8, 5, 16, True, True),
    (1, 64, 3, 16, 16, 16, False, True),  # exact multiple
    (1, 64, 3, 16, 16, 16, True, False),
    (2, 100, 1, 4, 12, 32, True, True),   # K < V, partial last chunk
    (1, 9, 2, 6, 3, 64, False, True),     # T shorter than one chunk
]


@pytest.mark.parametrize("B,T,H,K,V,C,gated,init", CASES)
def test_chunked_matches_recurrent_values_and_grads(B, T, H, K, V, C, gated, init):
  args, ct_o, ct_S = _inputs(B * 1000 + T, B, T, H, K, V, gated, init,
                             beta_max=2.0 if T == 100 else 1.0)

  def ref_fn(q, k, v, beta, g, initial_state):
    return reference.recurrent(q, k, v, beta, g, initial_state=initial_state)

  def chk_fn(q, k, v, beta, g, initial_state):
    if g is None:
      return pk.delta_rule(q, k, v, beta, initial_state=initial_state, chunk_size=C,
                           backend="xla_chunked")
    return pk.gated_delta_rule(q, k, v, g, beta, initial_state=initial_state, chunk_size=C,
                               backend="xla_chunked")

  with jax.default_matmul_precision("highest"):
    o_r, S_r, g_r = _value_and_grads(ref_fn, args, ct_o, ct_S)
    o_c, S_c, g_c = _value_and_grads(chk_fn, args, ct_o, ct_S)
  assert _rel(o_c, o_r) < 1e-5
  assert _rel(S_c, S_r) < 1e-5
  assert set(g_c) == set(g_r) == {n for n, x in args.items() if x is not None}
  for n in g_r:
    assert _rel(g_c[n], g_r[n]) < 1e-5, n


def test_recurrent_backend_matches_reference():
  args, _, _ = _inputs(3, 1, 20, 2, 4, 6, True, True)
  o, S = jax.jit(functools.partial(pk.gated_delta_rule, backend="xla_recurrent"))(
      args["q"], args["k"], args["v"], args["g"], args["beta"],
      initial_state=args["initial_state"])
  o_r, S_r = jax.jit(reference.recurrent)(**args)
  np.testing.assert_array_equal(o, o_r)
  np.testing.assert_array_equal(S, S_r)


def test_reference_matches_hand_computation():
  """The ground truth itself, against an explicit numpy loop over tokens."""
  args, _, _ = _inputs(4, 1, 6, 1, 3, 2, True, True)
  a = {n: np.asarray(x, np.float64) for n, x in args.items()}
  S = a["initial_state"][0, 0]
  outs = []
  for t in range(6):
    k_t, v_t, b_t = a["k"][0, t, 0], a["v"][0, t, 0], a["beta"][0, t, 0]
    S = np.exp(a["g"][0, t, 0]) * S
    S = S + b_t * np.outer(k_t, v_t - S.T @ k_t)
    outs.append(S.T @ a["q"][0, t, 0] * 3 ** -0.5)
  o, S_r = reference.recurrent(**args)
  assert _rel(o[0, :, 0], np.stack(outs)) < 1e-5
  assert _rel(S_r[0, 0], S) < 1e-5


def test_strong_decay_is_finite_and_exact():
  """Cumulative log decays near -1000 in a chunk: masking before exp keeps everything finite."""
  args, ct_o, ct_S = _inputs(5, 1, 64, 2, 8, 8, True, True)
  args["g"] = args["g"] * 30.0

  def ref_fn(q, k, v, beta, g, initial_state):
    return reference.recurrent(q, k, v, beta, g, initial_state=initial_state)

  def chk_fn(q, k, v, beta, g, initial_state):
    return pk.gated_delta_rule(q, k, v, g, beta, initial_state=initial_state,
                               backend="xla_chunked")

  o_r, S_r, g_r = _value_and_grads(ref_fn, args, ct_o, ct_S)
  o_c, S_c, g_c = _value_and_grads(chk_fn, args, ct_o, ct_S)
  assert _rel(o_c, o_r) < 1e-5 and _rel(S_c, S_r) < 1e-5
  for n in g_r:
    assert np.all(np.isfinite(g_c[n])), n
    # d/dg is a reverse cumsum of large, cancelling terms here: float32 order effects ~1e-5.
    assert _rel(g_c[n], g_r[n]) < 1e-4, n


@pytest.mark.parametrize("gated", [False, True])
def test_chunk_states_equal_recurrent_states(gated):
  B, T, H, K, V, C = 2, 45, 2, 8, 4, 16
  args, _, _ = _inputs(6, B, T, H, K, V, gated, True)
  with_states = jax.jit(functools.partial(pk.delta_rule_scan, return_chunk_states=True),
                        static_argnames=("chunk_size", "backend"))
  o, S, cs = with_states(args["q"], args["k"], args["v"], args["beta"], args["g"],
                         initial_state=args["initial_state"], chunk_size=C,
                         backend="xla_chunked")
  assert cs.shape == (B, 3, H, K, V) and cs.dtype == jnp.float32
  np.testing.assert_array_equal(cs[:, 0], args["initial_state"])
  o_r, S_r = jax.jit(reference.recurrent)(**args)
  assert _rel(o, o_r) < 1e-5 and _rel(S, S_r) < 1e-5
  # Independent check of one boundary: the recurrence run on the first 2C tokens only.
  a = {n: (x[:, :2 * C] if n != "initial_state" and x is not None else x)
       for n, x in args.items()}
  _, S_2 = jax.jit(reference.recurrent)(**a)
  assert _rel(cs[:, 2], S_2) < 1e-5
  # All boundaries, through the xla_recurrent backend (reference.recurrent_chunk_states).
  _, _, cs_r = with_states(args["q"], args["k"], args["v"], args["beta"], args["g"],
                           initial_state=args["initial_state"], chunk_size=C,
                           backend="xla_recurrent")
  assert _rel(cs, cs_r) < 1e-5


def test_chunk_states_gradient_matches_recurrent():
  B, T, H, K, V, C = 1, 40, 2, 4, 6, 16
  args, _, _ = _inputs(7, B, T, H, K, V, True, True)
  ct = jax.random.normal(jax.random.PRNGKey(1), (B, 3, H, K, V))

  def loss(backend, arrs):
    _, _, cs = pk.delta_rule_scan(**arrs, chunk_size=C, backend=backend,
                                  return_chunk_states=True)
    return jnp.sum(cs * ct)

  g_c = jax.jit(jax.grad(lambda a: loss("xla_chunked", a)))(args)
  g_r = jax.jit(jax.grad(lambda a: loss("xla_recurrent", a)))(args)
  for n in g_r:
    assert _rel(g_c[n], g_r[n]) < 1e-5, n


@pytest.mark.parametrize("gated", [False, True])
def test_advance_state_with_mask_equals_prefix_recurrence(gated):
  B, L, H, K, V = 3, 16, 2, 8, 5
  args, _, _ = _inputs(8, B, L, H, K, V, gated, True)
  S0, k, v, beta, g = (args["initial_state"], args["k"], args["v"], args["beta"], args["g"])
  prefix = np.array([0, 7, 15])  # row b applies tokens [0, prefix[b]]
  mask = (jnp.arange(L)[None, :] <= prefix[:, None]).astype(jnp.float32)
  S = jax.jit(pk.advance_state)(S0, k, v, beta, g, mask)
  for b, p in enumerate(prefix):
    _, S_b = jax.jit(reference.recurrent)(args["q"][b:b + 1, :p + 1], k[b:b + 1, :p + 1],
                                 v[b:b + 1, :p + 1], beta[b:b + 1, :p + 1],
                                 None if g is None else g[b:b + 1, :p + 1],
                                 initial_state=S0[b:b + 1])
    assert _rel(S[b:b + 1], S_b) < 1e-5, b
  # Gradients agree with the masked token recurrence.
  ct = jax.random.normal(jax.random.PRNGKey(2), S0.shape)
  arrs = {n: x for n, x in dict(state=S0, k=k, v=v, beta=beta, g=g).items() if x is not None}
  g_c = jax.jit(jax.grad(lambda a: jnp.sum(pk.advance_state(**a, mask=mask) * ct)))(arrs)
  g_r = jax.jit(jax.grad(lambda a: jnp.sum(
      pk.advance_state(**a, mask=mask, backend="xla_recurrent") * ct)))(arrs)
  for n in g_r:
    assert _rel(g_c[n], g_r[n]) < 1e-5, n


def test_advance_state_all_masked_is_identity_and_long_input_chunks():
  args, _, _ = _inputs(9, 2, 100, 2, 4, 4, True, True)
  S0 = args["initial_state"]
  adv = jax.jit(functools.partial(pk.advance_state, chunk_size=16))
  S = adv(S0, args["k"], args["v"], args["beta"], args["g"], jnp.zeros((2, 100)))
  np.testing.assert_array_equal(S, S0)
  # No mask, L = 100 > chunk: several chunks, equals the full recurrence.
  S = adv(S0, args["k"], args["v"], args["beta"], args["g"])
  _, S_r = jax.jit(reference.recurrent)(**args)
  assert _rel(S, S_r) < 1e-5


def test_chunk_boundary_state_plus_advance_gives_state_at_any_position():
  """The ReFINE use: chunk_states[:, c] advanced by a masked chunk = the state at position p."""
  B, T, H, K, V, C = 1, 48, 2, 8, 8, 16
  args, _, _ = _inputs(10, B, T, H, K, V, True, False)
  _, _, cs = jax.jit(functools.partial(pk.delta_rule_scan, chunk_size=C,
                                       return_chunk_states=True))(
      args["q"], args["k"], args["v"], args["beta"], args["g"])
  p = 27  # state after tokens [0, p]
  c = p // C
  sl = slice(c * C, (c + 1) * C)
  mask = (jnp.arange(C) <= p - c * C)[None].astype(jnp.float32)
  S = jax.jit(pk.advance_state)(cs[:, c], args["k"][:, sl], args["v"][:, sl],
                                args["beta"][:, sl], args["g"][:, sl], mask)
  a = {n: (x[:, :p + 1] if x is not None else None) for n, x in args.items()}
  _, S_r = jax.jit(reference.recurrent)(**a)
  assert _rel(S, S_r) < 1e-5


def test_bf16_inputs():
  args, _, _ = _inputs(11, 2, 50, 2, 16, 16, True, True)
  a16 = {n: x.astype(jnp.bfloat16) for n, x in args.items()}
  o, S = jax.jit(functools.partial(pk.gated_delta_rule, chunk_size=16))(
      a16["q"], a16["k"], a16["v"], a16["g"], a16["beta"], initial_state=a16["initial_state"])
  assert o.dtype == jnp.bfloat16 and S.dtype == jnp.float32
  # Reference on the same (bf16-rounded) values in float32: only o's final rounding differs.
  o_r, S_r = jax.jit(reference.recurrent)(
      **{n: x.astype(jnp.float32) for n, x in a16.items()})
  assert _rel(o.astype(jnp.float32), o_r) < 1e-2
  assert _rel(S, S_r) < 1e-4
  gq = jax.jit(jax.grad(lambda q: jnp.sum(pk.gated_delta_rule(
      q, a16["k"], a16["v"], a16["g"], a16["beta"])[0].astype(jnp.float32))))(a16["q"])
  assert gq.dtype == jnp.bfloat16
  # d/dq against the naive recurrence's on the same (bf16-rounded) values in float32.
  a32 = {n: x.astype(jnp.float32) for n, x in a16.items()}
  gq_r = jax.jit(jax.grad(lambda q: jnp.sum(reference.recurrent(
      q, a32["k"], a32["v"], a32["beta"], a32["g"])[0])))(a32["q"])
  assert _rel(np.asarray(gq, np.float32), gq_r) < 1e-2


def test_backward_stores_no_per_token_states():
  """The VJP residuals of the chunked form are O(T (K + V + C) + T/C K V), not O(T K V)."""
  B, T, H, K, V, C = 1, 256, 1, 64, 64, 16
  args, _, _ = _inputs(12, B, T, H, K, V, True, True)

  def residual_sizes(backend):
    f = lambda q, k, v, beta, g, s: pk.gated_delta_rule(
        q, k, v, g, beta, initial_state=s, chunk_size=C, backend=backend)
    _, vjp = jax.vjp(f, args["q"], args["k"], args["v"], args["beta"], args["g"],
                     args["initial_state"])
    return [x.size for x in jax.tree.leaves(vjp)]

  per_token_states = B * T * H * K * V
  assert sum(residual_sizes("xla_recurrent")) >= per_token_states  # the check discriminates
  sizes = residual_sizes("xla_chunked")
  assert max(sizes) <= B * (T // C) * H * K * V  # at most one state per chunk
  assert sum(sizes) < per_token_states / 2
