"""A tiny fast-weight LM learns MQAR-style associative recall (loss far below chance)."""
import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from refine_jax.models import build_model
from refine_jax.config import default_model_config


def mqar_batch(rng, B, n_pairs, n_keys=16, n_vals=16):
  """k1 v1 ... kN vN then the keys again in random order, each followed by its value.

  Keys are ids 1..n_keys, values n_keys+1..n_keys+n_vals; mask marks the query keys, whose
  next token (the value) is scored. Chance loss = log(n_vals).
  """
  keys = np.stack([rng.choice(n_keys, n_pairs, replace=False) for _ in range(B)]) + 1
  vals = rng.integers(0, n_vals, (B, n_pairs)) + n_keys + 1
  order = np.stack([rng.permutation(n_pairs) for _ in range(B)])
  qk, qv = np.take_along_axis(keys, order, 1), np.take_along_axis(vals, order, 1)
  ids = np.concatenate([np.stack([keys, vals], -1).reshape(B, -1),
                        np.stack([qk, qv], -1).reshape(B, -1)], 1)
  mask = np.zeros(ids.shape, np.float32)
  mask[:, 2 * n_pairs::2] = 1.0
  return jnp.asarray(ids), jnp.asarray(mask)


def train_mqar(arch, *, steps, n_pairs, hidden=32, layers=2, lr=3e-3, seed=0, **kw):
  cfg = default_model_config()
  cfg.arch, cfg.hidden, cfg.heads, cfg.layers = arch, hidden, 2, layers
  cfg.vocab_size, cfg.chunk_size = 33, 16
  for k, v in kw.items():
    cfg[k] = v
  m = build_model(cfg, rngs=nnx.Rngs(seed))
  opt = nnx.Optimizer(m, optax.adam(lr), wrt=nnx.Param)

  def loss_fn(m, ids, mask):
    lg = m(ids).logits[:, :-1]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(lg), ids[:, 1:, None], -1)[..., 0]
    acc = (lg.argmax(-1) == ids[:, 1:]).astype(jnp.float32)
    w = mask[:, :-1]
    return (nll * w).sum() / w.sum(), (acc * w).sum() / w.sum()

  @nnx.jit
  def step(m, opt, ids, mask):
    (loss, acc), g = nnx.value_and_grad(loss_fn, has_aux=True)(m, ids, mask)
    opt.update(m, g)
    return loss, acc

  rng = np.random.default_rng(seed)
  hist = [step(m, opt, *mqar_batch(rng, 32, n_pairs)) for _ in range(steps)]
  return np.array([[float(l), float(a)] for l, a in hist])


def test_deltanet_learns_small_mqar():
  hist = train_mqar("deltanet", steps=160, n_pairs=4)
  chance = np.log(16)
  assert hist[:5, 0].mean() > 0.8 * chance
  assert hist[-10:, 0].mean() < 0.35 * chance, hist[-10:, 0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deltanet", "gated_deltanet"])
def test_mqar_recall_accuracy(arch):
  hist = train_mqar(arch, steps=600, n_pairs=8, hidden=64, lr=2e-3)
  assert hist[-20:, 1].mean() > 0.9, hist[-20:]
