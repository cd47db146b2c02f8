"""Entry from pallas_kernels.ops into the Pallas kernels: checks, padding, custom_vjp.

`pallas_delta_rule` runs the chunked (gated) delta rule with the GPU (Triton) or TPU (Mosaic)
kernels, forward and backward. `unsupported_reason` says, without tracing anything, whether
a kernel takes a shape; ops falls back to the XLA path on a reason.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import pallas_math as pm
from pallas_kernels import reference

f32 = jnp.float32
_DTYPES = ("float32", "bfloat16")


def unsupported_reason(q_shape, v_shape, dtype, chunk_size, target):
  """None if the `target` ("gpu" | "tpu") kernel takes these shapes, else why not."""
  if target not in ("gpu", "tpu"):
    return f"target must be 'gpu' or 'tpu', got {target!r}"
  if len(q_shape) != 4 or len(v_shape) != 4:
    return f"q and v must be [B, T, H, K] / [B, T, H, V]; got {q_shape} and {v_shape}"
  B, T, H, K = q_shape
  if tuple(v_shape[:3]) != (B, T, H):
    return (f"v {v_shape} must share B, T, H with q {q_shape} (expand q/k heads to the "
            "value heads before calling)")
  V = v_shape[3]
  if jnp.dtype(dtype).name not in _DTYPES:
    return (f"dtype {jnp.dtype(dtype).name} not supported; cast q/k/v/beta/g to one of "
            f"{_DTYPES}")
  if T < 1:
    return "T must be >= 1"
  C = chunk_size
  if target == "gpu":
    # Triton dots need every dim >= 16 and power-of-two block shapes; the state block and the
    # per-chunk temporaries live in registers, so K and V are capped.
    if not (pm.pow2(C) and 16 <= C <= 128):
      return f"chunk_size={C}: the GPU kernel needs a power of two in [16, 128]"
    for name, d in (("K", K), ("V", V)):
      if not (pm.pow2(d) and 16 <= d <= 256):
        return f"{name}={d}: the GPU kernel needs a power of two in [16, 256]"
    if jnp.dtype(dtype) == jnp.float32 and max(K, V) > 64:
      # float32 dot operands: the backward needs ~290 KB of shared memory at K=V=128 (sm_90
      # blocks get 227 KB; benchmarks/triton_compile_check.py)
      return (f"float32 inputs with K={K}, V={V}: the GPU kernel takes float32 only for "
              "K, V <= 64; cast q/k/v/beta/g to bfloat16 for larger heads")
  else:
    # Mosaic blocks: second-minor dims multiples of 8; the whole K x V state sits in VMEM.
    if C % 8 or not 8 <= C <= 256:
      return f"chunk_size={C}: the TPU kernel needs a multiple of 8 in [8, 256]"
    for name, d in (("K", K), ("V", V)):
      if d % 8 or d > 1024:
        return f"{name}={d}: the TPU kernel needs a multiple of 8, at most 1024"
    # VMEM limits found by the Mosaic compiler for v4, v5e, v5p, v6e, v7x (16 MiB of scoped
    # VMEM on the first three; benchmarks/tpu_compile_check.py --sweep).
    if jnp.dtype(dtype) == jnp.float32 and K > 512:
      return (f"float32 inputs with K={K}: the TPU kernel takes float32 only for K <= 512; "
              "cast q/k/v/beta/g to bfloat16")
    if K * V > 256 * 256 and V % 128:
      return (f"K={K}, V={V}: a K x V state this large must be split into 128-wide V-blocks; "
              "use V a multiple of 128")
  return None


class _Opts(NamedTuple):   # static (hashable) kernel options
  target: str
  scale: float
  chunk_size: int
  interpret: bool
  return_chunk_states: bool
  block_v: int | None


def _backend(target):
  if target == "gpu":
    from pallas_kernels import pallas_gpu
    return pallas_gpu
  from pallas_kernels import pallas_tpu
  return pallas_tpu


def _fwd_call(q, k, v, beta, g, S0, reset, opts, store_cs):
  kw = {} if reset is None else dict(reset=reset)   # the no-segment call exactly as before
  return _backend(opts.target).fwd(q, k, v, beta, g, S0, scale=opts.scale,
                                   chunk_size=opts.chunk_size, interpret=opts.interpret,
                                   block_v=opts.block_v, store_chunk_states=store_cs, **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _core(q, k, v, beta, g, S0, reset, opts):
  # Not differentiated: chunk states are written only when asked for (saves HBM traffic).
  o, ST, cs = _fwd_call(q, k, v, beta, g, S0, reset, opts, opts.return_chunk_states)
  return (o, ST, cs) if opts.return_chunk_states else (o, ST)


def _core_fwd(q, k, v, beta, g, S0, reset, opts):
  o, ST, cs = _fwd_call(q, k, v, beta, g, S0, reset, opts, True)
  out = (o, ST, cs) if opts.return_chunk_states else (o, ST)
  # Chunk-boundary states are the only saved activations; the backward recomputes
  # everything inside a chunk from them.
  return out, (q, k, v, beta, g, cs, reset)


def _core_bwd(opts, res, cts):
  q, k, v, beta, g, cs, reset = res
  do, dST = cts[0], cts[1]
  dcs = cts[2] if opts.return_chunk_states else None
  kw = {} if reset is None else dict(reset=reset)
  dq, dk, dv, dbeta, dg, dS0 = _backend(opts.target).bwd(
      q, k, v, beta, g, cs, do, dST, dcs, scale=opts.scale, chunk_size=opts.chunk_size,
      interpret=opts.interpret, block_v=opts.block_v, **kw)
  # reset flags come from integer segment ids: no cotangent (None = zeros)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          dbeta.astype(beta.dtype), None if g is None else dg.astype(g.dtype), dS0, None)


_core.defvjp(_core_fwd, _core_bwd)


def pallas_delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None,
                      chunk_size=64, target="gpu", interpret=False,
                      return_chunk_states=False, block_v=None, segment_ids=None):
  """Chunked (gated) delta rule with Pallas kernels, differentiable.

  q, k [B,T,H,K]; v [B,T,H,V]; beta, g [B,T,H] (g None: plain DeltaNet); initial_state
  [B,H,K,V] or None (zeros); segment_ids [B,T] int or None: documents packed back to back
  (the state is zeroed before a token whose id differs from the previous token's;
  reference.reset_flags). Returns (o [B,T,H,V] in v.dtype, final_state [B,H,K,V] f32,
  chunk_states [B,N,H,K,V] f32 (state before each chunk) or None).
  """
  reason = unsupported_reason(q.shape, v.shape, q.dtype, chunk_size, target)
  if reason is not None:
    raise ValueError(f"pallas_delta_rule ({target}): {reason}")
  if k.shape != q.shape or beta.shape != q.shape[:3] or (g is not None and g.shape != q.shape[:3]):
    raise ValueError(f"shapes: q {q.shape} k {k.shape} beta {beta.shape} "
                     f"g {None if g is None else g.shape}; need k = q and beta/g = q[:3]")
  B, T, H, K = q.shape
  V = v.shape[-1]
  scale = K ** -0.5 if scale is None else float(scale)
  S0 = jnp.zeros((B, H, K, V), f32) if initial_state is None else initial_state.astype(f32)
  if S0.shape != (B, H, K, V):
    raise ValueError(f"initial_state {S0.shape} must be [B, H, K, V] = {(B, H, K, V)}")
  if segment_ids is not None and tuple(segment_ids.shape) != (B, T):
    raise ValueError(f"segment_ids {tuple(segment_ids.shape)} must be [B, T] = {(B, T)}")
  reset = None if segment_ids is None else reference.reset_flags(segment_ids)
  C = chunk_size
  pad = -T % C
  if pad:  # beta = 0, g = 0 and no-reset tokens leave the state unchanged: exact no-ops
    padT = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q, k, v, beta = padT(q), padT(k), padT(v), padT(beta)
    g = None if g is None else padT(g)
    reset = None if reset is None else padT(reset)
  opts = _Opts(target, scale, C, bool(interpret), bool(return_chunk_states), block_v)
  out = _core(q, k, v, beta, g, S0, reset, opts)
  o = out[0][:, :T] if pad else out[0]
  return o, out[1], (out[2] if return_chunk_states else None)
