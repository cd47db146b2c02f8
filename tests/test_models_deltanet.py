"""DeltaNet / Gated DeltaNet mixers: FLA math (naive numpy re-implementation), decode, cache_at."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from refine_jax.config import default_model_config
from refine_jax.models.deltanet import DeltaNet, GatedDeltaNet



def small_cfg(arch="deltanet", **kw):
  c = default_model_config()
  c.arch, c.hidden, c.heads, c.layers, c.vocab_size, c.chunk_size = arch, 32, 2, 2, 50, 8
  for k, v in kw.items():
    c[k] = v
  return c


def make(arch, **kw):
  cfg = small_cfg(arch, **kw)
  cls = GatedDeltaNet if arch == "gated_deltanet" else DeltaNet
  return cls(cfg, 0, rngs=nnx.Rngs(1)), cfg


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


# ---- naive FLA math, written from the paper/FLA description, on torch-layout weights.

def torch_state_dict(m):
  """Our params converted to FLA/torch layouts by the documented transposes."""
  sd = {}
  for name in ("q_proj", "k_proj", "v_proj", "b_proj", "a_proj", "g_proj", "o_proj"):
    if hasattr(m, name):
      sd[name] = np.asarray(getattr(m, name).kernel[...], np.float64).T      # [out, in]
  for name in ("q_conv1d", "k_conv1d", "v_conv1d"):
    if hasattr(m, name):
      sd[name] = np.asarray(getattr(m, name).kernel[...], np.float64).T[:, None, :]  # [C,1,W]
  sd["o_norm"] = np.asarray(m.o_norm.weight[...], np.float64)
  for name in ("A_log", "dt_bias"):
    if hasattr(m, name):
      sd[name] = np.asarray(getattr(m, name)[...], np.float64)
  return sd


def naive_layer(sd, x_TD, *, H, HV, dk, dv, gated, use_gate, allow_neg=False, eps=1e-6):
  silu = lambda a: a / (1 + np.exp(-a))
  sigmoid = lambda a: 1 / (1 + np.exp(-a))
  T = x_TD.shape[0]

  def conv(u_TC, w_C1W):
    W = w_C1W.shape[-1]
    up = np.concatenate([np.zeros((W - 1, u_TC.shape[1])), u_TC])
    return np.stack([sum(w_C1W[:, 0, j] * up[t + j] for j in range(W)) for t in range(T)])

  q = silu(conv(x_TD @ sd["q_proj"].T, sd["q_conv1d"])).reshape(T, H, dk)
  k = silu(conv(x_TD @ sd["k_proj"].T, sd["k_conv1d"])).reshape(T, H, dk)
  v = silu(conv(x_TD @ sd["v_proj"].T, sd["v_conv1d"])).reshape(T, HV, dv)
  l2 = lambda a: a / np.sqrt((a * a).sum(-1, keepdims=True) + 1e-6)
  q, k = l2(q), l2(k)
  beta = sigmoid(x_TD @ sd["b_proj"].T) * (2.0 if allow_neg else 1.0)
  if gated:
    a = x_TD @ sd["a_proj"].T + sd["dt_bias"]
    g = -np.exp(sd["A_log"]) * np.log1p(np.exp(a))
  S = np.zeros((HV, dk, dv))
  o = np.zeros((T, HV, dv))
  r = HV // H
  for t in range(T):
    for h in range(HV):
      kt, qt = k[t, h // r], q[t, h // r]
      if gated:
        S[h] *= np.exp(g[t, h])
      S[h] += beta[t, h] * np.outer(kt, v[t, h] - S[h].T @ kt)
      o[t, h] = S[h].T @ (qt * dk ** -0.5)
  o = o / np.sqrt((o * o).mean(-1, keepdims=True) + eps) * sd["o_norm"]
  if use_gate:
    o = o * silu((x_TD @ sd["g_proj"].T).reshape(T, HV, dv))
  return o.reshape(T, HV * dv) @ sd["o_proj"].T


@pytest.mark.parametrize("arch,kw", [
    ("deltanet", {}),
    ("deltanet", {"use_gate": True, "allow_neg_eigval": True}),
    ("gated_deltanet", {"num_v_heads": 4, "head_dim": 8}),
])
def test_layer_matches_naive_fla_math(arch, kw):
  m, cfg = make(arch, **kw)
  x = jax.random.normal(jax.random.key(0), (2, 19, cfg.hidden))
  y, cache, cap = nnx.jit(lambda m, x: m(x))(m, x)
  assert cache is None and cap is None
  d = m.dims
  sd = torch_state_dict(m)
  for b in range(2):
    want = naive_layer(sd, np.asarray(x[b], np.float64), H=d.heads, HV=d.v_heads,
                       dk=d.head_k_dim, dv=d.head_v_dim, gated=arch == "gated_deltanet",
                       use_gate=m.use_gate, allow_neg=cfg.allow_neg_eigval)
    assert rel(y[b], want) < 1e-4


def _fwd(m, x, c):
  return m(x, c)[:2]


fwd = nnx.jit(_fwd)
full = nnx.jit(lambda m, x: m(x)[0])


def decode_all(m, x):
  """Token-by-token decode (the T=1 path): outputs [B,T,D] and the cache after each token."""
  cache, ys, caches = m.init_cache(x.shape[0], 32), [], []
  for t in range(x.shape[1]):
    y, cache = fwd(m, x[:, t:t + 1], cache)
    ys.append(y)
    caches.append(cache)
  return jnp.concatenate(ys, 1), caches


@pytest.mark.parametrize("arch", ["deltanet", "gated_deltanet"])
def test_decode_and_cache_at_equal_full_forward(arch):
  m, cfg = make(arch, **({"num_v_heads": 4} if arch == "gated_deltanet" else {}))
  B, T = 2, 19
  x = jax.random.normal(jax.random.key(2), (B, T, cfg.hidden))
  y_full = full(m, x)
  y_dec, caches = decode_all(m, x)
  assert rel(y_dec, y_full) < 1e-5
  assert int(caches[-1]["pos"][0]) == T
  # prefill 5 from empty, then the rest from that cache (the chunked-with-state path)
  y1, c1 = fwd(m, x[:, :5], m.init_cache(B, 32))
  y2, c2 = fwd(m, x[:, 5:], c1)
  assert rel(jnp.concatenate([y1, y2], 1), y_full) < 1e-5
  assert rel(c2["state"], caches[-1]["state"]) < 1e-5
  for a, b in zip(c2["conv"], caches[-1]["conv"]):
    assert rel(a, b) < 1e-6
  # cache_at from one captured pass == cache after decoding tokens[:p+1]
  _, _, cap = m(x, capture=True)
  pos = jnp.array([[0, 7, 8, 18], [2, 15, 16, 11]])   # chunk 8: edges, inside, first/last
  got = nnx.jit(lambda m, cap, pos: m.cache_at(cap, pos, 32))(m, cap, pos)
  n = pos.shape[1]
  for b in range(B):
    for i in range(n):
      p, row = int(pos[b, i]), b * n + i
      want = caches[p]
      assert rel(got["state"][row], want["state"][b]) < 1e-5, (b, p)
      for a, w in zip(got["conv"], want["conv"]):
        np.testing.assert_allclose(a[row], w[b], rtol=1e-6, atol=1e-7)
      assert int(got["pos"][row]) == p + 1


def test_gdn_gates_and_init_ranges():
  m, _ = make("gated_deltanet", num_v_heads=4)
  A = np.exp(np.asarray(m.A_log[...]))
  assert A.shape == (4,) and (A > 0).all() and (A < 16).all()
  dt = np.log1p(np.exp(np.asarray(m.dt_bias[...])))   # softplus(dt_bias) = dt
  assert (dt >= 1e-3 - 1e-7).all() and (dt <= 0.1 + 1e-7).all()
  # conv and projection init std ~ 0.02
  w = np.asarray(m.v_proj.kernel[...])
  assert 0.015 < w.std() < 0.025


@pytest.mark.parametrize("backend", ["interpret_gpu", "interpret_tpu"])
def test_pallas_backends_decode_and_prefill_equal_xla(backend):
  """The model through the Pallas kernels (chunked prefill, fused one-token decode) gives the
  XLA path's outputs and final state."""
  m_ref, cfg = make("gated_deltanet", chunk_size=16)   # the GPU kernel's smallest chunk
  m = GatedDeltaNet(small_cfg("gated_deltanet", backend=backend, chunk_size=16), 0,
                    rngs=nnx.Rngs(1))
  B, T = 2, 20
  x = jax.random.normal(jax.random.key(3), (B, T, cfg.hidden))
  y_full = full(m_ref, x)
  y_pre, cache = fwd(m, x[:, :18], m.init_cache(B, 32))     # Pallas chunked, with state
  ys = [y_pre]
  for t in range(18, T):                                     # Pallas fused decode
    y, cache = fwd(m, x[:, t:t + 1], cache)
    ys.append(y)
  _, ref_caches = decode_all(m_ref, x)
  assert rel(jnp.concatenate(ys, 1), y_full) < 1e-5
  assert rel(cache["state"], ref_caches[-1]["state"]) < 1e-5
