"""Public fast-weight ops and backend dispatch (WORKSPACE.md: Public contracts, pallas_kernels).

Layout (flash-linear-attention): q, k [B, T, H, K]; v, o [B, T, H, V]; beta, g [B, T, H]
(g = per-step log decay, must be <= 0: not checked, a traced value cannot be); states
[B, H, K, V] float32. Math is float32 whatever the input dtype; o comes back in v's dtype.

Backends:
  auto           pallas_gpu on GPU, pallas_tpu on TPU, xla_chunked elsewhere. If the Pallas
                 module is missing or rejects the shapes, falls back to xla_chunked (warns once).
  xla_chunked    WY/UT chunked form, lax.scan over chunks (chunked.py).
  xla_recurrent  lax.scan over tokens (reference.py); slow, the ground truth.
  pallas_gpu, pallas_tpu   the Pallas kernels (pallas_entry.py); an error if unsupported.
  interpret      the Pallas TPU kernel in interpret mode (runs on CPU; used by tests).
  interpret_gpu, interpret_tpu   pick the interpreted kernel explicitly.
Every backend is differentiable. Under a mesh context (jax.set_mesh) the Pallas backends run
per device in shard_map (batch over data/fsdp, heads over tensor; see shard.py).
"""
from __future__ import annotations

import numbers
import warnings

import jax
import jax.numpy as jnp

from pallas_kernels import chunked as _chunked
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
      or chunk_size < 1 or chunk_size & (chunk_size - 1)):
    raise ValueError(f"chunk_size must be a positive power of two (e.g. 64), got {chunk_size!r}.")


def _check_backend(backend):
  if backend not in BACKENDS:
    raise ValueError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")


def _validate(q, k, v, beta, g, initial_state, chunk_size, backend):
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
  from pallas_kernels import pallas_gpu
  return pallas_gpu.triton_reason()


def _resolve(backend, q_shape, v_shape, dtype, chunk_size):
  """Returns ("xla_chunked" | "xla_recurrent", None) or ("pallas", (entry, target, interpret))."""
  if backend in ("xla_chunked", "xla_recurrent"):
    return backend, None
  if backend == "auto":
    target = _platform_target()
    if target is None:
      return "xla_chunked", None
    try:
      from pallas_kernels import pallas_entry
    except ImportError as e:
      _warn_once(f"pallas_kernels: Pallas {target} kernels unavailable ({e}); "
                 "using backend='xla_chunked'.")
      return "xla_chunked", None
    reason = (triton_reason(target)
              or pallas_entry.unsupported_reason(q_shape, v_shape, dtype, chunk_size, target))
    if reason:
      _warn_once(f"pallas_kernels: Pallas {target} kernel unsupported here ({reason}); "
                 "using backend='xla_chunked'.")
      return "xla_chunked", None
    return "pallas", (pallas_entry, target, False)
  target, interpret = _PALLAS[backend]
  try:
    from pallas_kernels import pallas_entry
  except ImportError as e:
    raise ImportError(f"backend={backend!r} needs pallas_kernels.pallas_entry, which failed "
                      f"to import ({e}); use backend='xla_chunked' or 'auto'.") from e
  reason = ((None if interpret else triton_reason(target))
            or pallas_entry.unsupported_reason(q_shape, v_shape, dtype, chunk_size, target))
  if reason:
    raise ValueError(f"backend={backend!r} does not support these inputs: {reason}. "
                     "Use backend='xla_chunked' (or 'auto', which falls back).")
  return "pallas", (pallas_entry, target, interpret)


def _run(q, k, v, beta, g, scale, initial_state, chunk_size, backend, chunk_states):
  """Validated dispatch. Returns (o, final_state, chunk_states or None)."""
  _validate(q, k, v, beta, g, initial_state, chunk_size, backend)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  kind, pallas = _resolve(backend, q.shape, v.shape, q.dtype, chunk_size)
  if kind == "xla_chunked":
    o, S, cs = _chunked.chunked(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                                chunk_size=chunk_size)
    return o, S, cs if chunk_states else None
  if kind == "xla_recurrent":
    if chunk_states:
      return _reference.recurrent_chunk_states(q, k, v, beta, g, scale=scale,
                                               initial_state=initial_state,
                                               chunk_size=chunk_size)
    o, S = _reference.recurrent(q, k, v, beta, g, scale=scale, initial_state=initial_state)
    return o, S, None
  entry, target, interpret = pallas

  def kernel(q, k, v, beta, g, s0):
    out = entry.pallas_delta_rule(q, k, v, beta, g, scale=scale, initial_state=s0,
                                  chunk_size=chunk_size, target=target, interpret=interpret,
                                  return_chunk_states=chunk_states)
    return out if chunk_states else out[:2]

  # Per device under a mesh context (shard.py says why).
  outs = ("BTHV", "BHKV") + (("BNHKV",) if chunk_states else ())
  out = _shard.call(kernel, q, k, v, beta, g, initial_state, outs)
  return out[0], out[1], (out[2] if chunk_states else None)


# ---------------------------------------------------------------------------------------------
# Public entries.


def delta_rule(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=True,
               chunk_size=64, backend="auto"):
  """DeltaNet: S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, o_t = scale S_t^T q_t.

  q, k [B,T,H,K]; v [B,T,H,V]; beta [B,T,H]; initial_state [B,H,K,V] or None (zeros);
  scale None = K ** -0.5. Returns (o [B,T,H,V] in v.dtype, final_state [B,H,K,V] float32,
  or None when output_final_state=False). Any T; chunk_size must be a power of two.
  """
  o, S, _ = _run(q, k, v, beta, None, scale, initial_state, chunk_size, backend, False)
  return o, (S if output_final_state else None)


def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None,
                     output_final_state=True, chunk_size=64, backend="auto"):
  """Gated DeltaNet: S_t = exp(g_t) S_{t-1}, then the delta update of `delta_rule`.

  g [B,T,H] is the per-step log decay and must be <= 0 (not checked under jit: positive g
  makes the chunked form overflow). Other arguments and the result as in `delta_rule`.
  """
  if g is None:
    raise ValueError("gated_delta_rule needs g [B, T, H] (log decay <= 0); "
                     "for no decay call delta_rule instead.")
  o, S, _ = _run(q, k, v, beta, g, scale, initial_state, chunk_size, backend, False)
  return o, (S if output_final_state else None)


def delta_rule_with_chunk_states(q, k, v, beta, g=None, *, scale=None, initial_state=None,
                                 chunk_size=64, backend="auto"):
  """(Gated if g is given) delta rule that also returns the state at every chunk boundary.

  Returns (o [B,T,H,V], final_state [B,H,K,V], chunk_states [B,N,H,K,V]) with
  N = ceil(T / chunk_size) and chunk_states[:, c] the state after tokens [0, c*chunk_size)
  (c = 0 is the initial state). Differentiable.
  """
  return _run(q, k, v, beta, g, scale, initial_state, chunk_size, backend, True)


def advance_state(state, k, v, beta, g=None, mask=None, *, chunk_size=64,
                  backend="xla_chunked"):
  """Applies tokens k [B,L,H,K], v [B,L,H,V], beta/g [B,L,H] to state [B,H,K,V] where
  mask [B,L] is 1 (mask None: all tokens). Masked tokens are exact no-ops. Returns the new
  state [B,H,K,V] float32. backend: "xla_chunked" (WY form; default) or "xla_recurrent".

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
  for name, x in (("state", state), ("k", k), ("v", v), ("beta", beta), ("g", g)):
    if x is not None:
      _check_float(name, x)
  _check_chunk_size(chunk_size)
  if backend == "xla_chunked":
    return _chunked.chunked_advance(state, k, v, beta, g, mask, chunk_size=chunk_size)
  if backend == "xla_recurrent":
    return _reference.recurrent_advance(state, k, v, beta, g, mask)
  raise ValueError(f"advance_state: unknown backend {backend!r}; use 'xla_chunked' or "
                   "'xla_recurrent'.")
