"""Packed rows (segment_ids): every mixer resets at each document start, so a document packed
after others gives the logits, gradients and cache_at caches of that document run alone.

Layout (T = 32, fast-weight chunk 8 for DeltaNet's chunk_size and LaCT's chunk):
  row 0: A [0, 11) | B [11, 24) starts mid-chunk and spans two boundaries | C [24, 29) starts
         on a boundary | padding (id 0) [29, 32)
  row 1: A' [0, 5) | B' [5, 25) | C' [25, 32) starts mid-chunk
Each document alone is the row [document ; filler tokens] run without segment_ids: the model
is causal, so its first n logits are those of the document by itself (one shape, one compile).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax.models import build_model, segments
from refine_jax.config import default_model_config

T, V, C = 32, 40, 8
ROWS = ([11, 13, 5, 3], [5, 20, 7])       # document lengths; row 0 ends in padding
# cache_at positions per row (5 each): before / at / after a document's own chunk boundary,
# inside a document that started mid-chunk, in the padding.
POSITIONS = np.array([[9, 14, 18, 26, 30], [3, 10, 17, 22, 31]], np.int32)
TOL = 1e-4                                 # float32: observed ~1e-7


def _cfg(arch, **kw):
  c = default_model_config()
  c.arch, c.hidden, c.heads, c.layers, c.vocab_size, c.chunk_size = arch, 32, 2, 2, V, C
  c.dtype, c.backend = "float32", "xla_chunked"
  c.lact.chunk, c.lact.window = C, 20       # window 20 < T: the dense local-window path
  c.lact.use_muon = True                    # momentum (default) + Muon: both carried and reset
  for k, v in kw.items():
    c[k] = v
  return c


CONFIGS = {
    "deltanet": dict(arch="deltanet"),
    "deltanet_recurrent": dict(arch="deltanet", backend="xla_recurrent"),
    "deltanet_interpret": dict(arch="deltanet", backend="interpret"),   # Pallas TPU kernel
    "gated_deltanet": dict(arch="gated_deltanet"),
    "lact": dict(arch="lact"),
    "transformer": dict(arch="transformer"),                             # full causal, dense
    # Unrolled (two mixer kinds): GDN + a sliding-window attention layer (blocked local path).
    "hybrid": dict(arch="gated_deltanet", attn_layers=(1,), attention=dict(window=6)),
}
# Logits only (cache_at's advance and a decode step do not run this backend's chunked kernel).
LOGITS_ONLY = {"deltanet_interpret"}


def _data():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, V, (2, T)).astype(np.int32)
  seg = np.zeros((2, T), np.int32)
  docs = []                                  # (row, start, length)
  for r, lens in enumerate(ROWS):
    s = 0
    for i, n in enumerate(lens):
      seg[r, s:s + n] = 0 if (r == 0 and i == len(lens) - 1) else i + 1
      docs.append((r, s, n))
      s += n
  return ids, seg, docs


def _alone(ids, docs, rng_seed=1):
  """One row per document: its tokens, then filler."""
  rng = np.random.default_rng(rng_seed)
  out = rng.integers(1, V, (len(docs), T)).astype(np.int32)
  for j, (r, s, n) in enumerate(docs):
    out[j, :n] = ids[r, s:s + n]
  return out


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))


@functools.cache
def _model(name):
  return build_model(_cfg(**CONFIGS[name]), rngs=nnx.Rngs(0))


def test_segment_helpers():
  s = jnp.array([[1, 1, 2, 2, 2, 1, 0, 0], [3, 3, 3, 3, 3, 3, 3, 3]])
  np.testing.assert_array_equal(segments.doc_index(s), [[0, 0, 1, 1, 1, 2, 3, 3], [0] * 8])
  np.testing.assert_array_equal(segments.doc_start(s), [[0, 0, 2, 2, 2, 5, 6, 6], [0] * 8])
  np.testing.assert_array_equal(segments.positions(s), [[0, 1, 0, 1, 2, 0, 0, 1],
                                                        list(range(8))])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_documents_equal_documents_alone(name):
  """Logits per document, and cache_at + 3 teacher-forced decode steps per position."""
  model = _model(name)
  ids, seg, docs = _data()
  # One query per cache_at position: its document alone, with the position inside it.
  doc_of = lambda r, p: next(j for j, (rr, s, n) in enumerate(docs) if rr == r and s <= p < s + n)
  q_docs = [doc_of(r, int(p)) for r in range(2) for p in POSITIONS[r]]
  alone_ids = _alone(ids, [docs[j] for j in q_docs])
  alone_pos = np.array([[int(p) - docs[doc_of(r, int(p))][1]] for r in range(2)
                        for p in POSITIONS[r]], np.int32)
  steps = jnp.asarray(np.random.default_rng(2).integers(1, V, (len(q_docs), 3)), jnp.int32)

  @nnx.jit
  def run(m, ids, seg, alone_ids):
    # Two forward traces: packed rows + the same rows as one document (segment_ids all equal,
    # which must match no segment_ids); documents alone + the packed rows without segments.
    packed = m(jnp.concatenate([ids, ids]), capture=True,
               segment_ids=jnp.concatenate([seg, jnp.ones_like(seg)]))
    alone = m(jnp.concatenate([alone_ids, ids]), capture=True)
    nq = steps.shape[0]
    logits = (packed.logits[:2], alone.logits[:nq], alone.logits[nq:], packed.logits[2:])
    if name in LOGITS_ONLY:
      return logits + (None,)
    pos_p = jnp.concatenate([POSITIONS, POSITIONS])
    pos_a = jnp.concatenate([alone_pos, jnp.zeros((2, 1), jnp.int32)])
    caches = (m.cache_at(packed.captured, pos_p, T + 8), m.cache_at(alone.captured, pos_a, T + 8))
    n_p, n_a = pos_p.size, pos_a.shape[0]
    cache = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *caches)
    toks = jnp.concatenate([steps, jnp.zeros((n_p - nq, 3), jnp.int32), steps,
                            jnp.zeros((n_a - nq, 3), jnp.int32)])

    def step(cache, tok):
      o = m(tok[:, None], cache=cache)
      return o.cache, o.logits[:, 0]

    _, dec = jax.lax.scan(step, cache, toks.T)                     # [3, rows, V]
    return logits + ((dec[:, :nq], dec[:, n_p:n_p + nq]),)

  packed, alone, leaky, ones, decoded = run(model, ids, seg, alone_ids)
  assert _rel(ones, leaky) < TOL
  for (r, s, n) in docs:
    j = next(j for j in range(len(q_docs)) if docs[q_docs[j]] == (r, s, n))
    err = _rel(packed[r, s:s + n], alone[j, :n])
    assert err < TOL, (name, r, s, n, err)
    if s > 0:  # without segment_ids the earlier documents leak in: the check can fail
      assert _rel(leaky[r, s:s + n], alone[j, :n]) > 1e-2, (name, r, s)
  if decoded is not None:
    err = _rel(*decoded)
    assert err < TOL, (name, "decode from cache_at", err)


@pytest.mark.parametrize("name", ["deltanet", "lact"])
def test_gradients_of_a_packed_document_equal_alone(name):
  """d(loss on row 0's second document B)/d(params): packed row == B alone."""
  # LaCT without Muon here (the forward test has it): Muon's backward doubles compile time.
  over = dict(lact=dict(chunk=C, window=20, use_muon=False)) if name == "lact" else {}
  model = build_model(_cfg(**CONFIGS[name], **over), rngs=nnx.Rngs(0))
  ids, seg, docs = _data()
  r, s, n = docs[1]
  alone_ids = _alone(ids, [docs[1]])
  tgt = np.random.default_rng(3).integers(0, V, (n,))

  def where_b(off):  # targets and loss mask of B's positions in a row
    t, m = np.zeros((1, T), np.int32), np.zeros((1, T), np.float32)
    t[0, off:off + n], m[0, off:off + n] = tgt, 1.0
    return jnp.asarray(t), jnp.asarray(m)

  @nnx.jit
  @nnx.grad
  def grad(m, x, sg, t, mask):
    logp = jax.nn.log_softmax(m(x, segment_ids=sg).logits)
    return -jnp.sum(mask * jnp.take_along_axis(logp, t[..., None], -1)[..., 0]) / n

  # Alone = the segmented path with one document (== segment_ids=None, checked above), so
  # both calls share one compiled program.
  grads = lambda g: {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(g, nnx.Param))}
  g_packed = grads(grad(model, ids[r:r + 1], seg[r:r + 1], *where_b(s)))
  g_alone = grads(grad(model, alone_ids, jnp.ones((1, T), jnp.int32), *where_b(0)))
  assert set(g_packed) == set(g_alone)
  scale = max(np.abs(a).max() for a in g_alone.values())
  for path, a in g_alone.items():
    b = g_packed[path]
    assert np.abs(a - b).max() <= TOL * max(np.abs(a).max(), 1e-3 * scale), (name, path)
