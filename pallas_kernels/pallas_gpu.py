"""Chunked (gated) delta rule as Pallas kernels with the Triton lowering (GPU).

One program per (batch * head, V-block). It walks the chunks in order (forward) or in reverse
(backward) with a fori_loop, keeping the float32 state block S [K, BV] (or its cotangent) in
registers, and reads q/k/v/beta/g straight from the FLA layout [B, T, H, *] (no transposes).
The per-chunk math lives in pallas_math. Inputs here are already padded to T % C == 0;
pallas_entry does the padding and the custom_vjp. Packed documents (segment_ids) arrive as
float32 reset flags [B, T], read per chunk like beta.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import pallas_math as pm

f32 = jnp.float32

# Launch defaults; benchmarks/kernel_bench.py --tune overrides them for a sweep.
# The backward holds about twice the live tiles of the forward, hence more warps.
# bf16_dots=1: bf16 dot operands for bf16 inputs (2x the TF32 tensor-core rate, as FLA;
# relative errors ~5e-3 instead of ~2e-3 at C=64). It is also what makes the backward fit:
# compiled offline for sm_90 (benchmarks/triton_compile_check.py, K=V=128, C=64) the bwd
# needs 112 KB of shared memory with bf16 operands but 320 KB with float32 ones (limit 227).
# bwd_block_v = V would drop the per-V-block partial dq/dk/dbeta/dg (less HBM traffic) at
# the cost of a K x V float32 cotangent in registers (fits: 168 KB; more spills).
TUNING = dict(fwd_block_v=64, fwd_warps=4, fwd_stages=2,
              bwd_block_v=64, bwd_warps=8, bwd_stages=1, bf16_dots=1)


def _compiler_params(num_warps, num_stages):
  # Explicit Triton params: jax 0.10 could otherwise pick Mosaic GPU (jax_pallas_use_mosaic_gpu);
  # from 0.11 a GPU pallas_call is Triton-only and these just set warps and pipeline stages.
  from jax.experimental.pallas import triton as pltriton
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def abstract_gpu(mesh=None, device_kind="NVIDIA H100"):
  """Context in which jax lowers these kernels for CUDA with no GPU attached (CPU checks:
  lowering tests, benchmarks/triton_compile_check.py). jax >= 0.11 asks which GPU the Triton
  IR is for; an abstract mesh (`mesh`'s, or one device) on an abstract device says so.
  jax 0.10 has no such API and assumed sm_90."""
  AbstractDevice = getattr(jax.sharding, "AbstractDevice", None)
  if AbstractDevice is None:
    return contextlib.nullcontext()
  dev = AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
  am = jax.sharding.AbstractMesh((1,), ("_",)) if mesh is None else mesh.abstract_mesh
  return jax.sharding.use_abstract_mesh(am.update(abstract_device=dev))


def triton_reason():
  """None if this jax can lower pallas_call to Triton, else why not. The Pallas Triton
  backend is deprecated since jax 0.11 (Mosaic GPU, a different kernel API, replaces it);
  when it goes, backend="auto" must fall back to XLA rather than fail."""
  try:
    from jax.experimental.pallas import triton as pltriton
    from jax._src.pallas.triton import pallas_call_registration  # noqa: F401
  except ImportError as e:
    return f"jax {jax.__version__} has no Pallas Triton backend ({e})"
  if not hasattr(pltriton, "CompilerParams"):
    return f"jax {jax.__version__}: jax.experimental.pallas.triton.CompilerParams is gone"
  try:  # the deprecation can be turned into an error
    from jax._src import deprecations
    if deprecations.is_accelerated("jax-pallas-triton"):
      return f"jax {jax.__version__}: the Pallas Triton backend is switched off"
  except (ImportError, AttributeError, ValueError, KeyError):  # 0.10: not registered
    pass
  return None


def _cfg(dtype, interpret):
  if jnp.dtype(dtype) == jnp.float32:
    # Float32 inputs: 3xTF32 tensor-core dots (~float32 accuracy). IEEE dots would compile to
    # unrolled FMAs: minutes of compile time and heavy spills. The CPU interpreter has no
    # TF32, so it uses plain float32 dots.
    prec = (jax.lax.Precision.HIGHEST if interpret
            else jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3)
    return pm.MathCfg(precision=prec, explicit_transpose=False)
  # bf16 / fp16 inputs: TF32 dots, or bf16 operands with TUNING["bf16_dots"].
  return pm.MathCfg(precision=jax.lax.Precision.DEFAULT, explicit_transpose=False,
                    operand_dtype=jnp.bfloat16 if TUNING["bf16_dots"] else jnp.float32)


def _block_v(V, block_v, default):
  BV = min(V, default) if block_v is None else block_v
  if V % BV:
    raise ValueError(f"block_v={BV} must divide V={V}; pick a power of two <= V.")
  return BV


def _fwd_kernel(*refs, C, N, H, BV, scale, gated, seg, store_cs, cfg):
  refs = list(refs)
  cs_ref = refs.pop() if store_cs else None
  q_ref, k_ref, v_ref, b_ref = refs[:4]
  del refs[:4]
  g_ref = refs.pop(0) if gated else None
  s_ref = refs.pop(0) if seg else None
  s0_ref, o_ref, sT_ref = refs
  bh, iv = pl.program_id(0), pl.program_id(1)
  b, h = bh // H, bh % H
  vs = pl.ds(pl.multiple_of(iv * BV, BV), BV)
  S0 = s0_ref[b, h, :, vs].astype(f32)

  def body(n, S_KV):
    ts = pl.ds(pl.multiple_of(n * C, C), C)
    q = q_ref[b, ts, h, :].astype(f32) * scale
    k = k_ref[b, ts, h, :]
    v = v_ref[b, ts, h, vs]
    beta = b_ref[b, ts, h].astype(f32)[:, None]
    g = None if g_ref is None else g_ref[b, ts, h].astype(f32)[:, None]
    rs = None if s_ref is None else s_ref[b, ts][:, None]
    if store_cs:
      cs_ref[b, n, h, :, vs] = S_KV
    o, S_KV = pm.chunk_fwd(q, k, v, beta, g, S_KV, cfg, rs)
    o_ref[b, ts, h, vs] = o.astype(o_ref.dtype)
    return S_KV

  sT_ref[b, h, :, vs] = jax.lax.fori_loop(0, N, body, S0)


def fwd(q, k, v, beta, g, S0, *, scale, chunk_size, interpret=False, block_v=None,
        store_chunk_states=True, num_warps=None, num_stages=None, reset=None):
  """Returns (o [B,T,H,V] in v.dtype, final state [B,H,K,V] f32, chunk states [B,N,H,K,V] f32
  or None when not store_chunk_states). T must be a multiple of chunk_size (pallas_entry pads).
  reset: float32 [B, T] document-start flags (pallas_math) or None."""
  B, T, H, K = q.shape
  V = v.shape[-1]
  C = chunk_size
  N = T // C
  BV = _block_v(V, block_v, TUNING["fwd_block_v"])
  gated, seg = g is not None, reset is not None
  kernel = functools.partial(_fwd_kernel, C=C, N=N, H=H, BV=BV, scale=float(scale),
                             gated=gated, seg=seg, store_cs=store_chunk_states,
                             cfg=_cfg(q.dtype, interpret))
  args = ((q, k, v, beta) + ((g,) if gated else ()) + ((reset.astype(f32),) if seg else ())
          + (S0.astype(f32),))
  out_shape = (jax.ShapeDtypeStruct((B, T, H, V), v.dtype),
               jax.ShapeDtypeStruct((B, H, K, V), f32))
  if store_chunk_states:
    out_shape += (jax.ShapeDtypeStruct((B, N, H, K, V), f32),)
  outs = pl.pallas_call(
      kernel, out_shape=out_shape, grid=(B * H, V // BV), interpret=interpret,
      compiler_params=None if interpret else _compiler_params(
          num_warps or TUNING["fwd_warps"], num_stages or TUNING["fwd_stages"]),
      name="delta_rule_fwd_gpu")(*args)
  return outs if store_chunk_states else (outs[0], outs[1], None)


def _bwd_kernel(*refs, C, N, H, BV, scale, gated, seg, has_dcs, cfg):
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
  (ds0_ref,) = refs

  bh, iv = pl.program_id(0), pl.program_id(1)
  b, h = bh // H, bh % H
  vs = pl.ds(pl.multiple_of(iv * BV, BV), BV)
  dS_T = dsT_ref[b, h, :, vs].astype(f32)

  def body(i, dS_KV):
    n = N - 1 - i
    ts = pl.ds(pl.multiple_of(n * C, C), C)
    q = q_ref[b, ts, h, :].astype(f32) * scale
    k = k_ref[b, ts, h, :]
    v = v_ref[b, ts, h, vs]
    beta = b_ref[b, ts, h].astype(f32)[:, None]
    g = None if g_ref is None else g_ref[b, ts, h].astype(f32)[:, None]
    rs = None if s_ref is None else s_ref[b, ts][:, None]
    S_KV = cs_ref[b, n, h, :, vs]
    dO = do_ref[b, ts, h, vs]
    dq, dk, dv, dbeta, dg, dS_KV = pm.chunk_bwd(q, k, v, beta, g, S_KV, dO, dS_KV, cfg, rs)
    dq_ref[iv, b, ts, h, :] = dq * scale
    dk_ref[iv, b, ts, h, :] = dk
    dv_ref[b, ts, h, vs] = dv.astype(dv_ref.dtype)
    db_ref[iv, b, ts, h] = dbeta[:, 0]
    if gated:
      dg_ref[iv, b, ts, h] = dg[:, 0]
    if has_dcs:  # chunk_states[n] is the state entering chunk n
      dS_KV = dS_KV + dcs_ref[b, n, h, :, vs]
    return dS_KV

  ds0_ref[b, h, :, vs] = jax.lax.fori_loop(0, N, body, dS_T)


def bwd(q, k, v, beta, g, chunk_states, do, dsT, dcs, *, scale, chunk_size,
        interpret=False, block_v=None, num_warps=None, num_stages=None, reset=None):
  """Cotangents (dq, dk, dv, dbeta, dg or None, dS0) of `fwd`; dcs (or None) is the
  cotangent of the chunk states; reset as in `fwd`. dq/dk/dbeta/dg come back float32
  (summed over V-blocks)."""
  B, T, H, K = q.shape
  V = v.shape[-1]
  C = chunk_size
  N = T // C
  BV = _block_v(V, block_v, TUNING["bwd_block_v"])
  NV = V // BV
  gated, seg = g is not None, reset is not None
  has_dcs = dcs is not None
  kernel = functools.partial(_bwd_kernel, C=C, N=N, H=H, BV=BV, scale=float(scale),
                             gated=gated, seg=seg, has_dcs=has_dcs,
                             cfg=_cfg(q.dtype, interpret))
  args = ((q, k, v, beta) + ((g,) if gated else ()) + ((reset.astype(f32),) if seg else ())
          + (chunk_states, do, dsT.astype(f32))
          + ((dcs.astype(f32),) if has_dcs else ()))
  out_shape = [jax.ShapeDtypeStruct((NV, B, T, H, K), f32),
               jax.ShapeDtypeStruct((NV, B, T, H, K), f32),
               jax.ShapeDtypeStruct((B, T, H, V), v.dtype),
               jax.ShapeDtypeStruct((NV, B, T, H), f32)]
  if gated:
    out_shape.append(jax.ShapeDtypeStruct((NV, B, T, H), f32))
  out_shape.append(jax.ShapeDtypeStruct((B, H, K, V), f32))
  outs = pl.pallas_call(
      kernel, out_shape=tuple(out_shape), grid=(B * H, NV), interpret=interpret,
      compiler_params=None if interpret else _compiler_params(
          num_warps or TUNING["bwd_warps"], num_stages or TUNING["bwd_stages"]),
      name="delta_rule_bwd_gpu")(*args)
  outs = list(outs)
  dq, dk, dv, dbeta = outs[:4]
  dg = outs[4] if gated else None
  dS0 = outs[-1]
  dsum = lambda x: x[0] if NV == 1 else x.sum(0)
  return (dsum(dq), dsum(dk), dv, dsum(dbeta), None if dg is None else dsum(dg), dS0)
