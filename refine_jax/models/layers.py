"""Small building blocks shared by all mixers: initialisers, Linear, RMSNorm, short conv, MLP.

Parameter layouts vs. FLA / torch state dicts (the converter relies on these):
  Linear.kernel      [in, out]   = torch `weight` [out, in] transposed.
  Embed.embedding    [vocab, D]  = torch `weight` (same layout).
  RMSNorm.weight     [D]         = torch `weight`.
  ShortConv.kernel   [W, C]      = torch Conv1d `weight` [C, 1, W] as weight[:, 0, :].T.
Every parameter carries logical axis names (nnx.with_partitioning, eager_sharding off so the
model builds without a mesh); refine_jax.parallel maps them to mesh axes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple  # logical axis names, one per dim (None = replicated)


def partitioned(init, axes: Axes):
  """Initialiser that records logical axis names on the variable it creates."""
  return nnx.with_partitioning(init, axes, eager_sharding=False)


def normal_init(std: float):
  return nnx.initializers.normal(stddev=std)


def make_param(rngs: nnx.Rngs | None, init, shape, axes: Axes, dtype=jnp.float32) -> nnx.Param:
  """A Param built from `init(key, shape, dtype)` with logical axes `axes`."""
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(partitioned(init, axes)(key, shape, dtype))


def compute_dtype(name: str):
  """Model compute dtype from its config string ("float32", "bfloat16", "auto": bfloat16 on
  GPU/TPU, float32 on CPU)."""
  if name == "auto":
    return jnp.dtype(jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32)
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise ValueError(f"model.dtype={name!r} is not a dtype name; use 'float32' or 'bfloat16'") from e


def linear(d_in: int, d_out: int, axes: Axes, *, std: float, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """Bias-free Linear (FLA uses bias=False everywhere) with N(0, std) init."""
  return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=partitioned(normal_init(std), axes), rngs=rngs)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (as FLA's fused RMSNorm).

  `out_dtype=None` returns the input dtype.
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, axes: Axes = ("norm",), out_dtype=None,
               rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.out_dtype = out_dtype
    self.weight = make_param(rngs, nnx.initializers.ones_init(), (dim,), axes)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    y = y * self.weight[...]
    return y.astype(self.out_dtype or x.dtype)


class GatedRMSNorm(RMSNorm):
  """FLA's FusedRMSNormGated (swish): RMSNorm(x) * weight * silu(gate), in float32."""

  def __call__(self, x, gate):
    y = super().__call__(x.astype(jnp.float32))
    g = gate.astype(jnp.float32)
    return (y * g * jax.nn.sigmoid(g)).astype(self.out_dtype or x.dtype)


def l2_normalize(x, eps: float = 1e-6):
  """x / sqrt(sum(x^2) + eps) over the last axis (eps inside the root, as FLA's l2norm)."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class ShortConv(nnx.Module):
  """Depthwise causal conv, no bias: y[t, c] = sum_j kernel[j, c] * u[t - W + 1 + j, c].

  The cache holds the last W pre-conv inputs [B, W, C] (FLA keeps [B, C, W]); only the last
  W - 1 matter for the next token, the oldest is dropped when the window shifts.
  """

  def __init__(self, channels: int, width: int, *, activation: str | None, std: float,
               rngs: nnx.Rngs):
    if activation not in (None, "silu"):
      raise ValueError(f"ShortConv activation={activation!r}; use 'silu' or None")
    self.width = width
    self.activation = activation
    self.kernel = make_param(rngs, normal_init(std), (width, channels), ("conv", "heads"))

  def _act(self, y):
    return jax.nn.silu(y) if self.activation == "silu" else y

  def __call__(self, u_BTC, cache_BWC=None, doc_BT=None):
    """Returns (y [B,T,C], new cache [B,W,C]: the last W inputs incl. the cached ones).

    doc_BT (segments.doc_index, [B,T] int32): a window reads only inputs of its token's
    document (the others count as zeros, as before a fresh sequence); the cached inputs belong
    to the first token's document, and the new cache keeps only the last token's document.
    """
    B, T, C = u_BTC.shape
    W = self.width
    if cache_BWC is None:
      cache_BWC = jnp.zeros((B, W, C), u_BTC.dtype)
    # As FLA's causal_conv1d: float32 operands, sum and activation; the output in u's dtype.
    w_WC = self.kernel[...].astype(jnp.float32)
    full = jnp.concatenate([cache_BWC[:, 1:].astype(u_BTC.dtype), u_BTC], axis=1)  # [B,W-1+T,C]
    full = full.astype(jnp.float32)
    # Elementwise products (no dot: a TPU float32 dot would round operands to bf16) summed in
    # one order for every T, so a decode step (T = 1) rounds exactly as the full pass does.
    if doc_BT is not None:
      doc_full = jnp.concatenate([jnp.repeat(doc_BT[:, :1], W - 1, axis=1), doc_BT], axis=1)
      same = lambda j: (doc_full[:, j:j + T] == doc_BT)[..., None]
      y = sum(jnp.where(same(j), full[:, j:j + T], 0.0) * w_WC[j] for j in range(W))
    else:
      y = sum(full[:, j:j + T] * w_WC[j] for j in range(W))
    new_cache = jnp.concatenate([cache_BWC.astype(u_BTC.dtype), u_BTC], axis=1)[:, -W:]
    if doc_BT is not None:
      keep = (jnp.concatenate([jnp.repeat(doc_BT[:, :1], W, axis=1), doc_BT], axis=1)[:, -W:]
              == doc_BT[:, -1:])[..., None]
      new_cache = jnp.where(keep, new_cache, 0)
    return self._act(y).astype(u_BTC.dtype), new_cache


def mlp_width(hidden: int, hidden_ratio: int | None, intermediate_size: int | None) -> int:
  """FLA GatedMLP width: 256 * ceil(int(hidden * ratio * 2/3) / 256) unless given."""
  if intermediate_size:
    return int(intermediate_size)
  ratio = 4 if hidden_ratio is None else hidden_ratio
  width = int(hidden * ratio * 2 / 3)
  return 256 * ((width + 255) // 256)


class GatedMLP(nnx.Module):
  """SwiGLU MLP: down(silu(gate(x)) * up(x))."""

  def __init__(self, hidden: int, width: int, *, std: float, dtype, rngs: nnx.Rngs):
    self.gate_proj = linear(hidden, width, ("embed", "mlp"), std=std, dtype=dtype, rngs=rngs)
    self.up_proj = linear(hidden, width, ("embed", "mlp"), std=std, dtype=dtype, rngs=rngs)
    self.down_proj = linear(width, hidden, ("mlp", "embed"), std=std, dtype=dtype, rngs=rngs)

  def __call__(self, x_BTD):
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))
