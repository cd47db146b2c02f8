"""layers.py building blocks and config sizing against hand computations."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from refine_jax.models import delta_dims, layer_kinds
from refine_jax.models import layers
from refine_jax.config import default_model_config


def test_rmsnorm_and_gated_match_numpy():
  x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32)
  g = np.random.default_rng(1).normal(size=(3, 5, 8)).astype(np.float32)
  n = layers.RMSNorm(8, eps=1e-6, rngs=nnx.Rngs(0))
  n.weight[...] = jnp.arange(1.0, 9.0)
  want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * np.arange(1.0, 9.0)
  np.testing.assert_allclose(n(jnp.asarray(x)), want, rtol=1e-5)
  gn = layers.GatedRMSNorm(8, eps=1e-6, rngs=nnx.Rngs(0))
  gn.weight[...] = jnp.arange(1.0, 9.0)
  np.testing.assert_allclose(gn(jnp.asarray(x), jnp.asarray(g)),
                             want * g / (1 + np.exp(-g)), rtol=1e-5)
  assert n(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_l2_normalize_eps_inside_root():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-4, 0.0]], np.float32)
  want = x / np.sqrt((x ** 2).sum(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(layers.l2_normalize(jnp.asarray(x)), want, rtol=1e-6)


def test_short_conv_causal_and_cached():
  conv = layers.ShortConv(3, 4, activation=None, std=0.5, rngs=nnx.Rngs(0))
  w = np.asarray(conv.kernel[...])                    # [W, C]
  u = np.random.default_rng(0).normal(size=(2, 9, 3)).astype(np.float32)
  up = np.concatenate([np.zeros((2, 3, 3), np.float32), u], 1)
  want = np.stack([sum(w[j] * up[:, t + j] for j in range(4)) for t in range(9)], 1)
  y, cache = conv(jnp.asarray(u))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cache, u[:, -4:])       # last W inputs
  # split: 5 tokens, then 1, then 3, each continuing from the cache
  y1, c = conv(jnp.asarray(u[:, :5]))
  y2, c = conv(jnp.asarray(u[:, 5:6]), c)
  y3, c = conv(jnp.asarray(u[:, 6:]), c)
  np.testing.assert_allclose(jnp.concatenate([y1, y2, y3], 1), want, rtol=1e-5, atol=1e-6)
  cs = layers.ShortConv(3, 4, activation="silu", std=0.5, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(cs(jnp.asarray(u))[0], want / (1 + np.exp(-want)), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("hidden,ratio,inter,want", [
    (2048, 4, None, 5632),      # int(2048*8/3)=5461 -> 22*256
    (1024, 4, None, 2816),      # 2730 -> 11*256
    (96, 4, None, 256),
    (64, 4, 100, 100),
    (64, None, None, 256),
])
def test_mlp_width_rule(hidden, ratio, inter, want):
  assert layers.mlp_width(hidden, ratio, inter) == want


def test_delta_dims_follow_fla():
  c = default_model_config()
  c.hidden, c.heads = 2048, 16                        # FLA DeltaNet 1.3B
  d = delta_dims(c, gated=False)
  assert (d.heads, d.v_heads, d.head_k_dim, d.head_v_dim) == (16, 16, 128, 128)
  c.heads, c.head_dim = 6, 256                        # FLA GatedDeltaNet defaults
  d = delta_dims(c, gated=True)
  assert (d.heads, d.v_heads, d.head_k_dim, d.head_v_dim) == (6, 6, 256, 512)
  assert (d.key_dim, d.value_dim) == (1536, 3072)
  c.num_v_heads = 12
  assert delta_dims(c, gated=True).value_dim == 12 * 512
  c.arch, c.layers, c.attn_layers = "gated_deltanet", 4, (1, 3)
  assert layer_kinds(c) == ["gated_deltanet", "attention", "gated_deltanet", "attention"]
  c.arch = "transformer"
  assert layer_kinds(c) == ["attention"] * 4


def tiny_lm(**kw):
  from refine_jax.models import build_model
  c = default_model_config()
  c.hidden, c.heads, c.layers, c.vocab_size, c.chunk_size = 32, 2, 1, 20, 8
  for k, v in kw.items():
    c[k] = v
  return build_model(c, rngs=nnx.Rngs(0))


def test_every_param_has_logical_axes():
  m = tiny_lm(arch="gated_deltanet", num_v_heads=4)
  allowed = {"vocab", "embed", "heads", "kv_heads", "mlp", "conv", "norm", "layers", None}
  for path, v in nnx.to_flat_state(nnx.state(m, nnx.Param)):
    axes = v.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == v[...].ndim, path
    assert set(axes) <= allowed, (path, axes)
  spec = nnx.get_partition_spec(nnx.state(m, nnx.Param))
  assert tuple(spec["embeddings"]["embedding"].get_value()) == ("vocab", "embed")


def test_bf16_compute_and_stable_cache_dtypes():
  m32, m16 = tiny_lm(), tiny_lm(dtype="bfloat16")
  ids = jnp.arange(24).reshape(2, 12) % 20
  fwd = nnx.jit(lambda m, ids: m(ids))
  a, out = fwd(m32, ids).logits, fwd(m16, ids)
  assert out.logits.dtype == jnp.float32 and out.hidden_states.dtype == jnp.float32
  assert float(jnp.linalg.norm(out.logits - a) / jnp.linalg.norm(a)) < 5e-2
  # cache pytrees keep their dtypes through a step (a lax.scan carry needs that)
  c0 = m16.init_cache(2, 16)
  c1 = nnx.jit(lambda m, x, c: m(x, c).cache)(m16, ids[:, :1], c0)
  c_at = nnx.jit(lambda m, x: m.cache_at(m(x, capture=True).captured,
                                         jnp.array([[3], [9]]), 16))(m16, ids)
  dt = lambda c: jax.tree.map(lambda x: (x.dtype, x.shape), c)
  assert dt(c0) == dt(c1) == dt(c_at)


@pytest.mark.parametrize("remat", [True, "full", "dots", "dots_no_batch"])
def test_remat_gives_same_gradients(remat):
  ids = jnp.arange(20).reshape(2, 10) % 20
  loss = lambda m: jnp.mean(m(ids).logits ** 2)
  g0 = nnx.jit(nnx.grad(loss))(tiny_lm(scan_layers=False))
  g1 = nnx.jit(nnx.grad(loss))(tiny_lm(remat=remat, scan_layers=False))
  for a, b in zip(jax.tree.leaves(nnx.state(g0)), jax.tree.leaves(nnx.state(g1))):
    assert float(jnp.linalg.norm(a - b)) <= 1e-5 * float(jnp.linalg.norm(a)) + 1e-12
