"""The language model: embeddings -> blocks -> final RMSNorm -> lm_head, plus caches.

Mirrors FLA's `{DeltaNet,GatedDeltaNet}ForCausalLM` (fla 0.5/0.6). Attribute names follow
FLA's state-dict keys (interop/hf_weights.py maps them, with the torch transposes):
  model.embeddings.weight            -> embeddings.embedding
  model.layers.{i}.attn_norm.weight  -> layers[i].attn_norm.weight
  model.layers.{i}.attn.*            -> layers[i].attn.*   (see deltanet.py)
  model.layers.{i}.mlp_norm.weight   -> layers[i].mlp_norm.weight
  model.layers.{i}.mlp.{gate,up,down}_proj.weight -> layers[i].mlp.*.kernel
  model.norm.weight                  -> norm.weight
  lm_head.weight                     -> lm_head.kernel
A cache is a tuple with one mixer cache per layer.

Scanned layers (model.scan_layers, the default for a stack of one mixer kind): the blocks'
params are stacked on a leading "layers" axis ([L, ...] under `layers.*`, no layer index in
the path) and the forward pass is one `lax.scan` over them, so compile time and program size
stay flat in depth (MaxText's scan_layers). `model.remat` rematerialises each block inside
the scan with a named policy (REMAT_POLICIES), cached decode steps included (ReFINE
differentiates through its rollouts). Caches stay a tuple of per-layer caches (they
are stacked/unstacked around the scan); `captured` is stacked ([L, ...] leaves) and only
`cache_at` reads it. FLA names and `per_layer_params` see one entry per layer either way.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from refine_jax.models import attention, lact, layers
from refine_jax.models.config import REMAT_CHOICES, layer_kinds, remat_mode, validate
from refine_jax.models.deltanet import DeltaNet, GatedDeltaNet

# model.remat -> jax.checkpoint policy applied per block (None: save only the block input).
REMAT_POLICIES = {
    "full": None,                                                   # recompute everything
    "dots": jax.checkpoint_policies.checkpoint_dots,                # keep every matmul output
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight matmuls
}
assert set(REMAT_POLICIES) == set(REMAT_CHOICES) - {"none"}


def _remat(fn, mode: str, *, in_scan: bool):
  """fn under jax.checkpoint with model.remat's policy. prevent_cse=False only for a lax.scan
  body (the scan already keeps XLA from CSE-ing the recomputation into the forward pass, and the
  optimisation barrier would cost); an unrolled block needs the barrier, or XLA's CSE merges
  the backward's recomputation with the forward values and the remat saves nothing."""
  if mode == "none":
    return fn
  return jax.checkpoint(fn, policy=REMAT_POLICIES[mode], prevent_cse=not in_scan)


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, n: int):
  return tuple(jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n))


def stack_blocks(blocks):
  """One Block whose params carry a leading layer axis (logical name "layers")."""
  graphdef, first = nnx.split(blocks[0])
  stacked = _stack([first] + [nnx.split(b)[1] for b in blocks[1:]])
  for _, var in nnx.to_flat_state(stacked):
    names = var.get_metadata().get("out_sharding")
    if names is not None:
      var.set_metadata(out_sharding=("layers",) + tuple(names))
  return nnx.merge(graphdef, stacked)


class LMOutput(NamedTuple):
  logits: jax.Array          # [B, T, vocab] float32
  hidden_states: jax.Array   # [B, T, D] after the final norm, float32
  cache: Any                 # tuple of per-layer caches, or None
  captured: Any              # tuple of per-layer captures (capture=True), or None
  branch_logits: Any = None  # [G, m, vocab] float32 of branch_tokens, or None


MIXERS = {"deltanet": DeltaNet, "gated_deltanet": GatedDeltaNet,
          "attention": attention.Attention, "lact": lact.LaCT}


def mixer_class(kind: str):
  """The token-mixer class of a layer kind."""
  if kind not in MIXERS:
    raise ValueError(f"unknown mixer kind {kind!r}; use one of {sorted(MIXERS)}")
  return MIXERS[kind]


class Block(nnx.Module):
  """h += Mixer(RMSNorm(h)); h += MLP(RMSNorm(h))."""

  def __init__(self, cfg, layer_idx: int, kind: str, *, rngs: nnx.Rngs):
    dt = layers.compute_dtype(cfg.dtype)
    self.attn_norm = layers.RMSNorm(cfg.hidden, eps=cfg.norm_eps, rngs=rngs)
    self.attn = mixer_class(kind)(cfg, layer_idx, rngs=rngs)
    self.mlp_norm = layers.RMSNorm(cfg.hidden, eps=cfg.norm_eps, rngs=rngs)
    width = layers.mlp_width(cfg.hidden, cfg.hidden_ratio, cfg.intermediate_size)
    self.mlp = layers.GatedMLP(cfg.hidden, width, std=cfg.initializer_range, dtype=dt, rngs=rngs)

  def __call__(self, h_BTD, cache=None, *, segment_ids=None, capture=False, capture_at=None,
               capture_stride=None):
    y, cache, captured = self.attn(self.attn_norm(h_BTD), cache, segment_ids=segment_ids,
                                   capture=capture, capture_at=capture_at,
                                   capture_stride=capture_stride)
    h_BTD = h_BTD + y.astype(h_BTD.dtype)
    h_BTD = h_BTD + self.mlp(self.mlp_norm(h_BTD)).astype(h_BTD.dtype)
    return h_BTD, cache, captured

  def branch(self, hb_GmD, captured, positions_Bn, max_len: int):
    """The branch stream [G, m, D] through this block: m tokens after each position, fed from
    this layer's cache there (cut from its capture, each position's rows G / (B*n) times), in
    one call where the mixer takes several tokens from a cache, else token by token. The
    caches live inside the layer only."""
    cache = self.attn.cache_at(captured, positions_Bn, max_len)
    rep = hb_GmD.shape[0] // (positions_Bn.shape[0] * positions_Bn.shape[1])
    cache = jax.tree.map(lambda x: jnp.repeat(x, rep, axis=0), cache)
    if self.attn.multi_token_decode:
      return self(hb_GmD, cache)[0]

    def step(cache, h_GD):
      h, cache, _ = self(h_GD[:, None], cache)
      return cache, h[:, 0]
    _, h_mGD = jax.lax.scan(step, cache, jnp.moveaxis(hb_GmD, 1, 0))
    return jnp.moveaxis(h_mGD, 0, 1)


class LM(nnx.Module):
  """Causal LM over any mix of mixers (config `model.arch` + `model.attn_layers`)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    validate(cfg)
    self.tie_word_embeddings = bool(cfg.tie_word_embeddings)
    self.dtype = layers.compute_dtype(cfg.dtype)
    # LM head dtype (model.logits_dtype): float32 by default, so RL log-probs / entropies / NTP
    # see unrounded logits; "model" = model.dtype.
    self.head_dtype = (self.dtype if cfg.logits_dtype == "model"
                       else jnp.dtype(jnp.float32))
    self.remat = remat_mode(cfg.remat)
    self.kinds = tuple(layer_kinds(cfg))
    # Hybrids (several mixer kinds) keep the unrolled loop: their blocks differ in structure.
    self.scan = bool(cfg.scan_layers) and len(set(self.kinds)) == 1
    self.num_layers = len(self.kinds)
    # Whether every mixer takes T tokens from a cache in one call at T decode steps' cost.
    self.multi_token_decode = all(mixer_class(k).multi_token_decode for k in set(self.kinds))
    std = cfg.initializer_range
    self.embeddings = nnx.Embed(
        cfg.vocab_size, cfg.hidden, dtype=jnp.float32, param_dtype=jnp.float32,
        embedding_init=layers.partitioned(layers.normal_init(std), ("vocab", "embed")),
        rngs=rngs)
    # Built layer by layer either way, so a scanned model has the unrolled one's init values.
    blocks = [Block(cfg, i, kind, rngs=rngs) for i, kind in enumerate(self.kinds)]
    self.layers = stack_blocks(blocks) if self.scan else nnx.List(blocks)
    self.norm = layers.RMSNorm(cfg.hidden, eps=cfg.norm_eps, rngs=rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = layers.linear(cfg.hidden, cfg.vocab_size, ("embed", "vocab"), std=std,
                                   dtype=self.head_dtype, rngs=rngs)

  def __call__(self, input_ids_BT, cache=None, *, segment_ids=None, capture=False,
               capture_at=None, capture_stride=None, branch_tokens=None) -> LMOutput:
    """segment_ids [B, T] int32 (packed rows, data/pipeline.py; no cache): a new document
    starts at every token whose id differs from the previous token's, and every mixer resets
    there (models/segments.py), so each document's logits are those of the document alone.
    None: one document per row (bit for bit the behaviour without segments).
    capture=True: `captured` holds what cache_at needs for any position. capture_at=[B, n]
    positions (implies capture): fast-weight mixers keep only those positions' pieces (a
    boundary state and one chunk per position instead of every chunk's state and the whole
    sequence's inputs); cache_at must then be asked for the same positions.
    capture_stride=S (with capture=True): fast-weight mixers keep every S-th chunk-boundary
    state and their input instead of every state and their k/v/conv inputs; cache_at then
    recomputes the features of the S-chunk window holding a position (less memory, a few
    FLOPs more).
    Attention and LaCT mixers capture everything either way.
    branch_tokens [G, m] (with capture_at [B, n], G a multiple of B*n): also score m tokens
    after each position (rows (b*n + i)*G/(B*n) + j continue position [b, i]), fed layer by
    layer from that layer's cache there (Block.branch): `branch_logits` [G, m, V] equal
    cache_at + feeding the tokens, without ever holding every layer's caches (under a
    gradient those are a copy per layer and token). `captured` is then None."""
    if capture_stride is not None and int(capture_stride) < 1:
      raise ValueError(f"capture_stride={capture_stride} must be >= 1 (chunks per kept state)")
    if capture_at is not None:
      capture_at = jnp.asarray(capture_at, jnp.int32)
      if capture_at.ndim != 2 or capture_at.shape[0] != input_ids_BT.shape[0]:
        raise ValueError(f"capture_at must be [batch, n] positions; got shape "
                         f"{capture_at.shape} for input_ids {input_ids_BT.shape}")
      capture = True
    if input_ids_BT.ndim != 2:
      raise ValueError(f"input_ids must be [batch, time]; got shape {input_ids_BT.shape}")
    L = self.num_layers
    if cache is not None and len(cache) != L:
      raise ValueError(f"cache has {len(cache)} layers, the model {L}")
    if capture and cache is not None:
      raise ValueError("capture=True needs a full-sequence forward without a cache")
    if segment_ids is not None:
      if cache is not None:
        raise ValueError("segment_ids is for a full-sequence forward (no cache); decoding "
                         "from a cache continues one document")
      if tuple(segment_ids.shape) != tuple(input_ids_BT.shape):
        raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, input_ids "
                         f"{tuple(input_ids_BT.shape)}")
      segment_ids = jnp.asarray(segment_ids, jnp.int32)
    hb, max_len = None, None
    if branch_tokens is not None:
      branch_tokens = jnp.asarray(branch_tokens, jnp.int32)
      if capture_at is None or branch_tokens.ndim != 2 or (
          branch_tokens.shape[0] % (capture_at.shape[0] * capture_at.shape[1])):
        raise ValueError(f"branch_tokens must be [G, m] with capture_at [B, n] positions and G "
                         f"a multiple of B*n; got {branch_tokens.shape} and "
                         f"{None if capture_at is None else capture_at.shape}")
      hb = self.embeddings(branch_tokens)
      max_len = input_ids_BT.shape[1] + branch_tokens.shape[1]
    # The residual stream stays float32; mixers and MLPs compute in model.dtype.
    h = self.embeddings(input_ids_BT)
    # Also with a cache: ReFINE differentiates its rollout decode steps, and a LaCT step keeps
    # its (cond-selected) chunk update's intermediates for backward unless rematerialised.
    mode = self.remat
    run = functools.partial(self._run_block, capture=capture, segment_ids=segment_ids,
                            capture_at=capture_at, stride=capture_stride, max_len=max_len)
    if self.scan:
      graphdef, state = nnx.split(self.layers)

      def body(carry, xs):  # all blocks as one lax.scan over the stacked params (and caches)
        (h, hb), c, cap = run(nnx.merge(graphdef, xs[0]), carry, xs[1])
        return (h, hb), (c, cap)

      stacked = None if cache is None else _stack(cache)
      (h, hb), (new_cache, captured) = jax.lax.scan(_remat(body, mode, in_scan=True), (h, hb),
                                                    (state, stacked))
      new_cache = None if cache is None else _unstack(new_cache, L)
    else:
      new_cache, captured = [], []
      for i, block in enumerate(self.layers):
        graphdef, state = nnx.split(block)
        fn = _remat(lambda st, hh, c: run(nnx.merge(graphdef, st), hh, c), mode, in_scan=False)
        (h, hb), c, cap = fn(state, (h, hb), None if cache is None else cache[i])
        new_cache.append(c)
        captured.append(cap)
      captured = tuple(captured)
    logits, h = self._head(h)
    return LMOutput(logits=logits, hidden_states=h,
                    cache=None if cache is None else tuple(new_cache),
                    captured=captured if capture and hb is None else None,
                    branch_logits=None if hb is None else self._head(hb)[0])

  @staticmethod
  def _run_block(block, hh, cache_i, *, capture, segment_ids, capture_at, stride, max_len):
    """One block on the main stream (and the branch stream, which takes its capture)."""
    h, hb = hh
    h, c, cap = block(h, cache_i, segment_ids=segment_ids, capture=capture,
                      capture_at=capture_at, capture_stride=stride)
    if hb is not None:
      hb, cap = block.branch(hb, cap, capture_at, max_len), None
    return (h, hb), c, cap

  def _head(self, h):
    """(logits float32, final-norm hidden states float32)."""
    h = self.norm(h)
    if self.tie_word_embeddings:
      # Embed computes in float32; logits_dtype="model" rounds h to model.dtype first (as before).
      logits = self.embeddings.attend(h.astype(self.head_dtype))
    else:
      logits = self.lm_head(h)
    return logits.astype(jnp.float32), h.astype(jnp.float32)

  def blocks(self):
    """The blocks as per-layer modules (views of the stacked params when scanned)."""
    if not self.scan:
      return list(self.layers)
    graphdef, state = nnx.split(self.layers)
    return [nnx.merge(graphdef, s) for s in _unstack(state, self.num_layers)]

  def init_cache(self, batch: int, max_len: int):
    """Empty cache for `batch` sequences of up to `max_len` tokens (attention KV buffers)."""
    return tuple(b.attn.init_cache(batch, max_len) for b in self.blocks())

  def cache_at(self, captured, positions_Bn, max_len: int):
    """Caches after tokens[b, :positions[b, i] + 1] for batch B*n (row b*n + i).

    `captured` comes from `model(tokens, capture=True)`; positions must lie in [0, T) (not
    checked under jit: indices are clamped). No re-run of the prefix. A capture with
    segment_ids gives the cache of the position's document alone (as if that document had
    been run by itself up to the position; positions counted from its start).
    """
    if captured is None or (not self.scan and len(captured) != self.num_layers):
      raise ValueError("cache_at needs the `captured` of model(tokens, capture=True)")
    if positions_Bn.ndim != 2:
      raise ValueError(f"positions must be [batch, n]; got shape {positions_Bn.shape}")
    if not self.scan:
      return tuple(b.attn.cache_at(cap, positions_Bn, max_len)
                   for b, cap in zip(self.layers, captured))
    graphdef, state = nnx.split(self.layers)

    def body(_, xs):
      state_i, cap_i = xs
      return None, nnx.merge(graphdef, state_i).attn.cache_at(cap_i, positions_Bn, max_len)

    _, caches = jax.lax.scan(body, None, (state, captured))
    return _unstack(caches, self.num_layers)


def build_model(model_cfg, *, rngs: nnx.Rngs) -> LM:
  """The LM for a `model.*` config (see config.default_model_config)."""
  return LM(model_cfg, rngs=rngs)


def param_count(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ---- Per-layer param views: names and file formats never depend on scan_layers.

def is_stacked(path) -> bool:
  """A scanned model's param: under `layers` with no layer index, leading axis = layer."""
  return len(path) > 1 and str(path[0]) == "layers" and not str(path[1]).isdigit()


def _layer_slice(value, i):
  if isinstance(value, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
  return value[i]


def per_layer_params(items):
  """[(path, value)] with stacked params split into one ("layers", i, ...) entry per layer,
  the paths of the unrolled model, so names and file formats do not depend on scan_layers."""
  out = []
  for path, value in items:
    path = tuple(path)
    if is_stacked(path):
      out += [(("layers", i) + path[1:], _layer_slice(value, i)) for i in range(value.shape[0])]
    else:
      out.append((path, value))
  return out


def stacked_value(path, per_layer: dict, num_layers: int):
  """The value of (possibly stacked) param `path` from per-layer entries {path: array}."""
  path = tuple(path)
  if not is_stacked(path):
    return per_layer[path]
  return np.stack([np.asarray(per_layer[("layers", i) + path[1:]]) for i in range(num_layers)])
