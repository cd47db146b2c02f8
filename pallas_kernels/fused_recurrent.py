"""Fused token-by-token (gated) delta rule: one kernel per call, state on chip (decoding).

`fused_recurrent(q, k, v, beta, g, initial_state, *, scale, target, interpret)` computes
exactly `reference.recurrent` (layout and semantics of `pallas_kernels.delta_rule`) for small
T; `ops.delta_rule_scan` runs it for every T == 1 call on a Pallas backend (a decode step).
Per token
  S <- exp(g) S;  S <- S + beta k (v - S^T k)^T;  o = scale S^T q.
The step is memory bound (about 8 flops per float32 state entry). The XLA path reads and
writes the state from HBM in several ops; the kernels read it once, keep it on chip across
the T tokens and write it once (in place: `input_output_aliases`). Pallas is imported only
when a kernel runs, so importing this module stays cheap.

Gradients (custom_vjp) recompute the recurrence in plain JAX (jax.vjp of reference.recurrent):
the step is tiny and memory bound, T is small, and rollouts differentiate it once per update
while decode-only generation never does, so a hand-written backward kernel would not pay.

In-place state: the kernels alias the state input to the state output. Inside jit (a
lax.scan over decode steps, a donated cache) XLA updates the buffer in place; a caller's
non-donated top-level array is copied first by XLA (correct, one extra state copy). The
differentiated call does not alias (the backward keeps the initial state as a residual).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import pallas_math as pm
from pallas_kernels import reference

f32 = jnp.float32

# GPU launch settings (benchmarks/decode_bench.py --tune overrides them). Small V-blocks give
# B*H*V/BV programs: enough bytes in flight to saturate HBM even at B*H = 128.
TUNING = dict(gpu_block_v=32, gpu_warps=4, gpu_stages=1)
TPU_MAX_T = 64   # the TPU kernel unrolls the tokens; longer inputs take the xla path


def unsupported_reason(q_shape, v_shape, dtypes, target):
  """None if the `target` ("gpu" | "tpu") kernel takes these shapes and dtypes, else why not.

  dtypes: the dtypes of every input (q, k, v, beta, g, initial_state)."""
  B, T, H, K = q_shape
  V = v_shape[-1]
  ok = ("float32", "bfloat16", "float16") if target == "gpu" else ("float32", "bfloat16")
  for dt in dtypes:
    if jnp.dtype(dt).name not in ok:
      return f"dtype {jnp.dtype(dt).name} not supported; cast the inputs to one of {ok}"
  if target == "gpu":
    # Triton tensors need power-of-two sizes; the K x BV state block lives in registers.
    if not (pm.pow2(K) and K <= 512):
      return f"K={K}: the GPU kernel needs a power of two <= 512"
    if not pm.pow2(V):
      return f"V={V}: the GPU kernel needs a power of two"
  elif target == "tpu":
    if K % 8 or K > 512:
      return f"K={K}: the TPU kernel needs a multiple of 8, at most 512"
    if V > 512 and V % 128:
      return f"V={V}: the TPU kernel needs V <= 512 or a multiple of 128"
    if T > TPU_MAX_T:
      return f"T={T}: the TPU kernel unrolls at most {TPU_MAX_T} tokens"
  else:
    return f"target must be 'gpu' or 'tpu', got {target!r}"
  return None


# ---------------------------------------------------------------------------------------------
# GPU kernel (Triton lowering): one program per (batch * head, V-block).


def _gpu_kernel(*refs, T, H, BV, scale, gated, has_s0):
  from jax.experimental import pallas as pl
  refs = list(refs)
  q_ref, k_ref, v_ref, b_ref = refs[:4]
  del refs[:4]
  g_ref = refs.pop(0) if gated else None
  s0_ref = refs.pop(0) if has_s0 else None
  o_ref, sT_ref = refs
  bh, iv = pl.program_id(0), pl.program_id(1)
  b, h = bh // H, bh % H
  vs = pl.ds(pl.multiple_of(iv * BV, BV), BV)
  K = q_ref.shape[-1]
  S0 = s0_ref[b, h, :, vs] if has_s0 else jnp.zeros((K, BV), f32)

  def body(t, S_KV):
    q_K = q_ref[b, t, h, :].astype(f32) * scale
    k_K = k_ref[b, t, h, :].astype(f32)
    v_V = v_ref[b, t, h, vs].astype(f32)
    beta = b_ref[b, t, h].astype(f32)
    if gated:
      S_KV = S_KV * jnp.exp(g_ref[b, t, h].astype(f32))
    pred_V = jnp.sum(k_K[:, None] * S_KV, axis=0)
    S_KV = S_KV + k_K[:, None] * (beta * (v_V - pred_V))[None, :]
    o_ref[b, t, h, vs] = jnp.sum(q_K[:, None] * S_KV, axis=0).astype(o_ref.dtype)
    return S_KV

  sT_ref[b, h, :, vs] = jax.lax.fori_loop(0, T, body, S0)


def _gpu_call(q, k, v, beta, g, S0, *, scale, interpret, alias):
  from jax.experimental import pallas as pl
  B, T, H, K = q.shape
  V = v.shape[-1]
  BV = min(V, TUNING["gpu_block_v"], max(1, 8192 // K))   # state block <= 32 KiB of registers
  gated, has_s0 = g is not None, S0 is not None
  args = [q, k, v, beta] + ([g] if gated else []) + ([S0] if has_s0 else [])
  kernel = functools.partial(_gpu_kernel, T=T, H=H, BV=BV, scale=float(scale), gated=gated,
                             has_s0=has_s0)
  compiler_params = None
  if not interpret:
    from pallas_kernels import pallas_gpu
    compiler_params = pallas_gpu._compiler_params(TUNING["gpu_warps"], TUNING["gpu_stages"])
  return pl.pallas_call(
      kernel, grid=(B * H, V // BV), interpret=interpret, compiler_params=compiler_params,
      out_shape=(jax.ShapeDtypeStruct((B, T, H, V), v.dtype),
                 jax.ShapeDtypeStruct((B, H, K, V), f32)),
      input_output_aliases={len(args) - 1: 1} if (alias and has_s0) else {},
      name="fused_recurrent_gpu")(*args)


# ---------------------------------------------------------------------------------------------
# TPU kernel (Mosaic): grid (B, H, V-blocks), all parallel; the tokens are unrolled in-kernel.
#
# Blocks must tile (8, 128) or cover whole trailing dims. Per-token tensors are read as one
# (T, D) block per head: from [B, T, H*D] at column h when D and the block are multiples of
# 128 (a free reshape), else from [B, H, T, D] (heads moved ahead of time). beta / g are a
# [B, H, 1, T] row per head. A token's row is picked with an iota mask and a reduction, and
# turned into a column with pm.to_col (no vector slicing or transposes, as in pallas_math).
# T > 1 is padded to a multiple of 8 so no reduction runs over a partial sublane tile.


def _tpu_block_v(V):
  if V <= 512:
    return V
  return next(bv for bv in (512, 256, 128) if V % bv == 0)


class _Tok:
  """(T, BD) blocks of a [B, T, H, D] tensor; by_v: the block follows the V-block index."""

  def __init__(self, B, T, H, D, BD, by_v):
    from jax.experimental import pallas as pl
    from pallas_kernels.pallas_tpu import _SQ
    self.B, self.T, self.H, self.D = B, T, H, D
    self.flat = D % 128 == 0 and BD % 128 == 0
    nd = D // BD
    if self.flat:
      col = (lambda h, iv: h * nd + iv) if by_v else (lambda h, iv: h)
      self.spec = pl.BlockSpec((_SQ, T, BD), lambda b, h, iv: (b, 0, col(h, iv)))
    else:
      blk = (lambda iv: iv) if by_v else (lambda iv: 0)
      self.spec = pl.BlockSpec((_SQ, _SQ, T, BD), lambda b, h, iv: (b, h, 0, blk(iv)))

  def pack(self, x):
    return x.reshape(self.B, self.T, self.H * self.D) if self.flat else jnp.swapaxes(x, 1, 2)

  def shape(self):
    return (self.B, self.T, self.H * self.D) if self.flat else (self.B, self.H, self.T, self.D)

  def unpack(self, y):
    return y.reshape(self.B, self.T, self.H, self.D) if self.flat else jnp.swapaxes(y, 1, 2)


def _tpu_kernel(*refs, T, scale, gated, has_s0):
  refs = list(refs)
  q_ref, k_ref, v_ref, b_ref = refs[:4]
  del refs[:4]
  g_ref = refs.pop(0) if gated else None
  s0_ref = refs.pop(0) if has_s0 else None
  o_ref, sT_ref = refs
  K, BV = sT_ref.shape
  Tb = q_ref.shape[0]   # T rounded up to a multiple of 8 when T > 1
  q_TK = q_ref[...].astype(f32) * scale
  k_TK = k_ref[...].astype(f32)
  v_TV = v_ref[...].astype(f32)
  beta_1T = b_ref[...].astype(f32)
  g_1T = g_ref[...].astype(f32) if gated else None
  S_KV = s0_ref[...] if has_s0 else jnp.zeros((K, BV), f32)
  iota = lambda shape, d: jax.lax.broadcasted_iota(jnp.int32, shape, d)
  if T > 1:
    rK, rV, lane = iota((Tb, K), 0), iota((Tb, BV), 0), iota((1, Tb), 1)
    row = lambda x, r, t: jnp.sum(jnp.where(r == t, x, 0.0), axis=0, keepdims=True)
    scalar = lambda x, t: jnp.sum(jnp.where(lane == t, x, 0.0), axis=1, keepdims=True)
  else:
    row = lambda x, r, t: x
    scalar = lambda x, t: x
    rK = rV = None
  o_TV = jnp.zeros((Tb, BV), f32)
  for t in range(T):   # T is small (<= TPU_MAX_T): unrolled, static masks
    q_K1 = pm.to_col(row(q_TK, rK, t))
    k_K1 = pm.to_col(row(k_TK, rK, t))
    if gated:
      S_KV = S_KV * jnp.exp(scalar(g_1T, t))
    pred_1V = jnp.sum(k_K1 * S_KV, axis=0, keepdims=True)
    delta_1V = scalar(beta_1T, t) * (row(v_TV, rV, t) - pred_1V)
    S_KV = S_KV + k_K1 * delta_1V
    o_1V = jnp.sum(q_K1 * S_KV, axis=0, keepdims=True)
    o_TV = o_1V if T == 1 else jnp.where(rV == t, o_1V, o_TV)
  o_ref[...] = o_TV.astype(o_ref.dtype)
  sT_ref[...] = S_KV


def _tpu_call(q, k, v, beta, g, S0, *, scale, interpret, alias):
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import tpu as pltpu
  from pallas_kernels.pallas_tpu import _SQ
  B, T0, H, K = q.shape
  V = v.shape[-1]
  pad = -T0 % 8 if T0 > 1 else 0
  if pad:  # padded tokens come after the real ones: never read into the state or o[:, :T0]
    padT = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q, k, v, beta = padT(q), padT(k), padT(v), padT(beta)
    g = None if g is None else padT(g)
  T = T0 + pad
  BV = _tpu_block_v(V)
  gated, has_s0 = g is not None, S0 is not None
  tk, tv = _Tok(B, T, H, K, K, by_v=False), _Tok(B, T, H, V, BV, by_v=True)
  sc = pl.BlockSpec((_SQ, _SQ, 1, T), lambda b, h, iv: (b, h, 0, 0))
  state = pl.BlockSpec((_SQ, _SQ, K, BV), lambda b, h, iv: (b, h, 0, iv))
  scalars = lambda x: jnp.swapaxes(x, 1, 2)[:, :, None, :]   # [B, T, H] -> [B, H, 1, T]
  args = ([tk.pack(q), tk.pack(k), tv.pack(v), scalars(beta)]
          + ([scalars(g)] if gated else []) + ([S0] if has_s0 else []))
  in_specs = [tk.spec, tk.spec, tv.spec, sc] + ([sc] if gated else []) + ([state] if has_s0 else [])
  if interpret:
    params = getattr(pltpu, "InterpretParams", None)
    kw = dict(interpret=params() if params is not None else True)
  else:
    kw = dict(compiler_params=pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel", "parallel")))
  kernel = functools.partial(_tpu_kernel, T=T0, scale=float(scale), gated=gated,
                             has_s0=has_s0)
  o, S = pl.pallas_call(
      kernel, grid=(B, H, V // BV), in_specs=in_specs, out_specs=(tv.spec, state),
      out_shape=(jax.ShapeDtypeStruct(tv.shape(), v.dtype),
                 jax.ShapeDtypeStruct((B, H, K, V), f32)),
      input_output_aliases={len(args) - 1: 1} if (alias and has_s0) else {},
      name="fused_recurrent_tpu", **kw)(*args)
  o = tv.unpack(o)
  return (o[:, :T0] if pad else o), S


# ---------------------------------------------------------------------------------------------
# custom_vjp around the kernels.


class _Opts(NamedTuple):   # static (hashable)
  target: str
  interpret: bool
  scale: float


def _kernel(q, k, v, beta, g, S0, opts, alias):
  call = _gpu_call if opts.target == "gpu" else _tpu_call
  S0 = None if S0 is None else S0.astype(f32)
  return call(q, k, v, beta, g, S0, scale=opts.scale, interpret=opts.interpret, alias=alias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _fused(q, k, v, beta, g, S0, opts):
  return _kernel(q, k, v, beta, g, S0, opts, alias=True)


def _fused_fwd(q, k, v, beta, g, S0, opts):
  # No aliasing: S0 stays alive as a residual, so XLA would copy it before an aliased call.
  return _kernel(q, k, v, beta, g, S0, opts, alias=False), (q, k, v, beta, g, S0)


def _fused_bwd(opts, res, cts):
  # Recompute in plain JAX: cheap for small T (see the module docstring).
  _, vjp = jax.vjp(lambda q, k, v, beta, g, S0: reference.recurrent(
      q, k, v, beta, g, scale=opts.scale, initial_state=S0), *res)
  return vjp(cts)


_fused.defvjp(_fused_fwd, _fused_bwd)


# ---------------------------------------------------------------------------------------------
# Entry (ops.delta_rule_scan checks the inputs and picks target / interpret).


def fused_recurrent(q, k, v, beta, g=None, initial_state=None, *, scale, target,
                    interpret=False):
  """The fused kernel on `target` ("gpu" | "tpu"); inputs as `reference.recurrent`.

  Returns (o [B,T,H,V] in v.dtype, final_state [B,H,K,V] float32). Differentiable in q, k,
  v, beta, g and initial_state. Shapes must pass `unsupported_reason` (not re-checked).
  """
  return _fused(q, k, v, beta, g, initial_state, _Opts(target, bool(interpret), float(scale)))
