"""Hub ids for starting weights, offline: a tiny FLA checkpoint in a local HF cache laid out as
huggingface_hub lays it out (models--owner--name/{refs/main, snapshots/<commit>/, blobs/}),
HF_HUB_OFFLINE=1. load_pretrained / convert / init_checkpoint=hf://... read it like the local
dir; the training config takes its model and tokenizer; bad ids are one clear line."""
from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from refine_jax import convert
from refine_jax.interop import hub
from refine_jax.pretrained import load_pretrained
from refine_jax.train import init_checkpoint
from test_interop_convert import _tokenizer_files
from test_interop_fla_reference import TINY_DELTANET, random_fla_tensors, write_fla_checkpoint

REPO = "tiny-org/tiny-delta_net"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
IDS = jnp.asarray((np.arange(12)[None] * 7) % TINY_DELTANET["vocab_size"])


def write_hub_cache(cache: str, repo_id: str, src_dir: str, commit: str = COMMIT) -> str:
  """src_dir's files as huggingface_hub's cache holds a download of repo_id at `commit`:
  content-addressed blobs, snapshot entries as relative symlinks, refs/main -> commit."""
  root = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
  snap = os.path.join(root, "snapshots", commit)
  for d in ("blobs", "refs", snap):
    os.makedirs(os.path.join(root, d), exist_ok=True)
  with open(os.path.join(root, "refs", "main"), "w") as f:
    f.write(commit)
  for name in sorted(os.listdir(src_dir)):
    with open(os.path.join(src_dir, name), "rb") as f:
      data = f.read()
    blob = hashlib.sha256(data).hexdigest()
    with open(os.path.join(root, "blobs", blob), "wb") as f:
      f.write(data)
    os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
  return snap


@pytest.fixture
def cached(tmp_path, monkeypatch):
  """(local FLA dir, its snapshot in the offline HF cache, env for subprocesses)."""
  import huggingface_hub
  from huggingface_hub import constants
  src = write_fla_checkpoint(str(tmp_path / "src"), TINY_DELTANET,
                             random_fla_tensors(TINY_DELTANET, 0), extra_files=_tokenizer_files())
  cache = str(tmp_path / "hf_cache")
  snap = write_hub_cache(cache, REPO, src)
  # huggingface_hub itself must see it as a cached download (else the layout is only ours).
  info = huggingface_hub.scan_cache_dir(cache)
  (repo,) = info.repos
  assert repo.repo_id == REPO and [r.commit_hash for r in repo.revisions] == [COMMIT]
  assert {f.file_name for f in next(iter(repo.revisions)).files} == set(os.listdir(src))
  env = {"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  # Read once at import by huggingface_hub: set in-process too (subprocesses read the env).
  monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return src, snap, env


@nnx.jit
def _logits(model, ids):
  return model(ids).logits


def test_load_pretrained_hub_id_equals_local_dir(cached, monkeypatch):
  src, snap, _ = cached
  calls = []
  import huggingface_hub
  orig = huggingface_hub.snapshot_download

  def spy(*a, **kw):
    calls.append(kw)
    return orig(*a, **kw)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
  want = np.asarray(_logits(load_pretrained(src)[0], IDS))
  for name in (REPO, f"hf://{REPO}@{COMMIT}"):
    model, cfg = load_pretrained(name)
    np.testing.assert_array_equal(np.asarray(_logits(model, IDS)), want, err_msg=name)
    assert cfg.model.hidden == TINY_DELTANET["hidden_size"]
    assert cfg.data.tokenizer == "hf" and cfg.data.tokenizer_path == os.path.abspath(snap)
  assert [set(c["allow_patterns"]) for c in calls] == [{
      "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
      "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"}] * 2
  assert calls[1]["revision"] == COMMIT and calls[0]["revision"] is None
  assert all(c["local_files_only"] for c in calls)  # HF_HUB_OFFLINE honoured at call time


def test_convert_from_hub_id_and_bundle_as_init_checkpoint(cached, tmp_path, capsys):
  src, snap, _ = cached
  out = str(tmp_path / "bundle")
  assert convert.main(["--from-hf", REPO, "--out", out]) == 0
  with open(os.path.join(out, "bundle.json")) as f:
    assert json.load(f)["source"] == f"hf://{REPO}@{COMMIT}"
  np.testing.assert_array_equal(np.asarray(_logits(load_pretrained(out)[0], IDS)),
                                np.asarray(_logits(load_pretrained(src)[0], IDS)))
  # The bundle brings model + tokenizer to a config whose defaults are another model's.
  cfg = _pretrain_config(init_checkpoint=out)
  got = init_checkpoint.resolve(cfg)
  assert (got.model.hidden, got.model.layers, got.model.vocab_size) == (32, 2, 61)
  assert got.model.chunk_size == cfg.model.chunk_size  # runtime knobs stay the user's
  assert got.data.tokenizer == "hf"
  assert got.data.tokenizer_path == os.path.join(os.path.abspath(out), "tokenizer")


def _pretrain_config(**kw):
  from configs import pretrain
  cfg = pretrain.get_config()
  with cfg.unlocked():
    cfg.update(kw)
  return cfg


def test_resolve_takes_model_and_tokenizer_and_refuses_conflicts(cached):
  _, snap, _ = cached
  cfg = _pretrain_config(init_checkpoint=f"hf://{REPO}")
  assert cfg.model.hidden == 128 and cfg.model.vocab_size == 259  # the file's defaults
  got = init_checkpoint.resolve(cfg)
  assert got.init_checkpoint == snap  # the loaders read the snapshot dir
  assert (got.model.arch, got.model.hidden, got.model.layers, got.model.heads,
          got.model.vocab_size) == ("deltanet", 32, 2, 2, 61)
  assert got.data.tokenizer == "hf" and got.data.tokenizer_path == os.path.abspath(snap)
  assert cfg.model.hidden == 128  # the caller's config is not touched
  # An explicit value equal to the checkpoint's is fine; a different one is one line.
  with cfg.unlocked():
    cfg.model.hidden = 32
  assert init_checkpoint.resolve(cfg, {"model.hidden"}).model.hidden == 32
  with cfg.unlocked():
    cfg.model.hidden = 64
  with pytest.raises(ValueError) as e:
    init_checkpoint.resolve(cfg, {"model.hidden", "init_checkpoint"})
  msg = str(e.value)
  assert "\n" not in msg and "model.hidden=64" in msg and "has 32" in msg
  assert f"hf://{REPO}" in msg and "drop --config.model.hidden" in msg
  # An explicit tokenizer wins over the checkpoint's.
  with cfg.unlocked():
    cfg.model.hidden = 128
    cfg.data.tokenizer_path = "/elsewhere/tokenizer.json"
  got = init_checkpoint.resolve(cfg, {"data.tokenizer_path"})
  assert got.data.tokenizer_path == "/elsewhere/tokenizer.json" and got.model.hidden == 32


def test_ttt_posttrain_loader_reads_the_snapshot(cached):
  from refine_jax.train import qa_eval
  src, _, _ = cached
  cfg = init_checkpoint.resolve(_pretrain_config(init_checkpoint=f"hf://{REPO}"))
  model = qa_eval.load_model(cfg, cfg.init_checkpoint)
  np.testing.assert_array_equal(np.asarray(_logits(model, IDS)),
                                np.asarray(_logits(load_pretrained(src)[0], IDS)))


def test_missing_id_offline_is_one_clear_line(cached, capsys):
  for call in (lambda: load_pretrained("nobody/missing"),
               lambda: load_pretrained("hf://nobody/missing")):
    with pytest.raises(FileNotFoundError) as e:
      call()
    msg = str(e.value)
    assert "\n" not in msg and "nobody/missing" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "download nobody/missing`" in msg and "local directory" in msg
  with pytest.raises(FileNotFoundError, match=r"^init_checkpoint=hf://nobody/missing@v2: .*"
                     r"download nobody/missing --revision v2"):
    init_checkpoint.resolve(_pretrain_config(init_checkpoint="hf://nobody/missing@v2"))
  assert convert.main(["--from-hf", "nobody/missing", "--out", "unused"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "nobody/missing" in err and "HF_HUB_OFFLINE" in err


@pytest.mark.parametrize("bad", ["hf://fla-hub", "hf://a/b/c", "hf://a--b/c", "hf://a b/c",
                                 "hf://owner/name@", "hf://"])
def test_malformed_id_is_one_clear_line(bad):
  with pytest.raises(ValueError, match=r"^init_checkpoint=.*is not a hub id; write "
                     r"hf://owner/name or hf://owner/name@revision") as e:
    init_checkpoint.resolve(_pretrain_config(init_checkpoint=bad))
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="is not a hub id"):
    init_checkpoint.check_path(bad)


def test_id_syntax(tmp_path, monkeypatch):
  assert hub.parse("hf://fla-hub/delta_net-1.3B-100B") == ("fla-hub/delta_net-1.3B-100B", None)
  assert hub.parse("hf://o/n@refs/pr/1") == ("o/n", "refs/pr/1")
  assert hub.parse("fla-hub/x") is None  # bare ids only where asked for (not in configs)
  assert hub.parse("fla-hub/x", bare=True) == ("fla-hub/x", None)
  monkeypatch.chdir(tmp_path)
  os.makedirs("runs/x")
  assert hub.parse("runs/x", bare=True) is None  # an existing local path is never an id
  init_checkpoint.check_path("hf://o/n")
  with pytest.raises(ValueError, match=r"'o/n' does not exist \(a Hugging Face model is "
                     r"written hf://o/n\)"):
    init_checkpoint.check_path("o/n")


_RUN = ["--config.data.seq_len=64", "--config.data.synthetic_weight=0",
        "--config.train.batch_size=2", "--config.train.steps=1", "--config.train.eval_every=0",
        "--config.train.progress_bar=False", "--config.checkpoint.async_save=False"]


def test_pretrain_starts_from_hub_weights_and_tokenizer(cached, tmp_path, python_subprocess,
                                                         monkeypatch):
  """No model.* flags: the run is the checkpoint's model, its first loss the loaded model's."""
  from refine_jax.interop import bundle
  from refine_jax.train import loop, losses
  from refine_jax.train.metrics import read_metrics
  src, snap, env = cached
  for k, v in env.items():
    monkeypatch.setenv(k, v)  # python_subprocess copies os.environ
  wd = str(tmp_path / "run")
  proc = python_subprocess(["-m", "refine_jax.main", "--config=configs/pretrain.py",
                            f"--config.init_checkpoint=hf://{REPO}", f"--workdir={wd}"] + _RUN)
  assert f"init_checkpoint=hf://{REPO} -> {snap}" in proc.stdout
  with open(os.path.join(wd, "config.json")) as f:
    raw = json.load(f)
  assert raw["model"]["hidden"] == 32 and raw["model"]["vocab_size"] == 61
  assert raw["data"]["tokenizer"] == "hf" and raw["data"]["tokenizer_path"] == snap
  cfg = bundle.config_from_dict(raw)
  batch = next(loop.default_train_iter(cfg))
  assert batch["inputs"].max() < 6  # ids of the checkpoint's 6-word tokenizer, not bytes
  loss = float(losses.ntp_loss(load_pretrained(src)[0], batch, None)[0])
  fresh = float(losses.ntp_loss(_fresh(cfg), batch, None)[0])
  got = read_metrics(os.path.join(wd, "metrics.jsonl"))[0]["loss"]
  assert abs(got - loss) < 1e-5 * abs(loss), (got, loss)
  assert abs(fresh - loss) > 1e-2, (fresh, loss)  # a random init would not pass the above
  # The same command with a conflicting model flag: one line naming field, values and fix.
  proc = python_subprocess(["-m", "refine_jax.main", "--config=configs/pretrain.py",
                            f"--config.init_checkpoint=hf://{REPO}", "--config.model.hidden=64",
                            f"--workdir={tmp_path / 'run2'}"] + _RUN, check=False)
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("error: invalid config: model.hidden=64 (the checkpoint has 32)")
  assert "drop --config.model.hidden" in line


def _fresh(cfg):
  from refine_jax.models import build_model
  return build_model(cfg.model, rngs=nnx.Rngs(0))
