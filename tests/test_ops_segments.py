"""Packed documents (segment_ids) on every fast-weight path, forward and backward.

The ground truth runs each document ALONE: every document of every row becomes its own row of
one naive token loop written out in this file (a row's first document from initial_state,
later ones from zero; no segment logic involved), and o, the final state and the chunk-boundary
states are gathered back. xla_recurrent (reference.recurrent with segment_ids) is checked
against it like the other backends. Layouts cover a document starting mid-chunk, one starting
exactly at a chunk boundary, length-1 documents (first token of a row, middle, last token of
a row), trailing padding (id 0) and an id used again by a later, non-adjacent document (a new
document: ids only mark changes).

Tolerances: relative Frobenius errors. Float32 rounding (2^-24 ~ 6e-8) grown by the chunked
form's triangular solve and C-term sums stays well below 1e-5 at these sizes; 1e-4 leaves
room for the 3xTF32 / reassociation differences of other platforms, and a wrong reset
(a state leaking across documents) gives errors of order 1.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import reference

F32_TOL = 1e-4


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))


def _layout(T, C):
  """segment ids [2, T] int32, a numpy array (see the module docstring)."""
  seg = np.zeros((2, T), np.int32)
  # Row 0: docs start at 0, mid-chunk (3), at a chunk boundary (C), a length-1 doc (C+3),
  # then one more; the last 3 tokens are padding (id 0).
  starts = [0, 3, C, C + 3, C + 4] + ([2 * C + 1] if 2 * C + 1 < T - 3 else [])
  for i, s in enumerate(starts):
    seg[0, s:T - 3] = i + 1
  seg[0, T - 3:] = 0
  # Row 1: a length-1 doc at token 0, a doc from 1, one at chunk boundary 2C (or C) reusing
  # id 3, and a length-1 doc at the row's last token.
  b = 2 * C if 2 * C < T - 1 else C
  seg[1, 0], seg[1, 1:b], seg[1, b:T - 1], seg[1, T - 1] = 3, 5, 3, 9
  return seg


def _docs(seg_row):
  s = np.asarray(seg_row)
  starts = [0] + [t for t in range(1, len(s)) if s[t] != s[t - 1]]
  return list(zip(starts, starts[1:] + [len(s)]))


def _inputs(B, T, H, K, V, gated, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  x = dict(q=unit(r(B, T, H, K)), k=unit(r(B, T, H, K)), v=r(B, T, H, V),
           beta=jax.nn.sigmoid(r(B, T, H)), S0=0.5 * r(B, H, K, V))
  if gated:
    x["g"] = -jax.nn.softplus(r(B, T, H) - 1.0)
  return x


def _naive(q, k, v, beta, g, S0):
  """The delta rule token by token on independent rows (float32, exact dots): (o [D,L,H,V],
  the state after every token [D,L,H,K,V]). Written out here, not taken from the package."""
  scale = q.shape[-1] ** -0.5
  ein = lambda *a: jnp.einsum(*a, precision=jax.lax.Precision.HIGHEST)

  def step(S, xs):
    q_t, k_t, v_t, b_t, g_t = xs
    S = S * jnp.exp(g_t)[..., None, None]
    S = S + ein("dhk,dhv->dhkv", k_t, b_t[..., None] * (v_t - ein("dhk,dhkv->dhv", k_t, S)))
    return S, (ein("dhk,dhkv->dhv", q_t * scale, S), S)

  xs = [jnp.moveaxis(a, 1, 0) for a in (q, k, v, beta, g)]
  _, (o, states) = jax.lax.scan(step, S0, xs)
  return jnp.moveaxis(o, 0, 1), jnp.moveaxis(states, 0, 1)


def _per_document(x, seg, end=None):
  """Every document of every row run ALONE, as its own row of one naive recurrence (a row's
  first document from initial_state, later ones from zero). Documents are cut at token `end`
  (default: the row length). Returns (o [B,T,H,V] (zero after end), state after token t:
  a function (b, t) -> [H,K,V] index, stacked states [D,L,H,K,V])."""
  B, T = seg.shape
  end = T if end is None else end
  docs = [(b, s, min(e, end)) for b in range(B) for s, e in _docs(seg[b]) if s < end]
  L = max(e - s for _, s, e in docs)
  bi = np.array([b for b, _, _ in docs])
  ti = np.array([[min(s + j, e - 1) for j in range(L)] for _, s, e in docs])
  valid = jnp.asarray(np.array([[s + j < e for j in range(L)] for _, s, e in docs]),
                      jnp.float32)[..., None]
  take = lambda a: a[bi[:, None], ti]                       # [D, L, ...]
  g = x.get("g")
  g_d = jnp.zeros(ti.shape + (x["beta"].shape[-1],)) if g is None else take(g) * valid
  first = jnp.asarray(np.array([s == 0 for _, s, _ in docs]), jnp.float32)
  S0_d = x["S0"][bi] * first[:, None, None, None]
  o_d, st_d = _naive(take(x["q"]), take(x["k"]), take(x["v"]), take(x["beta"]) * valid, g_d,
                     S0_d)
  where = {}                                                 # (b, t) -> (doc, offset)
  for d, (b, s, e) in enumerate(docs):
    for t in range(s, e):
      where[(b, t)] = (d, t - s)
  di = np.array([[where.get((b, t), (0, 0))[0] for t in range(T)] for b in range(B)])
  oi = np.array([[where.get((b, t), (0, 0))[1] for t in range(T)] for b in range(B)])
  keep = jnp.asarray(np.array([[(b, t) in where for t in range(T)] for b in range(B)]),
                     jnp.float32)[..., None, None]
  return o_d[di, oi] * keep, where, st_d


def _truth(x, seg, C):
  """Per-document ground truth: (o, final state, chunk states [B, N, H, K, V])."""
  B, T = seg.shape
  o, where, st = _per_document(x, seg)
  state_after = lambda b, t: st[where[(b, t)]]
  final = jnp.stack([state_after(b, T - 1) for b in range(B)])
  cs = jnp.stack([jnp.stack([x["S0"][b]] + [state_after(b, c * C - 1)
                                            for c in range(1, -(-T // C))])
                  for b in range(B)])
  return o, final, cs


def _weights(x, T, C, seed=1):
  B, _, H, K = x["q"].shape
  V = x["v"].shape[-1]
  rng = np.random.default_rng(seed)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  return r(B, T, H, V), r(B, H, K, V), r(B, -(-T // C), H, K, V)


def _loss(fn, x, w):
  o, S, cs = fn(x)
  return (jnp.sum(o * w[0]) + jnp.sum(S * w[1]) + jnp.sum(cs * w[2])), (o, S, cs)


@functools.lru_cache(maxsize=None)
def _truth_result(shape, gated):
  """(inputs, segment ids, weights, (loss, (o, S, cs)), grads) of the ground truth, cached
  across backends."""
  B, T, H, K, V, C = shape
  x, seg = _inputs(B, T, H, K, V, gated), _layout(T, C)
  w = _weights(x, T, C)
  out, grads = jax.jit(jax.value_and_grad(
      lambda x: _loss(lambda x: _truth(x, seg, C), x, w), has_aux=True))(x)
  return x, seg, w, out, grads


def _compare(backend, shape, gated, tol=F32_TOL):
  B, T, H, K, V, C = shape
  x, seg, w, (_, want), gwant = _truth_result(shape, gated)

  def ours(x):
    return pk.delta_rule_scan(x["q"], x["k"], x["v"], x["beta"], x.get("g"),
                              initial_state=x["S0"], chunk_size=C, backend=backend,
                              return_chunk_states=True, segment_ids=jnp.asarray(seg))

  (_, got), ggot = jax.jit(jax.value_and_grad(lambda x: _loss(ours, x, w), has_aux=True))(x)
  errs = {"o": _rel(got[0], want[0]), "final_state": _rel(got[1], want[1]),
          "chunk_states": _rel(got[2], want[2])}
  errs.update({"d" + n: _rel(ggot[n], gwant[n]) for n in x})
  print(backend, shape, "gated" if gated else "plain", "max rel err",
        max(errs.values()), errs)
  bad = {n: e for n, e in errs.items() if not e < tol}
  assert not bad, f"{backend}: relative errors above {tol}: {bad} (all: {errs})"
  return errs


# (B, T, H, K, V, C), gated. Compiling dominates the run time, so few cases: each layout has
# every kind of boundary; T = 50 leaves a padded tail chunk, T = 64 has 8 chunks.
XLA_CASES = [((2, 24, 2, 8, 8, 8), True), ((2, 50, 2, 16, 16, 16), False),
             ((2, 64, 2, 8, 16, 8), True)]


@pytest.mark.parametrize("shape,gated", XLA_CASES)
def test_xla_paths_match_per_document_recurrence(shape, gated):
  for backend in ("xla_chunked", "xla_recurrent"):
    _compare(backend, shape, gated)


# Interpreted kernels are slow: one small shape each (one head: the grid is walked point by
# point). The GPU kernel needs K, V, C powers of two >= 16; T = 50 pads the tail chunk.
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("backend,shape", [("interpret_gpu", (2, 50, 1, 16, 16, 16)),
                                           ("interpret", (2, 24, 1, 8, 8, 8))])
def test_pallas_kernels_match_per_document_recurrence(backend, shape, gated):
  _compare(backend, shape, gated)


def test_reset_flags_mark_changes_only():
  seg = jnp.asarray([[1, 1, 2, 2, 1, 0, 0], [4, 4, 4, 4, 4, 4, 4]], jnp.int32)
  np.testing.assert_array_equal(reference.reset_flags(seg),
                                [[0, 0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("backend", ["xla_chunked", "xla_recurrent", "interpret",
                                     "interpret_gpu"])
def test_one_segment_is_exactly_the_unsegmented_result(backend):
  """All-equal ids change nothing: o, final and chunk states bit for bit, plain and gated.
  (The segment path multiplies by masks that are all 1.0, which is exact. Its gradients are
  checked against the recurrence above; bit for bit they may differ by an ulp, because the
  differentiated graph differs and XLA may add cotangent contributions in another order.)"""
  B, T, H, K, V, C = 1, 20, 1, 16, 16, 16
  x = _inputs(B, T, H, K, V, gated=True, seed=4)
  seg = jnp.full((B, T), 7, jnp.int32)

  @jax.jit
  def run(x):
    out = []
    for g in (None, x["g"]):
      for kw in ({}, dict(segment_ids=seg)):
        out.append(pk.delta_rule_scan(x["q"], x["k"], x["v"], x["beta"], g,
                                      initial_state=x["S0"], chunk_size=C, backend=backend,
                                      return_chunk_states=True, **kw))
    return out

  plain, plain_seg, gated, gated_seg = run(x)
  for a, b in ((plain_seg, plain), (gated_seg, gated)):
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)


def test_public_entries_pass_segment_ids(monkeypatch):
  calls = []

  def scan(*a, **kw):
    calls.append(kw.get("segment_ids"))
    return a[2], None, None

  monkeypatch.setattr(pk.ops, "delta_rule_scan", scan)
  x = _inputs(2, 24, 2, 8, 8, gated=True)
  seg = jnp.asarray(_layout(24, 8))
  pk.gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], segment_ids=seg)
  pk.delta_rule(x["q"], x["k"], x["v"], x["beta"], segment_ids=seg)
  pk.delta_rule(x["q"], x["k"], x["v"], x["beta"])
  assert calls[0] is seg and calls[1] is seg and calls[2] is None


@pytest.mark.parametrize("backend", ["xla_chunked", "interpret_gpu"])
def test_one_token_call_ignores_segment_ids(backend):
  x = _inputs(2, 1, 2, 16, 16, gated=True)
  args = (x["q"], x["k"], x["v"], x["beta"], x["g"])
  a = pk.delta_rule_scan(*args, initial_state=x["S0"], backend=backend,
                         segment_ids=jnp.asarray([[0], [3]], jnp.int32))
  b = pk.delta_rule_scan(*args, initial_state=x["S0"], backend=backend)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("backend,gated", [("xla_chunked", False), ("xla_chunked", True),
                                           ("xla_recurrent", True)])
def test_advance_state_with_segments_matches_recurrence(backend, gated):
  """A 20-token window (three 8-chunks): the state continues in the window's first document;
  documents start mid-chunk, at a chunk boundary (8) and as a single token (17); the mask
  keeps positions <= 18 (a masked token's reset is dropped with it)."""
  B, L, H, K, V = 2, 20, 2, 8, 16
  x = _inputs(B, L, H, K, V, gated, seed=2)
  seg = np.ones((B, L), np.int32)
  seg[0, 5:8], seg[0, 8:17], seg[0, 17], seg[0, 18:] = 2, 3, 4, 5
  seg[1, 8:], seg[1, 19] = 2, 3          # row 1: the masked last token would start a doc
  keep = 19
  mask = (jnp.arange(L) < keep)[None].repeat(B, 0).astype(jnp.float32)
  w = jnp.asarray(np.random.default_rng(3).standard_normal((B, H, K, V)), jnp.float32)
  names = ["S0", "k", "v", "beta"] + (["g"] if gated else [])

  def truth(x):
    _, where, st = _per_document(dict(x, q=jnp.zeros_like(x["k"])), seg, end=keep)
    S = jnp.stack([st[where[(b, keep - 1)]] for b in range(B)])
    return jnp.sum(S * w), S

  def ours(x):
    S = pk.advance_state(x["S0"], x["k"], x["v"], x["beta"], x.get("g"), mask, chunk_size=8,
                         backend=backend, segment_ids=jnp.asarray(seg))
    return jnp.sum(S * w), S

  xs = {n: x[n] for n in names}
  (_, want), gw = jax.jit(jax.value_and_grad(truth, has_aux=True))(xs)
  (_, got), gg = jax.jit(jax.value_and_grad(ours, has_aux=True))(xs)
  errs = {"state": _rel(got, want)}
  errs.update({"d" + n: _rel(gg[n], gw[n]) for n in names})
  print(backend, "gated" if gated else "plain", "max rel err", max(errs.values()), errs)
  assert max(errs.values()) < F32_TOL, errs


@pytest.mark.parametrize("bad,match", [
    (jnp.zeros((2, 24), jnp.float32), "integer"),
    (jnp.zeros((2, 23), jnp.int32), r"\(2, 23\)"),
    (jnp.zeros((24,), jnp.int32), "must be"),
    ([[1] * 24] * 2, "integer array"),
])
def test_bad_segment_ids_raise_one_clear_error(bad, match):
  x = _inputs(2, 24, 2, 8, 8, gated=False)
  with pytest.raises(ValueError, match=match):
    pk.delta_rule_scan(x["q"], x["k"], x["v"], x["beta"], segment_ids=bad)
  with pytest.raises(ValueError, match="segment_ids"):
    pk.delta_rule(x["q"], x["k"], x["v"], x["beta"], segment_ids=bad)
  with pytest.raises(ValueError, match="segment_ids"):
    pk.advance_state(x["S0"], x["k"], x["v"], x["beta"], segment_ids=bad)
