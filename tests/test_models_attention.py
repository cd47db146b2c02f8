"""Softmax attention mixer vs a naive masked softmax; cache, decode and cache_at contracts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax.config import default_model_config
from refine_jax.models.attention import Attention


def make_cfg(window=None, kv=None, bias=False, head_dim=None):
  c = default_model_config()
  c.hidden, c.heads, c.dtype = 32, 4, "float32"
  c.attention.update(dict(window=window, num_kv_heads=kv, qkv_bias=bias, rope_theta=100.0,
                          head_dim=head_dim))
  return c


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30)


def naive(m: Attention, x_BTD, window):
  """Independent reference: per-head loops, rotate-half RoPE, explicit mask matrix."""
  x = np.asarray(x_BTD, np.float64)
  B, T, _ = x.shape
  H, K, Dh = m.heads, m.kv_heads, m.head_dim
  p = lambda lin: (np.asarray(lin.kernel[...], np.float64),
                   0 if lin.bias is None else np.asarray(lin.bias[...], np.float64))
  (wq, bq), (wk, bk), (wv, bv), (wo, _) = map(p, (m.q_proj, m.k_proj, m.v_proj, m.o_proj))
  q = (x @ wq + bq).reshape(B, T, H, Dh)
  k = (x @ wk + bk).reshape(B, T, K, Dh)
  v = (x @ wv + bv).reshape(B, T, K, Dh)
  freqs = m.theta ** (-np.arange(0, Dh, 2) / Dh)
  ang = np.arange(T)[:, None] * freqs[None]                     # [T, Dh/2]
  cos = np.concatenate([np.cos(ang)] * 2, -1)[None, :, None]
  sin = np.concatenate([np.sin(ang)] * 2, -1)[None, :, None]
  rot = lambda u: np.concatenate([-u[..., Dh // 2:], u[..., :Dh // 2]], -1)
  q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
  out = np.zeros((B, T, H, Dh))
  for h in range(H):
    g = h // (H // K)
    s = np.einsum("btd,bsd->bts", q[:, :, h], k[:, :, g]) / np.sqrt(Dh)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = (j <= i) if window is None else (j <= i) & (i - j < window)
    s = np.where(allowed[None], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    out[:, :, h] = np.einsum("bts,bsd->btd", a, v[:, :, g])
  return out.reshape(B, T, H * Dh) @ wo


@pytest.mark.parametrize("window,kv,bias,head_dim",
                         [(None, None, False, None), (3, 2, True, None), (5, 1, False, 6),
                          (8, 2, False, None)])
def test_matches_naive(window, kv, bias, head_dim):
  """Window 3 / 5 at T=11 take the blocked sliding-window path; None and 8 the jax.nn one."""
  m = Attention(make_cfg(window, kv, bias, head_dim), 0, rngs=nnx.Rngs(0))
  if bias:  # nonzero biases so the test sees them
    for lin in (m.q_proj, m.k_proj, m.v_proj):
      lin.bias[...] = 0.1 * jax.random.normal(jax.random.key(1), lin.bias.shape)
  x = jax.random.normal(jax.random.key(2), (2, 11, 32))
  y, cache, captured = m(x)
  assert cache is None and captured is None
  assert rel_err(y, naive(m, x, window)) < 1e-5


def test_causal():
  m = Attention(make_cfg(4, 2), 0, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (1, 10, 32))
  y0 = m(x)[0]
  y1 = m(x.at[:, 6].add(1.0))[0]
  np.testing.assert_allclose(y0[:, :6], y1[:, :6], atol=1e-6)
  assert np.abs(np.asarray(y0[:, 6:] - y1[:, 6:])).max() > 1e-3


@pytest.mark.parametrize("window,max_len", [(None, 16), (4, 16), (4, 4)])
def test_decode_matches_forward(window, max_len):
  """Prefill 5 tokens then decode one at a time (the ring buffer wraps when window < T)."""
  m = Attention(make_cfg(window, 2), 0, rngs=nnx.Rngs(0))
  T = 12 if window else 14
  x = jax.random.normal(jax.random.key(4), (2, T, 32))
  y_full = m(x)[0]
  cache = m.init_cache(2, max_len)
  y_pre, cache, _ = m(x[:, :5], cache)
  ys = [y_pre]
  step = jax.jit(lambda c, xt: m(xt, c)[:2])
  for t in range(5, T):
    yt, cache = step(cache, x[:, t:t + 1])
    ys.append(yt)
  assert rel_err(jnp.concatenate(ys, 1), y_full) < 1e-5
  np.testing.assert_array_equal(cache["length"], [T, T])


@pytest.mark.parametrize("window", [None, 4])
def test_cache_at_equals_prefill(window):
  m = Attention(make_cfg(window, 2), 0, rngs=nnx.Rngs(0))
  B, T, max_len = 2, 10, 16
  x = jax.random.normal(jax.random.key(5), (B, T, 32))
  x_next = jax.random.normal(jax.random.key(6), (B, 1, 32))
  _, _, captured = m(x, capture=True)
  positions = jnp.array([[0, 8], [3, 9]])
  cache = m.cache_at(captured, positions, max_len)
  n = positions.shape[1]
  y_next = m(jnp.repeat(x_next, n, 0), cache)[0]
  prefill = jax.jit(lambda xp: m(xp, m.init_cache(1, max_len))[1])
  step = jax.jit(lambda xt, c: m(xt, c)[0])
  for b in range(B):
    for i in range(n):
      p = int(positions[b, i])
      ref_cache = prefill(x[b:b + 1, :p + 1])
      row = b * n + i
      for key in ("k", "v", "length"):
        np.testing.assert_allclose(cache[key][row], ref_cache[key][0], atol=1e-6)
      assert rel_err(y_next[row], step(x_next[b:b + 1], ref_cache)[0]) < 1e-5


def test_cache_at_is_differentiable():
  m = Attention(make_cfg(4, 2), 0, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(7), (1, 8, 32))

  def f(x):
    _, _, cap = m(x, capture=True)
    cache = m.cache_at(cap, jnp.array([[5]]), 12)
    return jnp.sum(m(x[:, :1], cache)[0] ** 2)

  def f_prefill(x):  # reference: the same cache from prefilling tokens 0..5
    cache = m(x[:, :6], m.init_cache(1, 12))[1]
    return jnp.sum(m(x[:, :1], cache)[0] ** 2)

  g = jax.jit(jax.grad(f))(x)
  np.testing.assert_allclose(g, jax.jit(jax.grad(f_prefill))(x), rtol=1e-5, atol=1e-7)
  # Only tokens inside the window of position 5 (2..5) reach the cached keys/values.
  assert np.abs(np.asarray(g[0, 2:6])).max() > 0
  np.testing.assert_allclose(g[0, 6:], 0, atol=0)


def test_bad_config():
  with pytest.raises(ValueError, match="num_kv_heads"):
    Attention(make_cfg(None, 3), 0, rngs=nnx.Rngs(0))
  cfg = make_cfg()
  cfg.attention.windw = 3
  with pytest.raises(ValueError, match="windw"):
    Attention(cfg, 0, rngs=nnx.Rngs(0))
