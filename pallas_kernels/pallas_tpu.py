"""Chunked (gated) delta rule as Pallas kernels with the Mosaic lowering (TPU).

Grid (B, H, V-blocks, chunks); the chunk axis is last and "arbitrary", so one core walks a
head's chunks in order while the float32 state block (forward) or its cotangent (backward,
chunks visited in reverse by the index maps) stays in a VMEM scratch buffer. BlockSpecs
bring one chunk of q/k/v/beta/g into VMEM per step; the wrapper moves heads in front of time
([B, H, T, *]) so every block is a dense (C, K) tile. Per-chunk math: pallas_math.
Inputs are padded to T % C == 0 by pallas_entry.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import pallas_math as pm

f32 = jnp.float32


def _cfg(dtype):
  prec = (jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32
          else jax.lax.Precision.DEFAULT)
  return pm.MathCfg(precision=prec, explicit_transpose=False)


def _call_kwargs(interpret):
  sem = ("parallel", "parallel", "parallel", "arbitrary")
  if interpret:  # the TPU interpreter (also checks the blocks' memory accesses)
    return dict(interpret=pltpu.InterpretParams())
  return dict(compiler_params=pltpu.CompilerParams(dimension_semantics=sem))


def _block_v(V, block_v):
  BV = V if block_v is None else block_v
  if V % BV or (BV != V and BV % 128):
    raise ValueError(f"block_v={BV} must divide V={V} and be V or a multiple of 128.")
  return BV


def _heads_first(x):  # [B, T, H, *] -> [B, H, T, *]; beta/g [B, T, H] -> [B, H, T, 1]
  return jnp.swapaxes(x[..., None] if x.ndim == 3 else x, 1, 2)


def _fwd_kernel(*refs, N, scale, gated, store_cs, cfg):
  refs = list(refs)
  S_scr = refs.pop()
  cs_ref = refs.pop() if store_cs else None
  q_ref, k_ref, v_ref, b_ref = refs[:4]
  g_ref = refs[4] if gated else None
  s0_ref, o_ref, sT_ref = refs[-3:]
  n = pl.program_id(3)

  @pl.when(n == 0)
  def _():
    S_scr[...] = s0_ref[...]

  S_KV = S_scr[...]
  if store_cs:
    cs_ref[...] = S_KV
  q = q_ref[...].astype(f32) * scale
  g = None if g_ref is None else g_ref[...]
  o, S_KV = pm.chunk_fwd(q, k_ref[...], v_ref[...], b_ref[...], g, S_KV, cfg)
  o_ref[...] = o.astype(o_ref.dtype)
  S_scr[...] = S_KV

  @pl.when(n == N - 1)
  def _():
    sT_ref[...] = S_KV


def fwd(q, k, v, beta, g, S0, *, scale, chunk_size, interpret=False, block_v=None,
        store_chunk_states=True):
  """Returns (o [B,T,H,V] in v.dtype, final state [B,H,K,V] f32, chunk states [B,N,H,K,V] f32
  or None when not store_chunk_states). T must be a multiple of chunk_size (pallas_entry pads)."""
  B, T, H, K = q.shape
  V = v.shape[-1]
  C = chunk_size
  N = T // C
  BV = _block_v(V, block_v)
  gated = g is not None
  tok_k = pl.BlockSpec((None, None, C, K), lambda b, h, iv, n: (b, h, n, 0))
  tok_v = pl.BlockSpec((None, None, C, BV), lambda b, h, iv, n: (b, h, n, iv))
  tok_1 = pl.BlockSpec((None, None, C, 1), lambda b, h, iv, n: (b, h, n, 0))
  state = pl.BlockSpec((None, None, K, BV), lambda b, h, iv, n: (b, h, 0, iv))
  cstate = pl.BlockSpec((None, None, None, K, BV), lambda b, h, iv, n: (b, n, h, 0, iv))
  in_specs = [tok_k, tok_k, tok_v, tok_1] + ([tok_1] if gated else []) + [state]
  args = ([_heads_first(x) for x in (q, k, v, beta) + ((g,) if gated else ())]
          + [S0.astype(f32)])
  kernel = functools.partial(_fwd_kernel, N=N, scale=float(scale), gated=gated,
                             store_cs=store_chunk_states, cfg=_cfg(q.dtype))
  out_shape = (jax.ShapeDtypeStruct((B, H, T, V), v.dtype),
               jax.ShapeDtypeStruct((B, H, K, V), f32))
  out_specs = (tok_v, state)
  if store_chunk_states:
    out_shape += (jax.ShapeDtypeStruct((B, N, H, K, V), f32),)
    out_specs += (cstate,)
  outs = pl.pallas_call(
      kernel, out_shape=out_shape, grid=(B, H, V // BV, N), in_specs=in_specs,
      out_specs=out_specs, scratch_shapes=[pltpu.VMEM((K, BV), f32)],
      name="delta_rule_fwd_tpu", **_call_kwargs(interpret))(*args)
  cs = outs[2] if store_chunk_states else None
  return jnp.swapaxes(outs[0], 1, 2), outs[1], cs


def _bwd_kernel(*refs, N, scale, gated, has_dcs, cfg):
  refs = list(refs)
  q_ref, k_ref, v_ref, b_ref = refs[:4]
  del refs[:4]
  g_ref = refs.pop(0) if gated else None
  cs_ref, do_ref, dsT_ref = refs[:3]
  del refs[:3]
  dcs_ref = refs.pop(0) if has_dcs else None
  dq_ref, dk_ref, dv_ref, db_ref = refs[:4]
  del refs[:4]
  dg_ref = refs.pop(0) if gated else None
  ds0_ref, dS_scr = refs
  i = pl.program_id(3)   # the index maps visit chunk N - 1 - i

  @pl.when(i == 0)
  def _():
    dS_scr[...] = dsT_ref[...]

  q = q_ref[...].astype(f32) * scale
  g = None if g_ref is None else g_ref[...]
  dq, dk, dv, dbeta, dg, dS_KV = pm.chunk_bwd(q, k_ref[...], v_ref[...], b_ref[...], g,
                                               cs_ref[...], do_ref[...], dS_scr[...], cfg)
  dq_ref[...] = dq * scale
  dk_ref[...] = dk
  dv_ref[...] = dv.astype(dv_ref.dtype)
  db_ref[...] = dbeta
  if gated:
    dg_ref[...] = dg
  if has_dcs:  # chunk_states[n] is the state entering chunk n
    dS_KV = dS_KV + dcs_ref[...]
  dS_scr[...] = dS_KV

  @pl.when(i == N - 1)
  def _():
    ds0_ref[...] = dS_KV


def bwd(q, k, v, beta, g, chunk_states, do, dsT, dcs, *, scale, chunk_size,
        interpret=False, block_v=None):
  """Cotangents (dq, dk, dv, dbeta, dg or None, dS0) of `fwd`; dcs (or None) is the
  cotangent of the chunk states. dq/dk/dbeta/dg come back float32 (summed over V-blocks)."""
  B, T, H, K = q.shape
  V = v.shape[-1]
  C = chunk_size
  N = T // C
  BV = _block_v(V, block_v)
  NV = V // BV
  gated = g is not None
  has_dcs = dcs is not None
  rev = lambda i: N - 1 - i
  tok_k = pl.BlockSpec((None, None, C, K), lambda b, h, iv, i: (b, h, rev(i), 0))
  tok_v = pl.BlockSpec((None, None, C, BV), lambda b, h, iv, i: (b, h, rev(i), iv))
  tok_1 = pl.BlockSpec((None, None, C, 1), lambda b, h, iv, i: (b, h, rev(i), 0))
  state = pl.BlockSpec((None, None, K, BV), lambda b, h, iv, i: (b, h, 0, iv))
  cstate = pl.BlockSpec((None, None, None, K, BV), lambda b, h, iv, i: (b, rev(i), h, 0, iv))
  part_k = pl.BlockSpec((None, None, None, C, K), lambda b, h, iv, i: (iv, b, h, rev(i), 0))
  part_1 = pl.BlockSpec((None, None, None, C, 1), lambda b, h, iv, i: (iv, b, h, rev(i), 0))
  in_specs = ([tok_k, tok_k, tok_v, tok_1] + ([tok_1] if gated else [])
              + [cstate, tok_v, state] + ([cstate] if has_dcs else []))
  args = ([_heads_first(x) for x in (q, k, v, beta) + ((g,) if gated else ())]
          + [chunk_states, _heads_first(do), dsT.astype(f32)]
          + ([dcs.astype(f32)] if has_dcs else []))
  out_specs = [part_k, part_k, tok_v, part_1] + ([part_1] if gated else []) + [state]
  out_shape = [jax.ShapeDtypeStruct((NV, B, H, T, K), f32),
               jax.ShapeDtypeStruct((NV, B, H, T, K), f32),
               jax.ShapeDtypeStruct((B, H, T, V), v.dtype),
               jax.ShapeDtypeStruct((NV, B, H, T, 1), f32)]
  if gated:
    out_shape.append(jax.ShapeDtypeStruct((NV, B, H, T, 1), f32))
  out_shape.append(jax.ShapeDtypeStruct((B, H, K, V), f32))
  kernel = functools.partial(_bwd_kernel, N=N, scale=float(scale), gated=gated,
                             has_dcs=has_dcs, cfg=_cfg(q.dtype))
  outs = list(pl.pallas_call(
      kernel, out_shape=tuple(out_shape), grid=(B, H, NV, N), in_specs=in_specs,
      out_specs=tuple(out_specs), scratch_shapes=[pltpu.VMEM((K, BV), f32)],
      name="delta_rule_bwd_tpu", **_call_kwargs(interpret))(*args))
  back = lambda x: jnp.swapaxes(x.sum(0), 1, 2)            # [NV,B,H,T,*] -> [B,T,H,*]
  dq, dk = back(outs[0]), back(outs[1])
  dv = jnp.swapaxes(outs[2], 1, 2)
  dbeta = back(outs[3])[..., 0]
  dg = back(outs[4])[..., 0] if gated else None
  return dq, dk, dv, dbeta, dg, outs[-1]
