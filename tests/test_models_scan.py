"""Scanned layers (model.scan_layers) and remat policies: the scanned model is the unrolled one.

Both layouts build their blocks layer by layer from the same RNG stream, so with one seed they
hold identical weights; every output, cache and gradient must then agree to float rounding.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax.checkpoint import trees
from refine_jax.interop.hf_weights import fla_state_dict, load_fla_state_dict
from refine_jax.models import build_model, lm
from refine_jax.train import optim
from refine_jax.config import default_model_config

ARCHS = ("deltanet", "gated_deltanet", "lact", "transformer")


def _cfg(arch, layers=3, **kw):
  c = default_model_config()
  c.arch, c.hidden, c.heads, c.layers, c.vocab_size, c.chunk_size = arch, 32, 2, layers, 40, 8
  if arch == "lact":
    c.lact.chunk, c.lact.window = 16, 16
  for k, v in kw.items():
    c[k] = v
  return c


def _pair(arch, **kw):
  return (build_model(_cfg(arch, scan_layers=False, **kw), rngs=nnx.Rngs(0)),
          build_model(_cfg(arch, scan_layers=True, **kw), rngs=nnx.Rngs(0)))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30))


@pytest.mark.parametrize("arch", ARCHS)
def test_scanned_equals_unrolled_forward_cache_at_and_decode(arch):
  unrolled, scanned = _pair(arch)
  assert scanned.scan and not unrolled.scan
  ids = jax.random.randint(jax.random.key(1), (2, 32), 0, 40)
  fwd = nnx.jit(lambda m, x: m(x, capture=True))
  o0, o1 = fwd(unrolled, ids), fwd(scanned, ids)
  assert _rel(o0.logits, o1.logits) < 1e-5
  assert _rel(o0.hidden_states, o1.hidden_states) < 1e-5
  pos = jnp.array([[5, 20], [9, 31]])
  c0, c1 = unrolled.cache_at(o0.captured, pos, 40), scanned.cache_at(o1.captured, pos, 40)
  assert isinstance(c1, tuple) and len(c1) == 3  # per-layer caches, as the unrolled model's
  assert jax.tree.structure(c0) == jax.tree.structure(c1)
  for a, b in zip(jax.tree.leaves(c0), jax.tree.leaves(c1)):
    assert a.shape == b.shape and _rel(a, b) < 1e-5
  tok = jnp.array([[3], [4], [5], [6]])
  d0, d1 = unrolled(tok, cache=c0), scanned(tok, cache=c1)
  assert _rel(d0.logits, d1.logits) < 1e-5
  for a, b in zip(jax.tree.leaves(d0.cache), jax.tree.leaves(d1.cache)):
    assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("arch", ("deltanet", pytest.param("lact", marks=pytest.mark.slow)))
def test_scanned_gradients_match_unrolled_under_every_remat_policy(arch):
  ids = jax.random.randint(jax.random.key(2), (2, 32), 0, 40)
  loss = lambda m: jnp.mean(m(ids).logits ** 2)

  def grads(**kw):
    m = build_model(_cfg(arch, **kw), rngs=nnx.Rngs(0))
    g = nnx.jit(nnx.grad(loss))(m)
    return {p: np.asarray(v[...]) for p, v in lm.per_layer_params(
        (p, v[...]) for p, v in nnx.to_flat_state(nnx.state(g, nnx.Param)))}

  g0 = grads(scan_layers=False)
  for remat in ("none", "full", "dots", "dots_no_batch"):
    g1 = grads(scan_layers=True, remat=remat)
    assert set(g0) == set(g1)
    for path, a in g0.items():
      assert np.linalg.norm(a - g1[path]) <= 1e-5 * np.linalg.norm(a) + 1e-12, (remat, path)


def test_hybrid_keeps_the_unrolled_loop():
  m = build_model(_cfg("gated_deltanet", layers=4, attn_layers=(1, 3)), rngs=nnx.Rngs(0))
  assert not m.scan and len(m.blocks()) == 4


def test_stacked_params_have_a_layer_axis_and_fla_names_per_layer():
  unrolled, scanned = _pair("gated_deltanet")
  k = scanned.layers.attn.q_proj.kernel
  assert k[...].shape[0] == 3 and k.get_metadata()["out_sharding"][0] == "layers"
  sd0, sd1 = fla_state_dict(unrolled), fla_state_dict(scanned)
  assert sorted(sd0) == sorted(sd1) and "model.layers.2.attn.A_log" in sd1
  for key in sd0:
    np.testing.assert_array_equal(sd0[key], sd1[key])
  # Load different weights into the scanned model by FLA names; the layers must not mix.
  other = build_model(_cfg("gated_deltanet", scan_layers=False), rngs=nnx.Rngs(7))
  load_fla_state_dict(scanned, fla_state_dict(other))
  ids = jnp.arange(32).reshape(1, 32) % 40
  assert _rel(other(ids).logits, scanned(ids).logits) < 1e-5


def test_checkpoint_params_convert_between_layer_layouts():
  unrolled, scanned = _pair("deltanet")
  other = build_model(_cfg("deltanet", scan_layers=False), rngs=nnx.Rngs(3))
  pure = trees.params_to_pure(nnx.state(other, nnx.Param))      # an unrolled checkpoint
  restored = trees.params_from_pure(nnx.state(scanned, nnx.Param), pure)
  nnx.update(scanned, restored)
  ids = jnp.arange(32).reshape(1, 32) % 40
  assert _rel(other(ids).logits, scanned(ids).logits) < 1e-5
  back = trees.params_from_pure(nnx.state(unrolled, nnx.Param),
                                trees.params_to_pure(nnx.state(scanned, nnx.Param)))
  nnx.update(unrolled, back)
  assert _rel(other(ids).logits, unrolled(ids).logits) < 1e-5
  wrong = build_model(_cfg("deltanet", scan_layers=False, layers=2), rngs=nnx.Rngs(3))
  with pytest.raises(ValueError, match="match the model"):
    trees.params_from_pure(nnx.state(scanned, nnx.Param),
                           trees.params_to_pure(nnx.state(wrong, nnx.Param)))


def test_weight_decay_mask_ignores_the_layer_axis():
  unrolled, scanned = _pair("gated_deltanet")
  def decayed(m):
    mask = optim.decay_mask(nnx.state(m, nnx.Param))
    out = {}
    for path, v in nnx.to_flat_state(mask):
      layers = scanned.num_layers if lm.is_stacked(tuple(path)) else 1
      for p, _ in lm.per_layer_params([(path, np.zeros((layers,)))]):
        out[p] = bool(v.get_value() if hasattr(v, "get_value") else v.value)
    return out
  d0, d1 = decayed(unrolled), decayed(scanned)
  assert d0 == d1
  assert not d1[("layers", 0, "attn_norm", "weight")] and d1[("layers", 0, "attn", "q_proj",
                                                              "kernel")]


def test_scanned_program_does_not_grow_with_depth():
  """The lowered train-style program (fwd + bwd) is one loop body, whatever the depth."""
  def size(layers, scan):
    m = build_model(_cfg("deltanet", layers=layers, scan_layers=scan), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m)
    ids = jnp.zeros((1, 32), jnp.int32)
    f = jax.jit(jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(ids).logits ** 2)))
    return len(f.lower(state).as_text().splitlines())
  s2, s8 = size(2, True), size(8, True)
  u2, u8 = size(2, False), size(8, False)
  assert s8 < 1.05 * s2, (s2, s8)
  assert u8 > 2 * u2, (u2, u8)   # the check can fail: the unrolled program does grow
