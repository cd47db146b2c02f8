"""The LM over every mixer kind: decode == forward, cache_at == prefill, causality, gradients,
FLA parameter names/shapes, config validation."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from refine_jax.models import build_model, param_count
from refine_jax.interop.hf_weights import fla_state_dict, load_fla_state_dict
from refine_jax.config import default_model_config


ARCHS = {  # one layer each, except the hybrid (layer stacking + mixed cache kinds)
    "deltanet": dict(arch="deltanet", layers=1),
    "gated_deltanet": dict(arch="gated_deltanet", num_v_heads=4, layers=1),
    "hybrid": dict(arch="gated_deltanet", attn_layers=(1,), layers=2),
    "transformer": dict(arch="transformer", layers=1),
    "lact": dict(arch="lact", layers=1),
}


def small_cfg(**kw):
  c = default_model_config()
  c.hidden, c.heads, c.layers, c.vocab_size, c.chunk_size = 32, 2, 2, 40, 8
  for k, v in kw.items():
    c[k] = v
  return c


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def arch_params():
  return list(ARCHS)


step = nnx.jit(lambda m, ids, c: (lambda o: (o.logits, o.cache))(m(ids, c)))
forward = nnx.jit(lambda m, ids: m(ids).logits)
capture_fwd = nnx.jit(lambda m, ids: m(ids, capture=True).captured)
cache_at = nnx.jit(lambda m, cap, pos: m.cache_at(cap, pos, 32))


@pytest.mark.parametrize("name", arch_params())
def test_decode_prefill_cache_at_and_causality(name):
  m = build_model(small_cfg(**ARCHS[name]), rngs=nnx.Rngs(0))
  B, T = 2, 20
  ids = jax.random.randint(jax.random.key(1), (B, T), 0, 40)
  logits = forward(m, ids)
  assert logits.dtype == jnp.float32 and logits.shape == (B, T, 40)

  # causality: changing tokens after t leaves logits[:, :t+1] unchanged
  ids2 = ids.at[:, 10:].set((ids[:, 10:] + 7) % 40)
  l2 = forward(m, ids2)
  assert rel(l2[:, :10], logits[:, :10]) < 1e-6
  assert rel(l2[:, 10:], logits[:, 10:]) > 1e-3

  # token-by-token decode == full forward; keep every cache
  cache, dec, caches = m.init_cache(B, 32), [], []
  for t in range(T):
    lt, cache = step(m, ids[:, t:t + 1], cache)
    dec.append(lt)
    caches.append(cache)
  assert rel(jnp.concatenate(dec, 1), logits) < 1e-5

  # a multi-token prefill from an empty cache continues like decoding
  lp, cp = step(m, ids[:, :13], m.init_cache(B, 32))
  assert rel(lp, logits[:, :13]) < 1e-5
  cont = ids[:, 13:16]
  want = step(m, cont, caches[12])[0]
  assert rel(step(m, cont, cp)[0], want) < 1e-5

  # cache_at(p) from one captured pass == cache after tokens[:p+1]: decoding 3 tokens from
  # either gives the same logits
  pos = jnp.array([[0, 7, 8, 12], [3, 15, 16, 19]])
  n = pos.shape[1]
  c_at = cache_at(m, capture_fwd(m, ids), pos)
  follow = jax.random.randint(jax.random.key(2), (B * n, 3), 0, 40)
  got = step(m, follow, c_at)[0]
  rows = [(b, int(pos[b, i])) for b in range(B) for i in range(n)]
  ref_cache = jax.tree.map(lambda *xs: jnp.stack(xs),
                           *[jax.tree.map(lambda a: a[b], caches[p]) for b, p in rows])
  want = step(m, follow, ref_cache)[0]
  assert rel(got, want) < 1e-5


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
def test_grad_through_cache_at_reaches_early_tokens(name):
  m = build_model(small_cfg(**ARCHS[name]), rngs=nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(3), (1, 20), 1, 39)
  ids = ids.at[0, 0].set(39)             # token 39 occurs only at position 0
  follow = jnp.array([[1, 2, 3]])

  def loss(m):
    cap = m(ids, capture=True).captured
    c = m.cache_at(cap, jnp.array([[17]]), 32)   # chunk 2 (boundary state + advance)
    lg = m(follow, c).logits
    return -jax.nn.log_softmax(lg)[0, :, 5].sum()

  def loss_prefill(m):  # reference: the cache from prefilling tokens 0..17
    lg = m(follow, m(ids[:, :18], m.init_cache(1, 32)).cache).logits
    return -jax.nn.log_softmax(lg)[0, :, 5].sum()

  grads = nnx.jit(nnx.grad(loss))(m)
  g_emb = np.asarray(grads.embeddings.embedding[...])
  assert np.abs(g_emb[39]).max() > 1e-9           # flows back to position 0 via the state
  # Every parameter's gradient equals the one through a prefilled cache.
  want = dict(jax.tree_util.tree_leaves_with_path(
      nnx.state(nnx.jit(nnx.grad(loss_prefill))(m), nnx.Param)))
  got = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
  assert len(got) == len(want)
  for path, g in got:
    assert rel(g, want[path]) < 1e-5, path


def fla_shapes_deltanet(V, D, H, L, mlp):
  s = {"model.embeddings.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
  for i in range(L):
    p = f"model.layers.{i}."
    s.update({p + "attn_norm.weight": (D,), p + "mlp_norm.weight": (D,),
              p + "attn.q_proj.weight": (D, D), p + "attn.k_proj.weight": (D, D),
              p + "attn.v_proj.weight": (D, D), p + "attn.b_proj.weight": (H, D),
              p + "attn.q_conv1d.weight": (D, 1, 4), p + "attn.k_conv1d.weight": (D, 1, 4),
              p + "attn.v_conv1d.weight": (D, 1, 4), p + "attn.o_norm.weight": (D // H,),
              p + "attn.o_proj.weight": (D, D), p + "mlp.gate_proj.weight": (mlp, D),
              p + "mlp.up_proj.weight": (mlp, D), p + "mlp.down_proj.weight": (D, mlp)})
  return s


def test_fla_state_dict_names_and_shapes():
  # DeltaNet, FLA defaults: expand_k = expand_v = 1, no gate. MLP: int(96*4*2/3)=256 -> 256.
  cfg = small_cfg(hidden=96, heads=3, vocab_size=70, layers=2)
  m = build_model(cfg, rngs=nnx.Rngs(0))
  sd = fla_state_dict(m)
  want = fla_shapes_deltanet(70, 96, 3, 2, 256)
  assert {k: v.shape for k, v in sd.items()} == want
  assert param_count(m) == sum(int(np.prod(s)) for s in want.values())
  # hidden 200: int(200*8/3)=533 -> 768
  m2 = build_model(small_cfg(hidden=200, heads=4, layers=1), rngs=nnx.Rngs(0))
  assert fla_state_dict(m2)["model.layers.0.mlp.up_proj.weight"].shape == (768, 200)


def test_fla_state_dict_gdn_shapes_and_roundtrip():
  # GDN with GVA: heads 2, head_dim 16, num_v_heads 4, expand_v 2 -> value dim 4*32 = 128
  cfg = small_cfg(arch="gated_deltanet", hidden=64, heads=2, head_dim=16, num_v_heads=4,
                  layers=1, vocab_size=30)
  m = build_model(cfg, rngs=nnx.Rngs(0))
  sd = fla_state_dict(m)
  p = "model.layers.0.attn."
  want = {"q_proj": (32, 64), "k_proj": (32, 64), "v_proj": (128, 64), "a_proj": (4, 64),
          "b_proj": (4, 64), "g_proj": (128, 64), "o_proj": (64, 128), "A_log": (4,),
          "dt_bias": (4,), "q_conv1d": (32, 1, 4), "k_conv1d": (32, 1, 4),
          "v_conv1d": (128, 1, 4), "o_norm": (32,)}
  for k, shape in want.items():
    key = p + k if k in ("A_log", "dt_bias") else p + k + ".weight"
    assert sd[key].shape == shape, key
  assert len([k for k in sd if k.startswith(p)]) == len(want)
  # load into a differently-initialised model: identical logits
  m2 = build_model(cfg, rngs=nnx.Rngs(7))
  ids = jnp.arange(12)[None] % 30
  want = forward(m, ids)
  assert rel(forward(m2, ids), want) > 1e-3
  load_fla_state_dict(m2, sd)
  np.testing.assert_array_equal(np.asarray(forward(m2, ids)), np.asarray(want))
  bad = dict(sd)
  bad[p + "v_proj.weight"] = np.zeros((64, 64), np.float32)
  with pytest.raises(ValueError, match="v_proj"):
    load_fla_state_dict(m2, bad)


@pytest.mark.parametrize("kw,field", [
    (dict(hidden=30, heads=4), "model.heads"),
    (dict(arch="mamba"), "model.arch"),
    (dict(attn_layers=(5,)), "model.attn_layers"),
    (dict(vocab_size=0), "model.vocab_size"),
    (dict(arch="gated_deltanet", num_v_heads=3), "model.num_v_heads"),
    (dict(qk_norm="l1"), "model.qk_norm"),
    (dict(dtype="float31"), "model.dtype"),
])
def test_bad_config_names_the_field(kw, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    build_model(small_cfg(**kw), rngs=nnx.Rngs(0))
