"""LaCT HF-format (lact_swiglu) checkpoints: placement, fused qkv split, round trip."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from refine_jax.interop import hf_checkpoint, modelio, safetensors_io
from test_interop_fla_reference import mlp_width, write_fla_checkpoint

TINY_LACT = dict(
    model_type="lact_swiglu", architectures=["LaCTForCausalLM"], hidden_size=32,
    num_hidden_layers=2, num_attn_heads=4, num_lact_heads=2, inter_multi=2, qkv_bias=True,
    attn_qk_norm=False, lact_chunk_size=8, window_size=8, w0_w2_low_rank=4, use_momentum=True,
    use_muon=False, learnable_ttt_scale=True, rope_theta=1000.0, vocab_size=53,
    norm_eps=1e-6, hidden_ratio=4, tie_word_embeddings=False, lr_dim=1,
    lr_parameterization="mamba", fw_init_gain=0.5)


def lact_shapes(c):
  """{key: shape} of LaCTForCausalLM (from lact_llm/lact_model/*.py)."""
  D, Hf, V = c["hidden_size"], c["num_lact_heads"], c["vocab_size"]
  dk = D // Hf
  dh = int(dk * c["inter_multi"])
  r, I = c["w0_w2_low_rank"], mlp_width(c)
  s = {"model.embeddings.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    a = p + "attn."
    s.update({p + "attn_norm.weight": (D,), p + "mlp_norm.weight": (D,),
              a + "qkv.weight": (3 * D, D), a + "qkv.bias": (3 * D,),
              a + "o_proj.weight": (D, D),
              a + "w0.w_left": (Hf, dh, r), a + "w0.w_right": (Hf, r, dk),
              a + "w2.w_left": (Hf, dh, r), a + "w2.w_right": (Hf, r, dk),
              a + "w1": (Hf, dk, dh),
              a + "lr_proj.weight": (3 * Hf, D), a + "lr_proj.bias": (3 * Hf,),
              a + "qk_scale": (D, 2), a + "qk_offset": (D, 2),
              a + "ttt_scale_proj.weight": (Hf, D), a + "ttt_scale_proj.bias": (Hf,),
              a + "ttt_norm.weight": (dk,),
              a + "momentum_proj.0.weight": (Hf, D), a + "momentum_proj.0.bias": (Hf,),
              p + "mlp.gate_proj.weight": (I, D), p + "mlp.up_proj.weight": (I, D),
              p + "mlp.down_proj.weight": (D, I)})
    if c["attn_qk_norm"]:
      s.update({a + "q_norm.weight": (D,), a + "k_norm.weight": (D,)})
  return s


@pytest.fixture
def lact_ckpt(tmp_path):
  rng = np.random.default_rng(0)
  t = {k: rng.standard_normal(s).astype(np.float32) for k, s in lact_shapes(TINY_LACT).items()}
  return write_fla_checkpoint(str(tmp_path / "lact"), TINY_LACT, t), t


def test_lact_tensors_land_in_place(lact_ckpt):
  d, t = lact_ckpt
  model, cfg, _ = hf_checkpoint.load_hf(d)
  assert cfg.model.arch == "lact" and cfg.model.heads == 4
  assert cfg.model.lact.num_fw_heads == 2 and cfg.model.lact.chunk == 8
  assert cfg.model.lact.w0_w2_low_rank == 4 and cfg.model.lact.qkv_bias
  p = modelio.flat_params(model)
  D = 32
  for i in range(2):
    a = f"model.layers.{i}.attn."
    L = ("layers", i, "attn")
    qkv, b = t[a + "qkv.weight"], t[a + "qkv.bias"]
    for j, name in enumerate("qkv"):  # torch .chunk(3) order: q, k, v
      np.testing.assert_array_equal(p[L + (f"{name}_proj", "kernel")], qkv[j * D:(j + 1) * D].T)
      np.testing.assert_array_equal(p[L + (f"{name}_proj", "bias")], b[j * D:(j + 1) * D])
    np.testing.assert_array_equal(p[L + ("w0_left",)], t[a + "w0.w_left"])
    np.testing.assert_array_equal(p[L + ("w2_right",)], t[a + "w2.w_right"])
    np.testing.assert_array_equal(p[L + ("w1",)], t[a + "w1"])
    np.testing.assert_array_equal(p[L + ("momentum_proj", "kernel")],
                                  t[a + "momentum_proj.0.weight"].T)
    np.testing.assert_array_equal(p[L + ("qk_offset",)], t[a + "qk_offset"])
    np.testing.assert_array_equal(p[L + ("ttt_norm", "weight")], t[a + "ttt_norm.weight"])
  # LaCT's LowRankFastWeight with add_identity: W = w_left @ w_right + 0.5 I.
  w = model.blocks()[0].attn.init_weights()
  a = "model.layers.0.attn."
  want = t[a + "w0.w_left"] @ t[a + "w0.w_right"] + 0.5 * np.eye(32, 16)[None]  # [Hf, dh, dk]
  np.testing.assert_allclose(np.asarray(w["w0"]), want, rtol=1e-5, atol=1e-5)


def test_lact_round_trip_bit_identical(lact_ckpt, tmp_path):
  d, t = lact_ckpt
  model, cfg, hf_cfg = hf_checkpoint.load_hf(d)
  out = str(tmp_path / "out")
  hf_checkpoint.save_hf(model, cfg, out, hf_base=hf_cfg)
  back = safetensors_io.read_tensors(out)
  assert sorted(back) == sorted(t)
  assert all(back[k].tobytes() == t[k].tobytes() for k in t)
  with open(os.path.join(out, "config.json")) as f:
    c2 = json.load(f)
  assert all(c2[k] == v for k, v in TINY_LACT.items()), c2


def test_lact_unsupported_setting(tmp_path):
  from refine_jax.interop.safetensors_io import CheckpointFormatError
  c = dict(TINY_LACT, ttt_prenorm=True)
  rng = np.random.default_rng(0)
  t = {k: rng.standard_normal(s).astype(np.float32) for k, s in lact_shapes(TINY_LACT).items()}
  d = write_fla_checkpoint(str(tmp_path / "l"), c, t)
  with pytest.raises(CheckpointFormatError, match="ttt_prenorm=True"):
    hf_checkpoint.load_hf(d)
