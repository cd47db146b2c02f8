"""Chunked (gated) delta rule as Pallas kernels with the Mosaic lowering (TPU).

Grid (B, H, V-blocks, chunks); the chunk axis is last and "arbitrary", so one core walks a
head's chunks in order while the float32 state block (forward) or its cotangent (backward,
chunks visited in reverse by the index maps) stays in a VMEM scratch buffer. Per-chunk math:
pallas_math. Inputs are padded to T % C == 0 by pallas_entry.

Layouts (TPU blocks want dense (8, 128) tiles in their last two dims):
- q/k/v/o: when K and the V-block are multiples of 128, [B, T, H, K] is viewed as
  [B, T, H*K] (a free reshape) and a (C, K) block is picked at column h: no transposes.
  Otherwise the wrapper moves heads in front of time, [B, H, T, K].
- beta/g: float32 [B, H, N, C] rows (N padded to 8), read in blocks of 8 chunks; a chunk
  reads row n % 8. ([.., T, 1] blocks would pad every scalar to 128 lanes in HBM.)
  Document-reset flags (segment_ids) travel the same way as [B, 1, N, C], shared by heads.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import pallas_math as pm

f32 = jnp.float32
_SQ = getattr(pl, "squeezed", None)   # a squeezed block dim (None on older jax)


def _cfg(dtype):
  prec = (jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32
          else jax.lax.Precision.DEFAULT)
  return pm.MathCfg(precision=prec, explicit_transpose=False)


def _call_kwargs(interpret):
  sem = ("parallel", "parallel", "parallel", "arbitrary")
  if interpret:  # the TPU interpreter (also checks the blocks' memory accesses)
    params = getattr(pltpu, "InterpretParams", None)   # older jax: the generic interpreter
    return dict(interpret=params() if params is not None else True)
  return dict(compiler_params=pltpu.CompilerParams(dimension_semantics=sem))


# Default V-block: the whole V while the K x V float32 state block stays this small. Larger
# blocks overflow the 16 MiB scoped VMEM of v4 / v5e / v5p in the backward (its state blocks
# are double-buffered; benchmarks/tpu_compile_check.py --sweep).
MAX_STATE_BLOCK = 256 * 256


def _block_v(K, V, block_v):
  if block_v is None:   # V, else the largest 512 / 256 / 128 dividing V that fits
    opts = [V] + [bv for bv in (512, 256, 128) if bv < V and V % bv == 0]
    block_v = next((bv for bv in opts if K * bv <= MAX_STATE_BLOCK), opts[-1])
  BV = block_v
  if V % BV or (BV != V and BV % 128):
    raise ValueError(f"block_v={BV} must divide V={V} and be V or a multiple of 128.")
  return BV


class _Tokens:
  """Block specs and (un)packing for the per-token [B, T, H, D] tensors, D = K or V.

  by_v: the block follows the grid's V-block index (v, o, dv); else it is the whole D (q, k).
  """

  def __init__(self, B, T, H, C, D, BD, chunk, by_v):
    self.B, self.T, self.H, self.D = B, T, H, D
    self.flat = D % 128 == 0 and BD % 128 == 0
    nd = D // BD
    col = (lambda h, iv: h * nd + iv) if by_v else (lambda h, iv: h)
    blk = (lambda iv: iv) if by_v else (lambda iv: 0)
    if self.flat:   # [B, T, H*D], block (C, BD) at column block h * nd + iv
      self.spec = pl.BlockSpec((_SQ, C, BD), lambda b, h, iv, i: (b, chunk(i), col(h, iv)))
    else:           # [B, H, T, D]
      self.spec = pl.BlockSpec((_SQ, _SQ, C, BD),
                               lambda b, h, iv, i: (b, h, chunk(i), blk(iv)))

  def pack(self, x):
    if self.flat:
      return x.reshape(self.B, self.T, self.H * self.D)
    return jnp.swapaxes(x, 1, 2)

  def shape(self):
    return (self.B, self.T, self.H * self.D) if self.flat else (self.B, self.H, self.T, self.D)

  def unpack(self, y):
    if self.flat:
      return y.reshape(self.B, self.T, self.H, self.D)
    return jnp.swapaxes(y, 1, 2)


# beta/g (and their cotangents) travel as [B, H, Np, C] float32 rows, one row per chunk, in
# blocks of _ROWS rows (one (8, 128) tile row-group): VMEM use does not grow with T, and a
# block stays resident over the _ROWS consecutive chunks that read (or write) it. Indices use
# lax.rem / lax.div (chunk indices are >= 0): Python's % and // add a sign fix-up whose Mosaic
# lowering needs the TPU generation at trace time.
_ROWS = 8


def _scalars(x, C):  # [B, T, H] -> [B, H, Np, C] float32, Np = N rounded up to _ROWS
  # float32 even for bf16 inputs: the kernels read row n % _ROWS at a dynamic index, and
  # Mosaic cannot prove such a row aligned in a bf16 block (two rows share a packed sublane:
  # E2003 CompileTimeMosaicUnprovenMemoryAccessAlignment).
  B, T, H = x.shape
  N = T // C
  y = jnp.swapaxes(x.astype(f32), 1, 2).reshape(B, H, N, C)
  return jnp.pad(y, [(0, 0), (0, 0), (0, -N % _ROWS), (0, 0)])


def _unscalars(y, N):   # [..., B, H, Np, C] -> [..., B, T, H] (padding rows dropped)
  *lead, B, H, _, C = y.shape
  return jnp.swapaxes(y[..., :N, :].reshape(*lead, B, H, N * C), -1, -2)


def _fwd_kernel(*refs, N, scale, gated, seg, store_cs, cfg):
  refs = list(refs)
  S_scr = refs.pop()
  cs_ref = refs.pop() if store_cs else None
  q_ref, k_ref, v_ref, b_ref = refs[:4]
  del refs[:4]
  g_ref = refs.pop(0) if gated else None
  s_ref = refs.pop(0) if seg else None
  s0_ref, o_ref, sT_ref = refs
  n = pl.program_id(3)

  @pl.when(n == 0)
  def _():
    S_scr[...] = s0_ref[...]

  S_KV = S_scr[...]
  if store_cs:
    cs_ref[...] = S_KV
  q = q_ref[...].astype(f32) * scale
  r = pl.ds(jax.lax.rem(n, _ROWS), 1)   # this chunk's row in the resident beta/g block
  beta = pm.to_col(b_ref[r, :].astype(f32))
  g = None if g_ref is None else pm.to_col(g_ref[r, :].astype(f32))
  rs = None if s_ref is None else pm.to_col(s_ref[r, :])
  o, S_KV = pm.chunk_fwd(q, k_ref[...], v_ref[...], beta, g, S_KV, cfg, rs)
  o_ref[...] = o.astype(o_ref.dtype)
  S_scr[...] = S_KV

  @pl.when(n == N - 1)
  def _():
    sT_ref[...] = S_KV


def fwd(q, k, v, beta, g, S0, *, scale, chunk_size, interpret=False, block_v=None,
        store_chunk_states=True, reset=None):
  """Returns (o [B,T,H,V] in v.dtype, final state [B,H,K,V] f32, chunk states [B,N,H,K,V] f32
  or None when not store_chunk_states). T must be a multiple of chunk_size (pallas_entry pads).
  reset: float32 [B, T] document-start flags (pallas_math) or None."""
  B, T, H, K = q.shape
  V = v.shape[-1]
  C = chunk_size
  N = T // C
  BV = _block_v(K, V, block_v)
  gated, seg = g is not None, reset is not None
  fwd_chunk = lambda i: i
  tk = _Tokens(B, T, H, C, K, K, fwd_chunk, by_v=False)
  tv = _Tokens(B, T, H, C, V, BV, fwd_chunk, by_v=True)
  sc = pl.BlockSpec((_SQ, _SQ, _ROWS, C),
                    lambda b, h, iv, n: (b, h, jax.lax.div(n, _ROWS), 0))
  # reset flags: one row set per batch entry, shared by every head
  sc1 = pl.BlockSpec((_SQ, _SQ, _ROWS, C),
                     lambda b, h, iv, n: (b, 0, jax.lax.div(n, _ROWS), 0))
  state = pl.BlockSpec((_SQ, _SQ, K, BV), lambda b, h, iv, n: (b, h, 0, iv))
  cstate = pl.BlockSpec((_SQ, _SQ, _SQ, K, BV), lambda b, h, iv, n: (b, n, h, 0, iv))
  in_specs = ([tk.spec, tk.spec, tv.spec, sc] + ([sc] if gated else [])
              + ([sc1] if seg else []) + [state])
  args = ([tk.pack(q), tk.pack(k), tv.pack(v), _scalars(beta, C)]
          + ([_scalars(g, C)] if gated else [])
          + ([_scalars(reset[..., None], C)] if seg else []) + [S0.astype(f32)])
  kernel = functools.partial(_fwd_kernel, N=N, scale=float(scale), gated=gated, seg=seg,
                             store_cs=store_chunk_states, cfg=_cfg(q.dtype))
  out_shape = (jax.ShapeDtypeStruct(tv.shape(), v.dtype),
               jax.ShapeDtypeStruct((B, H, K, V), f32))
  out_specs = (tv.spec, state)
  if store_chunk_states:
    out_shape += (jax.ShapeDtypeStruct((B, N, H, K, V), f32),)
    out_specs += (cstate,)
  outs = pl.pallas_call(
      kernel, out_shape=out_shape, grid=(B, H, V // BV, N), in_specs=in_specs,
      out_specs=out_specs, scratch_shapes=[pltpu.VMEM((K, BV), f32)],
      name="delta_rule_fwd_tpu", **_call_kwargs(interpret))(*args)
  cs = outs[2] if store_chunk_states else None
  return tv.unpack(outs[0]), outs[1], cs


def _bwd_kernel(*refs, N, scale, gated, seg, has_dcs, cfg):
  refs = list(refs)
  q_ref, k_ref, v_ref, b_ref = refs[:4]
  del refs[:4]
  g_ref = refs.pop(0) if gated else None
  s_ref = refs.pop(0) if seg else None
  cs_ref, do_ref, dsT_ref = refs[:3]
  del refs[:3]
  dcs_ref = refs.pop(0) if has_dcs else None
  dq_ref, dk_ref, dv_ref, db_ref = refs[:4]
  del refs[:4]
  dg_ref = refs.pop(0) if gated else None
  ds0_ref, dS_scr = refs
  i = pl.program_id(3)
  n = N - 1 - i          # chunks in reverse; the index maps agree

  @pl.when(i == 0)
  def _():
    dS_scr[...] = dsT_ref[...]

  q = q_ref[...].astype(f32) * scale
  r = pl.ds(jax.lax.rem(n, _ROWS), 1)   # this chunk's row in the resident beta/g block
  beta = pm.to_col(b_ref[r, :].astype(f32))
  g = None if g_ref is None else pm.to_col(g_ref[r, :].astype(f32))
  rs = None if s_ref is None else pm.to_col(s_ref[r, :])
  dq, dk, dv, dbeta, dg, dS_KV = pm.chunk_bwd(q, k_ref[...], v_ref[...], beta, g,
                                               cs_ref[...], do_ref[...], dS_scr[...], cfg, rs)
  dq_ref[...] = dq * scale
  dk_ref[...] = dk
  dv_ref[...] = dv.astype(dv_ref.dtype)
  db_ref[r, :] = pm.to_row(dbeta)   # written back when the chunk leaves this row block
  if gated:
    dg_ref[r, :] = pm.to_row(dg)
  if has_dcs:  # chunk_states[n] is the state entering chunk n
    dS_KV = dS_KV + dcs_ref[...]
  dS_scr[...] = dS_KV

  @pl.when(i == N - 1)
  def _():
    ds0_ref[...] = dS_KV


def bwd(q, k, v, beta, g, chunk_states, do, dsT, dcs, *, scale, chunk_size,
        interpret=False, block_v=None, reset=None):
  """Cotangents (dq, dk, dv, dbeta, dg or None, dS0) of `fwd`; dcs (or None) is the
  cotangent of the chunk states; reset as in `fwd`. dq/dk/dbeta/dg come back float32
  (summed over V-blocks)."""
  B, T, H, K = q.shape
  V = v.shape[-1]
  C = chunk_size
  N = T // C
  BV = _block_v(K, V, block_v)
  NV = V // BV
  gated, seg = g is not None, reset is not None
  has_dcs = dcs is not None
  rev = lambda i: N - 1 - i
  tk = _Tokens(B, T, H, C, K, K, rev, by_v=False)
  tv = _Tokens(B, T, H, C, V, BV, rev, by_v=True)
  sc = pl.BlockSpec((_SQ, _SQ, _ROWS, C),
                    lambda b, h, iv, i: (b, h, jax.lax.div(rev(i), _ROWS), 0))
  sc1 = pl.BlockSpec((_SQ, _SQ, _ROWS, C),
                     lambda b, h, iv, i: (b, 0, jax.lax.div(rev(i), _ROWS), 0))
  state = pl.BlockSpec((_SQ, _SQ, K, BV), lambda b, h, iv, i: (b, h, 0, iv))
  cstate = pl.BlockSpec((_SQ, _SQ, _SQ, K, BV), lambda b, h, iv, i: (b, rev(i), h, 0, iv))
  # Per-V-block partial sums of dq / dk / dbeta / dg: a leading NV axis.
  part_k = pl.BlockSpec((_SQ,) + tuple(tk.spec.block_shape),
                        lambda b, h, iv, i: (iv,) + tuple(tk.spec.index_map(b, h, 0, i)))
  part_s = pl.BlockSpec((_SQ, _SQ, _SQ, _ROWS, C),
                        lambda b, h, iv, i: (iv, b, h, jax.lax.div(rev(i), _ROWS), 0))
  Np = N + (-N % _ROWS)
  in_specs = ([tk.spec, tk.spec, tv.spec, sc] + ([sc] if gated else [])
              + ([sc1] if seg else [])
              + [cstate, tv.spec, state] + ([cstate] if has_dcs else []))
  args = ([tk.pack(q), tk.pack(k), tv.pack(v), _scalars(beta, C)]
          + ([_scalars(g, C)] if gated else [])
          + ([_scalars(reset[..., None], C)] if seg else [])
          + [chunk_states, tv.pack(do), dsT.astype(f32)]
          + ([dcs.astype(f32)] if has_dcs else []))
  out_specs = [part_k, part_k, tv.spec, part_s] + ([part_s] if gated else []) + [state]
  out_shape = [jax.ShapeDtypeStruct((NV,) + tk.shape(), f32),
               jax.ShapeDtypeStruct((NV,) + tk.shape(), f32),
               jax.ShapeDtypeStruct(tv.shape(), v.dtype),
               jax.ShapeDtypeStruct((NV, B, H, Np, C), f32)]
  if gated:
    out_shape.append(jax.ShapeDtypeStruct((NV, B, H, Np, C), f32))
  out_shape.append(jax.ShapeDtypeStruct((B, H, K, V), f32))
  kernel = functools.partial(_bwd_kernel, N=N, scale=float(scale), gated=gated, seg=seg,
                             has_dcs=has_dcs, cfg=_cfg(q.dtype))
  outs = list(pl.pallas_call(
      kernel, out_shape=tuple(out_shape), grid=(B, H, NV, N), in_specs=in_specs,
      out_specs=tuple(out_specs), scratch_shapes=[pltpu.VMEM((K, BV), f32)],
      name="delta_rule_bwd_tpu", **_call_kwargs(interpret))(*args))
  dq, dk = tk.unpack(outs[0].sum(0)), tk.unpack(outs[1].sum(0))
  dv = tv.unpack(outs[2])
  dbeta = _unscalars(outs[3].sum(0), N)
  dg = _unscalars(outs[4].sum(0), N) if gated else None
  return dq, dk, dv, dbeta, dg, outs[-1]
