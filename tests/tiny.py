"""Tiny stand-ins for tests of the training spine (and of other stages' loss functions);
tests import it as `import tiny as T` (tests/ is on sys.path: conftest.py, run_python).

TinyLM has the LM call contract (`model(tokens_BT).logits`) and logical axis names on every
param, so sharding rules are exercised; SyntheticIterator is deterministic per position and has
grain's get_state/set_state, so checkpointed resume can be checked exactly.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from refine_jax import config as base_lib


def _init(names):
  return nnx.with_partitioning(nnx.initializers.normal(0.2), names, eager_sharding=False)


class TinyLM(nnx.Module):
  """Embedding -> causal running-mean mixer -> MLP -> head; enough to learn next = f(current)."""

  def __init__(self, vocab=32, hidden=16, mlp=32, *, rngs):
    self.embed = nnx.Embed(vocab, hidden, embedding_init=_init(("vocab", "embed")), rngs=rngs)
    self.mix = nnx.Linear(hidden, hidden, kernel_init=_init(("embed", "heads")),
                          use_bias=False, rngs=rngs)
    self.up = nnx.Linear(hidden, mlp, kernel_init=_init(("embed", "mlp")), use_bias=False,
                         rngs=rngs)
    self.down = nnx.Linear(mlp, hidden, kernel_init=_init(("mlp", "embed")), use_bias=False,
                           rngs=rngs)
    self.head = nnx.Linear(hidden, vocab, kernel_init=_init(("embed", "vocab")), rngs=rngs)

  def __call__(self, tokens_BT):
    h_BTD = self.embed(tokens_BT)
    steps_T = jnp.arange(1, tokens_BT.shape[1] + 1, dtype=h_BTD.dtype)[None, :, None]
    h_BTD = h_BTD + self.mix(jnp.cumsum(h_BTD, axis=1) / steps_T)
    h_BTD = h_BTD + self.down(jax.nn.gelu(self.up(h_BTD)))
    return types.SimpleNamespace(logits=self.head(h_BTD).astype(jnp.float32), hidden_states=h_BTD)


class SyntheticIterator:
  """Batch i is a pure function of (seed, i): random inputs, targets = (inputs * 3 + 1) % vocab.

  `poison_at`: batch indices whose "poison" entry is 1 (a test loss can turn that into NaN).
  """

  def __init__(self, batch_size, seq_len, vocab=32, seed=0, poison_at=()):
    self.batch_size, self.seq_len, self.vocab, self.seed = batch_size, seq_len, vocab, seed
    self.poison_at = set(poison_at)
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng([self.seed, self.position])
    x = rng.integers(0, self.vocab, (self.batch_size, self.seq_len), dtype=np.int32)
    batch = {"inputs": x, "targets": (x * 3 + 1) % self.vocab,
             "loss_mask": np.ones(x.shape, np.float32),
             "poison": np.full((self.batch_size,), self.position in self.poison_at, np.float32)}
    self.position += 1
    return batch

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])


def tiny_config(steps=6, every=3, batch_size=4, seq_len=8, lr=1e-2, mesh=(-1, 1, 1)):
  """Base config sized for TinyLM runs (no eval, no progress bar)."""
  c = base_lib.base_config()
  c.train.steps, c.train.batch_size, c.train.lr = steps, batch_size, lr
  c.train.warmup_steps, c.train.eval_every, c.train.progress_bar = 2, 0, False
  c.data.seq_len = seq_len
  c.checkpoint.every_steps = every
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c
