"""LaCT mixer: fast-weight update math, chunked scan vs a loop reference, decode, cache_at."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax.config import default_model_config
from refine_jax.models import fast_weights as FW
from refine_jax.models import lact as L


def make_cfg(**over):
  lact = dict(num_fw_heads=2, chunk=4, window=3, inter_multi=1.5, rope_theta=100.0,
              use_momentum=True, use_muon=True)
  lact.update(over)
  c = default_model_config()
  c.hidden, c.heads, c.dtype = 16, 4, "float32"
  c.lact.update(lact)
  return c


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30)


def rand_weights(key, B=2, H=2, dk=5, dh=7):
  k0, k1, k2 = jax.random.split(key, 3)
  return dict(w0=jax.random.normal(k0, (B, H, dh, dk)) / 2,
              w1=jax.random.normal(k1, (B, H, dk, dh)) / 2,
              w2=jax.random.normal(k2, (B, H, dh, dk)) / 2)


def test_newton_schulz_near_orthogonal():
  for shape in [(3, 8, 8), (2, 6, 10), (2, 12, 5)]:
    G = jax.random.normal(jax.random.key(0), shape)
    X = np.asarray(jax.jit(FW.newton_schulz5)(G), np.float64)
    s = np.linalg.svd(X, compute_uv=False)
    assert s.min() > 0.6 and s.max() < 1.25, s  # quintic NS lands in ~[0.7, 1.2]
    U, _, Vt = np.linalg.svd(np.asarray(G, np.float64), full_matrices=False)
    assert rel_err(X, U @ Vt) < 0.25  # close to the exact polar factor


def test_fw_grad_is_gradient_of_dot_product_loss():
  """fw_grad == -d/dW of L = -sum_t lr_t v_t . f_W(k_t), each matrix with its own lr."""
  w = rand_weights(jax.random.key(1))
  kk, kv, kl = jax.random.split(jax.random.key(2), 3)
  k = jax.random.normal(kk, (2, 6, 2, 5))
  v = jax.random.normal(kv, (2, 6, 2, 5))
  lr = jax.random.uniform(kl, (2, 6, 2, 3))
  dw = jax.jit(FW.fw_grad)(w, k, v, lr)

  @jax.jit
  def ref_grads(w):
    def loss(wn, i, name):
      return -jnp.sum(lr[..., i:i + 1] * v * FW.fw_apply({**w, name: wn}, k))
    return {n: -jax.grad(loss)(w[n], i, n) for i, n in enumerate(("w0", "w1", "w2"))}

  ref = ref_grads(w)
  for name in ("w0", "w1", "w2"):
    assert rel_err(dw[name], ref[name]) < 1e-5, name


def _loop_reference(w, toks, C, use_muon, use_momentum):
  """Naive chunk loop: output chunk i with weights after chunks < i; update via jax.grad."""
  row = {n: jnp.sqrt(jnp.sum(a * a, -1, keepdims=True)) for n, a in w.items()}
  T = toks["q"].shape[1]
  prev = {n: jnp.zeros_like(a) for n, a in w.items()}
  outs = []
  for s in range(0, T, C):
    sl = lambda t: t[:, s:s + C]
    outs.append(FW.fw_apply(w, sl(toks["q"])))
    new = {}
    for i, name in enumerate(("w0", "w1", "w2")):
      loss = lambda wn: jnp.sum(sl(toks["lr"])[..., i:i + 1] * sl(toks["v"])
                                * FW.fw_apply({**w, name: wn}, sl(toks["k"])))
      d = jax.grad(loss)(w[name])
      if use_momentum:
        d = d + jnp.mean(sl(toks["mc"]), 1)[:, :, None, None] * prev[name]
        prev[name] = d
      if use_muon:
        d = FW.newton_schulz5(d)
      wn = w[name] + d
      new[name] = wn / (jnp.linalg.norm(wn, axis=-1, keepdims=True) + 1e-5) * row[name]
    w = new
  return jnp.concatenate(outs, 1)


@pytest.mark.parametrize("use_muon,use_momentum", [(False, False), (True, True)])
def test_fw_scan_matches_loop(use_muon, use_momentum):
  B, T, H, dk, C = 2, 12, 2, 5, 4
  w = rand_weights(jax.random.key(3), B, H, dk)
  ks = jax.random.split(jax.random.key(4), 5)
  toks = dict(q=jax.random.normal(ks[0], (B, T, H, dk)), k=jax.random.normal(ks[1], (B, T, H, dk)),
              v=jax.random.normal(ks[2], (B, T, H, dk)),
              lr=jax.random.uniform(ks[3], (B, T, H, 3)) * 0.5)
  st = dict(w)
  if use_momentum:
    toks["mc"] = jax.random.uniform(ks[4], (B, T, H))
    st.update({"m" + n[1]: jnp.zeros_like(a) for n, a in w.items()})
  row = {n: jnp.sqrt(jnp.sum(a * a, -1, keepdims=True)) for n, a in w.items()}
  o, states = FW.fw_scan(st, toks, C, row, use_muon=use_muon)
  ref = jax.jit(lambda w, t: _loop_reference(w, t, C, use_muon, use_momentum))(w, toks)
  assert rel_err(o, ref) < 1e-4
  assert states["w0"].shape == (B, T // C + 1, H, 7, dk)
  np.testing.assert_allclose(states["w1"][:, 0], w["w1"], rtol=1e-6)


def _model(**over):
  return L.LaCT(make_cfg(**over), 0, rngs=nnx.Rngs(0))


def _boost(m):
  """Bigger lrs than the 1e-3 default so the fast weights move visibly in the tests."""
  m.base_lr_inv = L._inv_softplus(0.5)
  return m


def _layer_reference(m, x):
  """LaCT's layer written out directly (from the paper code's forward), reusing only the
  loop reference above for the fast-weight part."""
  B, T, D = x.shape
  H, Dh, Hf, dk = m.heads, m.head_dim, m.fw_heads, m.dk
  lin = lambda l, u: u @ l.kernel[...] + (0 if l.bias is None else l.bias[...])
  q, k, v = lin(m.q_proj, x), lin(m.k_proj, x), lin(m.v_proj, x)
  fq = q * m.qk_scale[...][:, 0] + m.qk_offset[...][:, 0]
  fk = k * m.qk_scale[...][:, 1] + m.qk_offset[...][:, 1]
  freqs = m.theta ** (-np.arange(0, Dh, 2) / Dh)
  ang = np.arange(T)[:, None] * freqs[None]
  cos = np.concatenate([np.cos(ang)] * 2, -1)[None, :, None]
  sin = np.concatenate([np.sin(ang)] * 2, -1)[None, :, None]

  def rope_flat(u):  # [B,T,D] split into attention heads
    u = u.reshape(B, T, H, Dh)
    rot = jnp.concatenate([-u[..., Dh // 2:], u[..., :Dh // 2]], -1)
    return (u * cos + rot * sin).reshape(B, T, D)

  qa, ka = rope_flat(q).reshape(B, T, H, Dh), rope_flat(k).reshape(B, T, H, Dh)
  s = jnp.einsum("bthd,bshd->bhts", qa, ka) / np.sqrt(Dh)
  i, j = np.arange(T)[:, None], np.arange(T)[None]
  s = jnp.where((j <= i) & (i - j < m.window), s, -jnp.inf)
  o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, -1), v.reshape(B, T, H, Dh))
  per_head = lambda u: u.reshape(B, T, Hf, dk)
  l2 = lambda u: u / (jnp.linalg.norm(u, axis=-1, keepdims=True) + 1e-5)
  fq = rope_flat(l2(per_head(jax.nn.silu(fq))).reshape(B, T, D))
  fk = rope_flat(l2(per_head(jax.nn.silu(fk))).reshape(B, T, D))
  lr = jax.nn.softplus(lin(m.lr_proj, x) + m.base_lr_inv).reshape(B, T, Hf, 3)
  toks = dict(q=per_head(fq), k=per_head(fk), v=per_head(jax.nn.silu(v)), lr=lr,
              mc=jax.nn.sigmoid(lin(m.momentum_proj, x)))
  w = {n: jnp.broadcast_to(a, (B,) + a.shape) for n, a in m.init_weights().items()}
  fw = _loop_reference(w, toks, m.chunk, m.use_muon, True)
  fw = fw / jnp.sqrt(jnp.mean(fw ** 2, -1, keepdims=True) + 1e-5) * m.ttt_norm.weight[...]
  fw = fw * jax.nn.silu(lin(m.ttt_scale_proj, x))[..., None]
  return (o.reshape(B, T, D) + fw.reshape(B, T, D)) @ m.o_proj.kernel[...]


def test_layer_matches_reference():
  m = _boost(_model())
  m.qk_offset[...] = 0.1 * jax.random.normal(jax.random.key(11), m.qk_offset.shape)
  x = jax.random.normal(jax.random.key(12), (2, 11, 16))
  y = jax.jit(lambda x: m(x)[0])(x)
  assert rel_err(y, jax.jit(lambda x: _layer_reference(m, x))(x)) < 1e-4


def test_causal_and_fast_weights_matter():
  m = _boost(_model())
  x = jax.random.normal(jax.random.key(5), (1, 13, 16))
  fwd = jax.jit(lambda x: m(x)[0])
  y0, y1 = fwd(x), fwd(x.at[:, 6].add(1.0))
  np.testing.assert_allclose(y0[:, :6], y1[:, :6], atol=1e-6)
  # Position 11 (chunk 2) is outside the window of 6 but sees it through the fast weights.
  assert np.abs(np.asarray(y0[:, 11:] - y1[:, 11:])).max() > 1e-4


@pytest.mark.parametrize("over", [
    dict(),
    pytest.param(dict(use_muon=False, use_momentum=False, learnable_ttt_scale=False,
                      w0_w2_low_rank=2, attn_qk_norm=True, window=None), marks=pytest.mark.slow)])
def test_decode_matches_forward(over):
  """Prefill 5 tokens, prefill 4 more from mid-chunk (crossing a chunk end), then decode one
  by one across further chunk updates: equals the full forward."""
  m = _boost(_model(**over))
  B, T = 2, 15
  x = jax.random.normal(jax.random.key(6), (B, T, 16))
  y_full = jax.jit(lambda x: m(x)[0])(x)
  step = jax.jit(lambda c, xt: m(xt, c)[:2])
  cache = m.init_cache(B, 20)
  y_a, cache = step(cache, x[:, :5])
  y_b, cache = step(cache, x[:, 5:9])
  ys = [y_a, y_b]
  for t in range(9, T):
    yt, cache = step(cache, x[:, t:t + 1])
    ys.append(yt)
  assert rel_err(jnp.concatenate(ys, 1), y_full) < 1e-4


def test_cache_at_equals_prefill():
  m = _boost(_model())
  B, T, max_len = 2, 14, 20
  x = jax.random.normal(jax.random.key(7), (B, T, 16))
  x_next = jax.random.normal(jax.random.key(8), (B, 2, 16))
  _, _, captured = jax.jit(lambda x: m(x, capture=True))(x)
  positions = jnp.array([[3, 9], [6, 13]])  # last token of a chunk / inside one / the end
  n = positions.shape[1]
  cache = jax.jit(lambda c, p: m.cache_at(c, p, max_len))(captured, positions)
  step = jax.jit(lambda c, xt: m(xt, c)[:2])
  y1, cache1 = step(cache, jnp.repeat(x_next[:, :1], n, 0))
  y2, _ = step(cache1, jnp.repeat(x_next[:, 1:], n, 0))
  prefill = jax.jit(lambda xp: m(xp, m.init_cache(1, max_len))[1])
  for b in range(B):
    for i in range(n):
      p, row = int(positions[b, i]), b * n + i
      ref = prefill(x[b:b + 1, :p + 1])
      got = jax.tree.map(lambda a: a[row:row + 1], cache)
      flat_ref = jax.tree_util.tree_leaves_with_path(ref)
      flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
      for path, a in flat_ref:
        np.testing.assert_allclose(flat_got[path], a, rtol=1e-4, atol=1e-5, err_msg=str(path))
      r1, c1 = step(ref, x_next[b:b + 1, :1])
      r2, _ = step(c1, x_next[b:b + 1, 1:])
      assert rel_err(y1[row], r1[0]) < 1e-4 and rel_err(y2[row], r2[0]) < 1e-4


def test_cache_at_is_differentiable():
  m = _boost(_model())
  x = jax.random.normal(jax.random.key(9), (1, 10, 16))

  def f(x):
    _, _, cap = m(x, capture=True)
    cache = m.cache_at(cap, jnp.array([[9]]), 12)
    return jnp.sum(m(x[:, :1], cache)[0] ** 2)

  def f_prefill(x):  # reference: the same cache from prefilling tokens 0..9
    cache = m(x, m.init_cache(1, 12))[1]
    return jnp.sum(m(x[:, :1], cache)[0] ** 2)

  g = jax.jit(jax.grad(f))(x)
  np.testing.assert_allclose(g, jax.jit(jax.grad(f_prefill))(x), rtol=1e-4, atol=1e-8)
  # Tokens 0..7 are outside the window (3) of the next token; they reach it only through the
  # fast weights (chunks [0,4) and [4,8) were applied).
  assert np.abs(np.asarray(g[0, :4])).max() > 0


def test_bad_config():
  with pytest.raises(ValueError, match="num_fw_heads"):
    _model(num_fw_heads=3)


def test_bfloat16_decode_matches_forward_and_grads_finite():
  """bf16 compute (fast weights stay float32): decode == forward; gradients near float32's."""
  cfg = make_cfg()
  cfg.dtype = "bfloat16"
  m = _boost(L.LaCT(cfg, 0, rngs=nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(10), (2, 10, 16)).astype(jnp.bfloat16)
  y_full = jax.jit(lambda x: m(x)[0])(x)
  step = jax.jit(lambda c, xt: m(xt, c)[:2])
  ys, cache = [], m.init_cache(2, 12)
  y, cache = step(cache, x[:, :3])
  ys.append(y)
  for t in range(3, 10):
    y, cache = step(cache, x[:, t:t + 1])
    ys.append(y)
  assert y_full.dtype == jnp.bfloat16 and cache["fw"]["w0"].dtype == jnp.float32
  assert rel_err(jnp.concatenate(ys, 1).astype(jnp.float32), y_full.astype(jnp.float32)) < 2e-2
  g = jax.jit(jax.grad(lambda x: jnp.sum(m(x)[0].astype(jnp.float32) ** 2)))(x)
  # Against the float32 layer with the same weights: Muon's Newton-Schulz amplifies bf16
  # rounding of the fast-weight gradients (measured 0.21 here; 0.013 with use_muon=False).
  m32 = _boost(L.LaCT(make_cfg(), 0, rngs=nnx.Rngs(0)))
  g32 = jax.jit(jax.grad(lambda x: jnp.sum(m32(x)[0] ** 2)))(x.astype(jnp.float32))
  assert rel_err(np.asarray(g, np.float32), g32) < 0.3
