"""FLA/HF checkpoint import/export: placement, logits vs a numpy FLA re-implementation,
bit-identical round trips, sharding, tied heads, tokenizer files, and each bad input."""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from refine_jax import convert
from refine_jax.interop import hf_checkpoint, modelio, safetensors_io
from refine_jax.interop.safetensors_io import CheckpointFormatError
from refine_jax.pretrained import load_pretrained
from test_interop_fla_reference import (TINY_DELTANET, TINY_GDN, fla_forward,
                                        random_fla_tensors, write_fla_checkpoint)

CONFIGS = {"deltanet": TINY_DELTANET, "gdn": TINY_GDN}


@nnx.jit
def _fwd(model, ids):  # jitted: an eager forward of the chunked kernels is ~5x slower here
  out = model(ids)
  return out.logits, out.hidden_states


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def _ckpt(tmp_path, name="gdn", seed=0, **kw):
  c = CONFIGS[name]
  t = random_fla_tensors(c, seed)
  return write_fla_checkpoint(str(tmp_path / f"hf_{name}"), c, t, **kw), c, t


def _expected_nnx(key, a):
  """The documented layout, written out independently of hf_weights."""
  path = key.split(".")
  path = path[1:] if path[0] == "model" else path
  path = [int(p) if p.isdigit() else p for p in path]
  if key.endswith("_conv1d.weight"):
    return tuple(path[:-1] + ["kernel"]), a[:, 0, :].T
  if re.search(r"(_proj|lm_head)\.weight$", key):
    return tuple(path[:-1] + ["kernel"]), a.T
  if key == "model.embeddings.weight":
    return ("embeddings", "embedding"), a
  return tuple(path), a


@pytest.mark.parametrize("name", ["deltanet", "gdn"])
def test_every_tensor_lands_in_place_and_logits_match_fla_math(tmp_path, name):
  d, c, t = _ckpt(tmp_path, name)
  model, cfg, _ = hf_checkpoint.load_hf(d)
  params = modelio.flat_params(model)
  assert len(params) == len(t)
  for key, a in t.items():
    path, want = _expected_nnx(key, a)
    np.testing.assert_array_equal(params[path], want, err_msg=key)
  ids = np.random.default_rng(1).integers(0, c["vocab_size"], (2, 11))
  logits, hidden = _fwd(model, jnp.asarray(ids))
  for b in range(2):
    ref_logits, ref_hidden = fla_forward(t, c, ids[b])
    rel = np.abs(np.asarray(logits[b]) - ref_logits).max() / np.abs(ref_logits).max()
    assert rel < 1e-4, rel
    relh = np.abs(np.asarray(hidden[b]) - ref_hidden).max() / np.abs(ref_hidden).max()
    assert relh < 1e-4, relh


def test_round_trip_is_bit_identical_and_sharded_equals_single(tmp_path):
  d, c, t = _ckpt(tmp_path, "gdn")
  bundle_dir, hf_out = str(tmp_path / "bundle"), str(tmp_path / "hf_out")
  assert convert.main(["--from-hf", d, "--out", bundle_dir]) == 0
  assert convert.main(["--to-hf", bundle_dir, "--out", hf_out, "--max-shard-size", "20KB"]) == 0
  assert os.path.exists(os.path.join(hf_out, safetensors_io.INDEX_FILE))  # really sharded
  back = safetensors_io.read_tensors(hf_out)
  assert sorted(back) == sorted(t)
  for k in t:
    assert back[k].dtype == np.float32 and back[k].tobytes() == t[k].tobytes(), k
  with open(os.path.join(hf_out, "config.json")) as f:
    cfg_out = json.load(f)
  for k, v in c.items():
    if k not in ("torch_dtype", "transformers_version"):
      assert cfg_out[k] == v, (k, cfg_out[k], v)
  # Re-import of the sharded export == import of the single-file original.
  m1, _, _ = hf_checkpoint.load_hf(d)
  m2, _, _ = hf_checkpoint.load_hf(hf_out)
  p1, p2 = modelio.flat_params(m1), modelio.flat_params(m2)
  assert all(p1[k].tobytes() == p2[k].tobytes() for k in p1)


def test_bf16_checkpoint_round_trips_exactly(tmp_path):
  c = dict(TINY_DELTANET, torch_dtype="bfloat16")
  t = {k: v.astype(ml_dtypes.bfloat16) for k, v in random_fla_tensors(c, 3).items()}
  d = write_fla_checkpoint(str(tmp_path / "hf"), c, t, shards=3)
  out = str(tmp_path / "out")
  model, cfg, hf_cfg = hf_checkpoint.load_hf(d)
  hf_checkpoint.save_hf(model, cfg, out, hf_base=hf_cfg, dtype="bfloat16")
  back = load_file(os.path.join(out, "model.safetensors"))
  assert all(back[k].dtype == t[k].dtype and back[k].tobytes() == t[k].tobytes() for k in t)


def test_tied_embeddings_without_lm_head(tmp_path):
  c = dict(TINY_DELTANET, tie_word_embeddings=True)
  t = random_fla_tensors(c, 4)
  del t["lm_head.weight"]  # save_pretrained drops tied copies
  d = write_fla_checkpoint(str(tmp_path / "hf"), c, t)
  model, cfg, _ = hf_checkpoint.load_hf(d)
  assert cfg.model.tie_word_embeddings
  ids = np.arange(9) % c["vocab_size"]
  ref, _ = fla_forward(t, c, ids)
  got = np.asarray(_fwd(model, jnp.asarray(ids[None]))[0][0])
  assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
  hf_checkpoint.save_hf(model, cfg, str(tmp_path / "out"))
  assert "lm_head.weight" not in load_file(str(tmp_path / "out" / "model.safetensors"))


def _tokenizer_files():
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world", "the"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return {"tokenizer.json": tok.to_str(),
          "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>"})}


def test_load_pretrained_all_kinds_and_tokenizer_travels(tmp_path):
  from refine_jax.checkpoint import Checkpointer
  from refine_jax.data.tokenizers import get_tokenizer
  d, c, t = _ckpt(tmp_path, "deltanet", extra_files=_tokenizer_files())
  ids = jnp.asarray(np.arange(7)[None] % c["vocab_size"])
  m_hf, cfg_hf = load_pretrained(d)
  want = np.asarray(_fwd(m_hf, ids)[0])
  assert cfg_hf.data.tokenizer == "hf"
  assert get_tokenizer(cfg_hf.data).encode("hello world") == [3, 4]
  # bundle (tokenizer copied in, path relative to the bundle, absolute once loaded)
  bdir = convert.from_hf(d, str(tmp_path / "bundle"))
  with open(os.path.join(bdir, "config.json")) as f:
    assert json.load(f)["data"]["tokenizer_path"] == "tokenizer"
  m_b, cfg_b = load_pretrained(bdir)
  assert get_tokenizer(cfg_b.data).eos_id == 2
  np.testing.assert_array_equal(np.asarray(_fwd(m_b, ids)[0]), want)
  # run dir written by the training checkpointer + its config.json; also one step dir
  run = tmp_path / "run"
  ck = Checkpointer(str(run / "checkpoints"), async_save=False)
  ck.save(5, nnx.state(m_hf, nnx.Param), {"count": np.zeros((), np.int32)})
  ck.wait()
  ck.close()
  with open(run / "config.json", "w") as f:
    f.write(cfg_hf.to_json())
  for path in (run, run / "checkpoints" / "5"):
    m_r, cfg_r = load_pretrained(str(path))
    assert cfg_r.model.arch == "deltanet"
    np.testing.assert_array_equal(np.asarray(_fwd(m_r, ids)[0]), want)
  # to-hf from a run dir ships the tokenizer files back
  out = str(tmp_path / "hf_again")
  convert.to_hf(str(run), out)
  assert os.path.isfile(os.path.join(out, "tokenizer.json"))
  back = safetensors_io.read_tensors(out)
  assert all(back[k].tobytes() == t[k].tobytes() for k in t)


# ---- bad inputs: one clear error each ----

def test_missing_config_json(tmp_path):
  d, _, _ = _ckpt(tmp_path)
  os.remove(os.path.join(d, "config.json"))
  with pytest.raises(CheckpointFormatError, match="no config.json"):
    hf_checkpoint.load_hf(d)


def test_unknown_model_type(tmp_path):
  d, c, _ = _ckpt(tmp_path)
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(dict(c, model_type="llama", architectures=["LlamaForCausalLM"]), f)
  with pytest.raises(CheckpointFormatError, match=r"model_type='llama'.*not supported"):
    load_pretrained(d)


def test_shape_mismatch_names_key(tmp_path):
  c = TINY_GDN
  t = random_fla_tensors(c)
  t["model.layers.1.attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
  d = write_fla_checkpoint(str(tmp_path / "hf"), c, t)
  with pytest.raises(CheckpointFormatError,
                     match=r"model\.layers\.1\.attn\.k_proj\.weight: expected \(16, 32\).*got "
                           r"\(8, 32\)"):
    hf_checkpoint.load_hf(d)


def test_missing_shard_named_in_index(tmp_path):
  d, _, _ = _ckpt(tmp_path, shards=2)
  os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))
  with pytest.raises(CheckpointFormatError, match=r"model-00002-of-00002\.safetensors"):
    hf_checkpoint.load_hf(d)


def test_corrupt_or_truncated_shard_and_index_are_named(tmp_path):
  d, _, _ = _ckpt(tmp_path, shards=2)
  shard = os.path.join(d, "model-00001-of-00002.safetensors")
  blob = open(shard, "rb").read()
  with open(shard, "wb") as f:   # a partial download
    f.write(blob[:len(blob) // 2])
  with pytest.raises(CheckpointFormatError, match=r"model-00001-of-00002\.safetensors is not a "
                                                  r"valid safetensors file.*truncated"):
    hf_checkpoint.load_hf(d)
  with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(CheckpointFormatError, match=r"index\.json is not a valid safetensors index"):
    hf_checkpoint.load_hf(d)


def test_missing_and_unexpected_keys(tmp_path):
  c = TINY_DELTANET
  t = random_fla_tensors(c)
  del t["model.layers.0.attn.o_norm.weight"]
  t["model.layers.0.attn.extra.weight"] = np.zeros(3, np.float32)
  d = write_fla_checkpoint(str(tmp_path / "hf"), c, t)
  with pytest.raises(CheckpointFormatError,
                     match=r"missing keys \['model\.layers\.0\.attn\.o_norm\.weight'\].*"
                           r"unexpected keys \['model\.layers\.0\.attn\.extra\.weight'\]"):
    hf_checkpoint.load_hf(d)


def test_pickle_weights_refused(tmp_path):
  d = tmp_path / "hf"
  d.mkdir()
  (d / "config.json").write_text(json.dumps(TINY_DELTANET))
  (d / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin.*refuses"):
    load_pretrained(str(d))


def test_unsupported_fla_setting(tmp_path):
  c = dict(TINY_DELTANET, attn={"layers": [1], "num_heads": 2})
  d = write_fla_checkpoint(str(tmp_path / "hf"), c, random_fla_tensors(TINY_DELTANET))
  with pytest.raises(CheckpointFormatError, match=r"attn="):
    hf_checkpoint.load_hf(d)


def test_cli_reports_bad_input_cleanly(tmp_path, capsys):
  assert convert.main(["--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
  assert "does not exist" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_pretrained(str(tmp_path / "nope"))


def test_fresh_model_exports_to_fla_and_back(tmp_path):
  from refine_jax.interop import bundle
  from refine_jax.models import build_model
  cfg = bundle.base_config()
  with cfg.unlocked():
    cfg.model.update(arch="gated_deltanet", hidden=32, layers=1, heads=2, num_v_heads=4,
                     head_dim=8, vocab_size=50)  # expand_v / use_gate left at None (arch default)
  model = build_model(cfg.model, rngs=nnx.Rngs(5))
  out = str(tmp_path / "hf")
  hf_checkpoint.save_hf(model, cfg, out)
  with open(os.path.join(out, "config.json")) as f:
    c = json.load(f)
  assert c["model_type"] == "gated_deltanet" and c["architectures"] == ["GatedDeltaNetForCausalLM"]
  assert (c["expand_v"], c["use_gate"], c["head_dim"], c["num_v_heads"]) == (2.0, True, 8, 4)
  assert (c["hidden_size"], c["num_hidden_layers"], c["num_heads"]) == (32, 1, 2)
  m2, cfg2, _ = hf_checkpoint.load_hf(out)
  p1, p2 = modelio.flat_params(model), modelio.flat_params(m2)
  assert sorted(p1) == sorted(p2) and all(p1[k].tobytes() == p2[k].tobytes() for k in p1)


def test_module_cli_entry(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "refine_jax.convert", "--from-hf",
                      str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                     capture_output=True, text=True, cwd=root, timeout=120)
  assert r.returncode == 2
  assert "refine_jax.convert: error:" in r.stderr and "does not exist" in r.stderr


def test_tokenizer_warning_only_when_the_tokenizer_does_not_fit(tmp_path):
  """No tokenizer files: the byte tokenizer (259 ids) fits a vocab of 259 silently, and is
  named in a warning for a model with fewer ids (vocab 61)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  seen = []
  real = absl_logging.warning
  absl_logging.warning = lambda msg, *a: seen.append(msg % a)
  try:
    for vocab in (259, 61):
      c = dict(TINY_DELTANET, vocab_size=vocab)
      hf_checkpoint.load_hf(write_fla_checkpoint(str(tmp_path / f"v{vocab}"), c,
                                                 random_fla_tensors(c, 0)))
  finally:
    absl_logging.warning = real
  warned = [m for m in seen if "tokenizer" in m]
  assert len(warned) == 1 and "vocab_size=61" in warned[0] and "'byte'" in warned[0], seen
