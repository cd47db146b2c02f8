"""Test helpers for interop: tiny FLA-layout checkpoints and a numpy re-implementation of
FLA's DeltaNetForCausalLM / GatedDeltaNetForCausalLM forward pass, written from the FLA
source (fla/layers/delta_net.py, gated_deltanet.py, modules/) independently of refine_jax.

Other test_interop_* files import from here; the tests in this file check the reference
itself against the naive recurrence in pallas_kernels.reference.
"""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

# Tiny configs in FLA's config.json format (only what these tests need + FLA-only knobs).
TINY_DELTANET = dict(
    model_type="delta_net", architectures=["DeltaNetForCausalLM"], hidden_size=32,
    num_hidden_layers=2, num_heads=2, expand_k=1.0, expand_v=1.0, use_gate=False,
    use_short_conv=True, conv_size=4, use_beta=True, qk_norm="l2", qk_activation="silu",
    allow_neg_eigval=False, hidden_ratio=4, intermediate_size=None, hidden_act="swish",
    norm_eps=1e-6, vocab_size=61, tie_word_embeddings=False, attn_mode="chunk",
    fuse_norm=True, fuse_cross_entropy=True, bos_token_id=1, eos_token_id=2,
    torch_dtype="float32", transformers_version="4.53.0")
TINY_GDN = dict(
    model_type="gated_deltanet", architectures=["GatedDeltaNetForCausalLM"], hidden_size=32,
    num_hidden_layers=2, num_heads=2, num_v_heads=4, head_dim=8, expand_v=2.0,
    use_gate=True, use_short_conv=True, conv_size=4, allow_neg_eigval=True, hidden_ratio=4,
    intermediate_size=None, hidden_act="swish", norm_eps=1e-6, vocab_size=61,
    tie_word_embeddings=False, attn_mode="chunk", fuse_norm=True, bos_token_id=1,
    eos_token_id=2, torch_dtype="float32")


def mlp_width(c):
  if c.get("intermediate_size"):
    return c["intermediate_size"]
  return 256 * ((int(c["hidden_size"] * (c.get("hidden_ratio") or 4) * 2 / 3) + 255) // 256)


def fla_shapes(c):
  """{state-dict key: shape} of an FLA DeltaNet / Gated DeltaNet LM (from FLA's modules)."""
  D, W, V = c["hidden_size"], c.get("conv_size", 4), c["vocab_size"]
  gdn = c["model_type"] == "gated_deltanet"
  if gdn:
    H, dk = c["num_heads"], c["head_dim"]
    HV = c.get("num_v_heads") or H
    dv = int(dk * c["expand_v"])
    key_dim, value_dim, nb = H * dk, HV * dv, HV
  else:
    H = c["num_heads"]
    key_dim, value_dim = int(D * c["expand_k"]), int(D * c["expand_v"])
    dv, nb = value_dim // H, H
  I = mlp_width(c)
  s = {"model.embeddings.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    s.update({
        p + "attn_norm.weight": (D,), p + "mlp_norm.weight": (D,),
        p + "attn.q_proj.weight": (key_dim, D), p + "attn.k_proj.weight": (key_dim, D),
        p + "attn.v_proj.weight": (value_dim, D), p + "attn.b_proj.weight": (nb, D),
        p + "attn.q_conv1d.weight": (key_dim, 1, W), p + "attn.k_conv1d.weight": (key_dim, 1, W),
        p + "attn.v_conv1d.weight": (value_dim, 1, W), p + "attn.o_norm.weight": (dv,),
        p + "attn.o_proj.weight": (D, value_dim),
        p + "mlp.gate_proj.weight": (I, D), p + "mlp.up_proj.weight": (I, D),
        p + "mlp.down_proj.weight": (D, I)})
    if gdn:
      s.update({p + "attn.a_proj.weight": (HV, D), p + "attn.A_log": (HV,),
                p + "attn.dt_bias": (HV,)})
    if c.get("use_gate"):
      s[p + "attn.g_proj.weight"] = (value_dim, D)
  return s


def random_fla_tensors(c, seed=0):
  """Random weights in FLA layout; norms, A_log, dt_bias deliberately far from their inits."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in fla_shapes(c).items():
    if k.endswith("norm.weight"):
      a = 1.0 + 0.5 * rng.standard_normal(shape)
    elif k.endswith("A_log"):
      a = np.log(rng.uniform(0.5, 4.0, shape))
    elif k.endswith("dt_bias"):
      a = rng.uniform(-3.0, 0.0, shape)
    elif "conv1d" in k:
      a = 0.3 * rng.standard_normal(shape)
    else:
      a = 0.15 * rng.standard_normal(shape)
    out[k] = a.astype(np.float32)
  return out


def write_fla_checkpoint(d, c, tensors, *, shards=1, extra_files=None):
  """config.json + model.safetensors (or `shards` shards + index), like save_pretrained."""
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(c, f)
  names = sorted(tensors)
  if shards == 1:
    save_file({n: tensors[n] for n in names}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
  else:
    groups = [names[i::shards] for i in range(shards)]
    wm = {}
    for i, g in enumerate(groups):
      fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
      save_file({n: tensors[n] for n in g}, os.path.join(d, fn), metadata={"format": "pt"})
      wm.update({n: fn for n in g})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)
  for name, text in (extra_files or {}).items():
    with open(os.path.join(d, name), "w") as f:
      f.write(text)
  return d


# ---- numpy forward (float64), FLA math ----

def _rms(x, w, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _softplus(x):
  return np.logaddexp(0.0, x)


def _conv_silu(u_TC, w_C1W):
  """Causal depthwise conv: y[t] = sum_j w[:, 0, j] * u[t - (W-1) + j], then SiLU."""
  T, C = u_TC.shape
  W = w_C1W.shape[-1]
  pad = np.concatenate([np.zeros((W - 1, C)), u_TC], 0)
  y = sum(w_C1W[:, 0, j] * pad[j:j + T] for j in range(W))
  return _silu(y)


def _l2(x):
  return x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)


def delta_recurrence(q_THK, k_THK, v_THV, beta_TH, g_TH=None):
  """o_t = S_t^T (q_t K^-0.5); S_t = e^{g_t} S_{t-1} + beta_t k_t (v_t - (e^{g_t}S_{t-1})^T k_t)^T."""
  T, H, K = q_THK.shape
  S = np.zeros((H, K, v_THV.shape[-1]))
  o = np.zeros_like(v_THV)
  for t in range(T):
    if g_TH is not None:
      S = S * np.exp(g_TH[t])[:, None, None]
    pred = np.einsum("hk,hkv->hv", k_THK[t], S)
    S = S + np.einsum("hk,hv->hkv", k_THK[t], beta_TH[t][:, None] * (v_THV[t] - pred))
    o[t] = np.einsum("hk,hkv->hv", q_THK[t] * K ** -0.5, S)
  return o


def fla_forward(tensors, c, ids_T):
  """(logits [T, V], final-norm hidden [T, D]) of one sequence, float64."""
  t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
  eps, gdn = c.get("norm_eps", 1e-6), c["model_type"] == "gated_deltanet"
  h = t["model.embeddings.weight"][np.asarray(ids_T)]
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    x = _rms(h, t[p + "attn_norm.weight"], eps)
    q = _conv_silu(x @ t[p + "attn.q_proj.weight"].T, t[p + "attn.q_conv1d.weight"])
    k = _conv_silu(x @ t[p + "attn.k_proj.weight"].T, t[p + "attn.k_conv1d.weight"])
    v = _conv_silu(x @ t[p + "attn.v_proj.weight"].T, t[p + "attn.v_conv1d.weight"])
    beta = 1.0 / (1.0 + np.exp(-(x @ t[p + "attn.b_proj.weight"].T)))
    if c.get("allow_neg_eigval"):
      beta = beta * 2.0
    T = h.shape[0]
    if gdn:
      H, dk = c["num_heads"], c["head_dim"]
      HV = c.get("num_v_heads") or H
      dv = int(dk * c["expand_v"])
      g = -np.exp(t[p + "attn.A_log"]) * _softplus(
          x @ t[p + "attn.a_proj.weight"].T + t[p + "attn.dt_bias"])
      rep = HV // H  # value head j reads q/k head j // rep
      qh = np.repeat(_l2(q.reshape(T, H, dk)), rep, axis=1)
      kh = np.repeat(_l2(k.reshape(T, H, dk)), rep, axis=1)
      o = delta_recurrence(qh, kh, v.reshape(T, HV, dv), beta, g)
    else:
      H = c["num_heads"]
      dk, dv = q.shape[-1] // H, v.shape[-1] // H
      o = delta_recurrence(_l2(q.reshape(T, H, dk)), _l2(k.reshape(T, H, dk)),
                           v.reshape(T, H, dv), beta)
    o = _rms(o, t[p + "attn.o_norm.weight"], eps)
    if c.get("use_gate"):
      o = o * _silu((x @ t[p + "attn.g_proj.weight"].T).reshape(o.shape))
    h = h + o.reshape(T, -1) @ t[p + "attn.o_proj.weight"].T
    m = _rms(h, t[p + "mlp_norm.weight"], eps)
    h = h + (_silu(m @ t[p + "mlp.gate_proj.weight"].T) * (m @ t[p + "mlp.up_proj.weight"].T)
             ) @ t[p + "mlp.down_proj.weight"].T
  hidden = _rms(h, t["model.norm.weight"], eps)
  head = t.get("lm_head.weight", t["model.embeddings.weight"])
  return hidden @ head.T, hidden


# ---- checks of the reference itself ----

def test_delta_recurrence_matches_pallas_reference():
  import jax.numpy as jnp
  from pallas_kernels import reference
  rng = np.random.default_rng(0)
  T, H, K, V = 7, 2, 4, 3
  q, k = rng.standard_normal((2, T, H, K))
  k = _l2(k)
  v = rng.standard_normal((T, H, V))
  beta = rng.uniform(0, 1, (T, H))
  g = -rng.uniform(0, 1, (T, H))
  for gg in (None, g):
    ours = delta_recurrence(q, k, v, beta, gg)
    ref, _ = reference.recurrent(
        *(jnp.asarray(a[None], jnp.float32) for a in (q, k, v, beta)),
        None if gg is None else jnp.asarray(gg[None], jnp.float32))
    np.testing.assert_allclose(ours, np.asarray(ref[0]), rtol=1e-5, atol=1e-6)


def test_conv_is_causal_and_oriented():
  # The last tap (j = W-1) multiplies the current token; a unit impulse at t=0 walks the
  # taps backwards: y[t] = w[:, 0, W-1-t].
  w = np.arange(1.0, 5.0).reshape(1, 1, 4)
  u = np.zeros((4, 1))
  u[0] = 1.0
  y = _conv_silu(u, w)
  np.testing.assert_allclose(y[:, 0], _silu(np.array([4.0, 3.0, 2.0, 1.0])))


def test_shapes_follow_fla_rules():
  s = fla_shapes(TINY_GDN)
  assert s["model.layers.0.attn.v_proj.weight"] == (4 * 16, 32)
  assert s["model.layers.0.attn.o_norm.weight"] == (16,)
  assert s["model.layers.1.mlp.gate_proj.weight"] == (256, 32)  # 256*ceil(85/256)
  assert fla_shapes(TINY_DELTANET)["model.layers.0.attn.b_proj.weight"] == (2, 32)
