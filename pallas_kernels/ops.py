"""The one fast-weight entry: every layer and public op dispatches here (WORKSPACE.md: Public
contracts, pallas_kernels).

Layout (flash-linear-attention): q, k [B, T, H, K]; v, o [B, T, H, V]; beta, g [B, T, H]
(g = per-step log decay, must be <= 0: not checked, a traced value cannot be); states
[B, H, K, V] float32; o comes back in v's dtype. Precision: see "bf16 inputs" below.

Packed documents: segment_ids [B, T] int (None = one document per row, the old behaviour bit
for bit). As FLA's cu_seqlens: a token whose segment id differs from the previous token's
starts a new document and the state is set to ZERO before it is applied (decay included);
0 marks padding, which is simply another document. The row's first token starts from
initial_state. o_t sees only its own document; final_state is the state after the row's last
token (whatever document that is); chunk states are the states after token c*C-1, as always.
Every path (XLA chunked and recurrent, both Pallas kernels) supports it, forward and
backward. A one-token call has no previous token: there segment_ids is checked and ignored.

`delta_rule_scan` picks the path from T and the backend:
  T == 1 (a decode step)   the fused token kernel (fused_recurrent.py) on a Pallas backend,
                           the token recurrence (reference.py) on an XLA one;
  otherwise                the chunked Pallas kernels (pallas_entry.py) or, on XLA, the WY
                           chunked form (chunked.py; "xla_recurrent": the token recurrence).
`delta_rule` / `gated_delta_rule` (the public contract) and the models call it.
`advance_state` takes the same backend names (it has XLA forms only: one chunk per row).

Backends (one vocabulary for every path):
  auto           Pallas on GPU / TPU, XLA elsewhere. If the Pallas kernel rejects the shapes
                 or dtypes, falls back to XLA (warns once; the same math, and for float32
                 inputs the same result to float32 rounding; for bf16 see below).
  xla_chunked    XLA: WY/UT chunked form (T > 1), token recurrence (T == 1).
  xla_recurrent  XLA: lax.scan over tokens; slow, the ground truth.
  pallas_gpu, pallas_tpu   the Pallas kernels; an error if they cannot take the inputs.
  interpret_gpu, interpret_tpu   the kernels in Pallas interpret mode (runs on CPU; tests).
  interpret      = interpret_tpu.
Every backend is differentiable. Under a mesh context (jax.set_mesh) the Pallas backends run
per device in shard_map (batch over data/fsdp, heads over tensor; see shard.py).

bf16 inputs: the paths do NOT give the same result; they differ by a few bf16 roundings.
  XLA (xla_chunked, xla_recurrent, T == 1 on XLA): every input is cast to float32 and every
    dot runs at Precision.HIGHEST: exactly the float32 computation on the bf16 values, o
    rounded to bf16 once at the end (final state float32, gradients in the inputs' dtype).
  Pallas chunked kernels: float32 accumulation, carried state, triangular solve and
    elementwise math, but bf16 dot OPERANDS: on GPU every chunk dot casts its operands to
    bf16 (pallas_gpu.TUNING["bf16_dots"]; the solve's float32 dots run at default precision,
    i.e. TF32), so intermediates XLA keeps in float32 (the state S, u = U - W S, (I + A)^-1,
    ...) enter dots rounded to bf16. On TPU the dots take float32 operands at
    Precision.DEFAULT, which the MXU may run as bf16 passes (not measured on a TPU here).
  Measured, interpret_gpu (which casts operands exactly like the GPU kernel) against
  xla_chunked, bf16 inputs, C = 16 and 64: relative (Frobenius) differences ~4e-3 for o, the
  final state and every gradient; o's own bf16 rounding alone is ~1.6e-3.
  tests/test_ops_dispatch.py pins both statements (XLA = float32 math on the bf16 values,
  bit for bit; kernel vs XLA within 2^-6). interpret_tpu computes default-precision dots in
  float32 on CPU, so it matches XLA to float32 rounding (before the outputs' bf16 rounding).
  The fused decode kernel (T == 1) has no dots: float32 elementwise math like XLA.
  Float32 inputs: XLA HIGHEST, TPU kernel HIGHEST, GPU kernel 3xTF32 (~float32).
"""
from __future__ import annotations

import numbers
import warnings

import jax
import jax.numpy as jnp

from pallas_kernels import chunked as _chunked
from pallas_kernels import fused_recurrent as _fused
from pallas_kernels import pallas_entry as _entry
from pallas_kernels import pallas_math as _pm
from pallas_kernels import reference as _reference
from pallas_kernels import shard as _shard

BACKENDS = ("auto", "xla_chunked", "xla_recurrent", "pallas_gpu", "pallas_tpu",
            "interpret", "interpret_gpu", "interpret_tpu")

# (target, interpret) for each Pallas backend name.
_PALLAS = {
    "pallas_gpu": ("gpu", False),
    "pallas_tpu": ("tpu", False),
    "interpret": ("tpu", True),
    "interpret_gpu": ("gpu", True),
    "interpret_tpu": ("tpu", True),
}

_warned: set[str] = set()


def _warn_once(msg):
  if msg not in _warned:
    _warned.add(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------
# Validation: one clear error per bad argument.


def _check_float(name, x):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}; "
                    f"cast it, e.g. {name}.astype(jnp.float32).")


def _check_shape(name, x, want, desc):
  if tuple(x.shape) != tuple(want):
    raise ValueError(f"{name} has shape {tuple(x.shape)} but must be {desc} = {tuple(want)} "
                     f"(FLA layout; see pallas_kernels.ops).")


def _check_chunk_size(chunk_size):
  if (not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool)
      or not _pm.pow2(chunk_size)):
    raise ValueError(f"chunk_size must be a positive power of two (e.g. 64), got {chunk_size!r}.")


def _check_backend(backend):
  if backend not in BACKENDS:
    raise ValueError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")


def _check_segments(segment_ids, B, T, what="[B, T] with q's B, T"):
  if segment_ids is None:
    return
  if not hasattr(segment_ids, "shape") or not hasattr(segment_ids, "dtype"):
    raise ValueError(f"segment_ids must be an integer array {what}, got "
                     f"{type(segment_ids).__name__}.")
  if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"segment_ids must be an integer array (int32: 1, 2, ... per document, "
                     f"0 = padding) {what}, got dtype {segment_ids.dtype}.")
  if tuple(segment_ids.shape) != (B, T):
    raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)} but must be {what} "
                     f"= {(B, T)}.")


def _validate(q, k, v, beta, g, initial_state, chunk_size, backend, segment_ids=None):
  if q.ndim != 4:
    raise ValueError(f"q must be 4-D [B, T, H, K], got shape {tuple(q.shape)}.")
  B, T, H, K = q.shape
  if T < 1:
    raise ValueError(f"q has T = {T} tokens; the sequence axis (axis 1) must be non-empty.")
  _check_shape("k", k, q.shape, "q's shape [B, T, H, K]")
  if v.ndim != 4:
    raise ValueError(f"v must be 4-D [B, T, H, V], got shape {tuple(v.shape)}.")
  _check_shape("v", v, (B, T, H, v.shape[-1]), "[B, T, H, V] with q's B, T, H")
  V = v.shape[-1]
  _check_shape("beta", beta, (B, T, H), "[B, T, H] (q's first three axes)")
  if g is not None:
    _check_shape("g", g, (B, T, H), "[B, T, H] (q's first three axes)")
  if initial_state is not None:
    _check_shape("initial_state", initial_state, (B, H, K, V), "[B, H, K, V]")
  for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta), ("g", g),
                  ("initial_state", initial_state)):
    if x is not None:
      _check_float(name, x)
  _check_segments(segment_ids, B, T)
  _check_chunk_size(chunk_size)
  _check_backend(backend)


# ---------------------------------------------------------------------------------------------
# Dispatch.


def _platform_target():
  plat = jax.default_backend()
  if plat in ("gpu", "cuda", "rocm"):
    return "gpu"
  if plat == "tpu":
    return "tpu"
  return None


def triton_reason(target):
  """Why the (non-interpreted) GPU kernels cannot run with this jax, or None."""
  if target != "gpu":
    return None
  from pallas_kernels import pallas_gpu  # Pallas Triton: imported only when a GPU kernel may run
  return pallas_gpu.triton_reason()


def _resolve(backend, reason):
  """None (an XLA path) or (target, interpret) of the Pallas kernel to run.

  reason(target) says why the kernel cannot take the inputs (None: it can)."""
  if backend in ("xla_chunked", "xla_recurrent"):
    return None
  if backend == "auto":
    target = _platform_target()
    if target is None:
      return None
    why = triton_reason(target) or reason(target)
    if why:
      _warn_once(f"pallas_kernels: Pallas {target} kernel unsupported here ({why}); "
                 "using backend='xla_chunked'.")
      return None
    return target, False
  target, interpret = _PALLAS[backend]
  why = (None if interpret else triton_reason(target)) or reason(target)
  if why:
    raise ValueError(f"backend={backend!r} does not support these inputs: {why}. "
                     "Use backend='xla_chunked' (or 'auto', which falls back).")
  return target, interpret


def delta_rule_scan(q, k, v, beta, g=None, *, scale=None, initial_state=None, chunk_size=64,
                    backend="auto", return_chunk_states=False, segment_ids=None):
  """(Gated if g is given) delta rule on any path; the one entry the models call.

  Returns (o [B,T,H,V] in v.dtype, final_state [B,H,K,V] float32, chunk_states or None).
  return_chunk_states: also the state at every chunk boundary, [B, N, H, K, V] with
  N = ceil(T / chunk_size) and chunk_states[:, c] the state after tokens [0, c*chunk_size)
  (c = 0 is the initial state). segment_ids [B, T] int or None: packed documents (module
  docstring); ignored by a one-token call. Differentiable.
  """
  _validate(q, k, v, beta, g, initial_state, chunk_size, backend, segment_ids)
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  if q.shape[1] == 1 and not return_chunk_states:
    # One token: no previous token, so no document boundary; segment_ids has nothing to do.
    return _decode(q, k, v, beta, g, scale, initial_state, backend) + (None,)
  cs = return_chunk_states
  # Segment handling only when asked for: the no-segment calls are exactly the old ones.
  seg_kw = {} if segment_ids is None else dict(segment_ids=segment_ids)
  pallas = _resolve(backend, lambda t: _entry.unsupported_reason(q.shape, v.shape, q.dtype,
                                                                 chunk_size, t))
  if pallas is None and backend == "xla_recurrent":
    if cs:
      return _reference.recurrent_chunk_states(q, k, v, beta, g, scale=scale,
                                               initial_state=initial_state,
                                               chunk_size=chunk_size, **seg_kw)
    return _reference.recurrent(q, k, v, beta, g, scale=scale,
                                initial_state=initial_state, **seg_kw) + (None,)
  if pallas is None:
    o, S, states = _chunked.chunked(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                                    chunk_size=chunk_size, **seg_kw)
    return o, S, (states if cs else None)
  target, interpret = pallas

  def kernel(q, k, v, beta, g, s0, *seg):
    kw = {} if not seg else dict(segment_ids=seg[0])
    out = _entry.pallas_delta_rule(q, k, v, beta, g, scale=scale, initial_state=s0,
                                   chunk_size=chunk_size, target=target, interpret=interpret,
                                   return_chunk_states=cs, **kw)
    return out if cs else out[:2]

  # Per device under a mesh context (shard.py says why).
  out = _shard.call(kernel, q, k, v, beta, g, initial_state,
                    ("BTHV", "BHKV") + (("BNHKV",) if cs else ()), **seg_kw)
  return out[0], out[1], (out[2] if cs else None)


def _decode(q, k, v, beta, g, scale, initial_state, backend):
  """T == 1: the state is read and written once; a chunk would be 63/64 padding."""
  dtypes = [x.dtype for x in (q, k, v, beta, g, initial_state) if x is not None]
  pallas = _resolve(backend, lambda t: _fused.unsupported_reason(q.shape, v.shape, dtypes, t))
  if pallas is None:
    return _reference.recurrent(q, k, v, beta, g, scale=scale, initial_state=initial_state)
  target, interpret = pallas
  fused = lambda *a: _fused.fused_recurrent(*a, scale=scale, target=target,
                                            interpret=interpret)
  return _shard.call(fused, q, k, v, beta, g, initial_state, ("BTHV", "BHKV"))


# ---------------------------------------------------------------------------------------------
# Public entries.


def delta_rule(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=True,
               chunk_size=64, backend="auto", segment_ids=None):
  """DeltaNet: S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, o_t = scale S_t^T q_t.

  q, k [B,T,H,K]; v [B,T,H,V]; beta [B,T,H]; initial_state [B,H,K,V] or None (zeros);
  scale None = K ** -0.5; segment_ids [B,T] int or None: documents packed back to back (the
  state is zeroed before a token whose id differs from the previous token's; module
  docstring). Returns (o [B,T,H,V] in v.dtype, final_state [B,H,K,V] float32, or None when
  output_final_state=False). Any T; chunk_size must be a power of two.
  """
  seg_kw = {} if segment_ids is None else dict(segment_ids=segment_ids)
  o, S, _ = delta_rule_scan(q, k, v, beta, scale=scale, initial_state=initial_state,
                            chunk_size=chunk_size, backend=backend, **seg_kw)
  return o, (S if output_final_state else None)


def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None,
                     output_final_state=True, chunk_size=64, backend="auto", segment_ids=None):
  """Gated DeltaNet: S_t = exp(g_t) S_{t-1}, then the delta update of `delta_rule`.

  g [B,T,H] is the per-step log decay and must be <= 0 (not checked under jit: positive g
  makes the chunked form overflow). Other arguments (segment_ids too: a new document's state
  starts from zero, no decay of the previous one survives) and the result as in `delta_rule`.
  """
  if g is None:
    raise ValueError("gated_delta_rule needs g [B, T, H] (log decay <= 0); "
                     "for no decay call delta_rule instead.")
  seg_kw = {} if segment_ids is None else dict(segment_ids=segment_ids)
  o, S, _ = delta_rule_scan(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                            chunk_size=chunk_size, backend=backend, **seg_kw)
  return o, (S if output_final_state else None)


def advance_state(state, k, v, beta, g=None, mask=None, *, chunk_size=64, backend="auto",
                  segment_ids=None):
  """Applies tokens k [B,L,H,K], v [B,L,H,V], beta/g [B,L,H] to state [B,H,K,V] where
  mask [B,L] is 1 (mask None: all tokens). Masked tokens are exact no-ops. Returns the new
  state [B,H,K,V] float32. backend: any of BACKENDS; "xla_recurrent" takes the token
  recurrence, every other name the WY chunked form (there is no Pallas kernel for this op).

  segment_ids [B, L] int or None: the state is zeroed before a token whose segment id
  differs from the previous token's in the window (never before token 0: the caller zeroes
  `state` itself when the window's first token starts a new document). A masked token's
  reset is dropped with the rest of it (for prefix masks, the use below, that is exact).

  With L = chunk_size this turns a chunk-boundary state into the state at any position
  inside the chunk (mask = positions <= p). Differentiable.
  """
  if state.ndim != 4:
    raise ValueError(f"state must be 4-D [B, H, K, V], got shape {tuple(state.shape)}.")
  B, H, K, V = state.shape
  if k.ndim != 4:
    raise ValueError(f"k must be 4-D [B, L, H, K], got shape {tuple(k.shape)}.")
  L = k.shape[1]
  if L < 1:
    raise ValueError("k has L = 0 tokens; advance_state needs at least one (axis 1).")
  _check_shape("k", k, (B, L, H, K), "[B, L, H, K] with state's B, H, K")
  _check_shape("v", v, (B, L, H, V), "[B, L, H, V] with state's B, H, V and k's L")
  _check_shape("beta", beta, (B, L, H), "[B, L, H]")
  if g is not None:
    _check_shape("g", g, (B, L, H), "[B, L, H]")
  if mask is not None:
    _check_shape("mask", mask, (B, L), "[B, L]")
  _check_segments(segment_ids, B, L, "[B, L] with state's B and k's L")
  for name, x in (("state", state), ("k", k), ("v", v), ("beta", beta), ("g", g)):
    if x is not None:
      _check_float(name, x)
  _check_chunk_size(chunk_size)
  _check_backend(backend)
  seg_kw = {} if segment_ids is None else dict(segment_ids=segment_ids)
  if backend == "xla_recurrent":
    return _reference.recurrent_advance(state, k, v, beta, g, mask, **seg_kw)
  return _chunked.chunked_advance(state, k, v, beta, g, mask, chunk_size=chunk_size, **seg_kw)
