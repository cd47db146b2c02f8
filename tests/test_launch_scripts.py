"""Launch scripts, run for real against emulated clusters (no syntax-only checks).

launch/tpu_pod.sh runs with a fake `gcloud` that plays a 2-worker TPU VM slice: `scp` copies
the file into every worker's home, `ssh --worker=all --command=CMD` runs CMD with bash on every
worker (HOME = that worker's dir, TPU_WORKER_ID / TPU_WORKER_HOSTNAMES set as on a TPU VM).
launch/slurm_gpu.sbatch runs as the batch step of a 2-node job with a fake `srun` that starts
one task per node with SLURM's per-task environment. On the "hosts" a fake `python` /
`python3` records its argv, working directory and environment, so the tests assert the exact
commands each host ran, and that refine_jax's own launch detection
(refine_jax.parallel.mesh.launch_spec, what main uses to call jax.distributed.initialize) sees
a 2-process job with the right process id and coordinator in each host's environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import pytest

from refine_jax.parallel import mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM = os.path.join(ROOT, "launch", "slurm_gpu.sbatch")
WORKERS = 2

# A host's python: one JSON line per call; `-m refine_jax.main` exits with $FAKE_RC.
_FAKE_PYTHON = r'''#!{python}
import json, os, sys
env = {{k: v for k, v in os.environ.items()
        if k.startswith(("TPU_", "SLURM", "XLA_", "NCCL_", "JAX_"))}}
rec = {{"exe": sys.argv[0], "argv": sys.argv[1:], "cwd": os.getcwd(), "env": env}}
with open(os.path.join(os.environ["FAKE_CLUSTER"], "python.jsonl"), "a") as f:
  f.write(json.dumps(rec) + "\n")
if sys.argv[1:3] == ["-m", "refine_jax.main"]:
  print("fake refine_jax.main on host", env.get("TPU_WORKER_ID", env.get("SLURM_PROCID")))
  sys.exit(int(os.environ.get("FAKE_RC", "0")))
'''

# gcloud compute tpus tpu-vm {create|scp|ssh|delete} for a slice of WORKERS workers.
_FAKE_GCLOUD = r'''#!{python}
import json, os, shutil, subprocess, sys
state = os.environ["FAKE_CLUSTER"]
argv = sys.argv[1:]
with open(os.path.join(state, "gcloud.jsonl"), "a") as f:
  f.write(json.dumps(argv) + "\n")
if argv[:3] != ["compute", "tpus", "tpu-vm"]:
  sys.exit("fake gcloud: unexpected " + " ".join(argv))
verb, rest = argv[3], argv[4:]
opts = dict(a[2:].split("=", 1) for a in rest if a.startswith("--") and "=" in a)
homes = [os.path.join(state, "worker%d" % i) for i in range({workers})]
ids = range({workers}) if opts.get("worker", "0") == "all" else [int(opts.get("worker", 0))]
if verb == "create":
  for h in homes:
    os.makedirs(h, exist_ok=True)
elif verb == "scp":
  src, dst = [a for a in rest if not a.startswith("--")]
  assert dst.split(":", 1)[1].startswith("~/"), dst
  for i in ids:
    shutil.copy(src, os.path.join(homes[i], dst.split(":", 1)[1][2:]))
elif verb == "ssh" and "command" in opts:
  hosts = ",".join("w%d" % i for i in range({workers}))
  rc = 0
  for i in ids:
    env = dict(HOME=homes[i], PATH=os.environ["FAKE_WORKER_PATH"], FAKE_CLUSTER=state,
               FAKE_RC=os.environ.get("FAKE_RC", "0"), TPU_WORKER_ID=str(i),
               TPU_WORKER_HOSTNAMES=hosts)
    rc = max(rc, subprocess.run(["bash", "-c", opts["command"]], cwd=homes[i],
                                env=env).returncode)
  sys.exit(rc)
elif verb not in ("ssh", "delete"):
  sys.exit("fake gcloud: unknown verb " + verb)
'''

# srun [options] CMD...: one task per node of the job, each with SLURM's task environment.
_FAKE_SRUN = r'''#!{python}
import json, os, subprocess, sys
state = os.environ["FAKE_CLUSTER"]
argv = sys.argv[1:]
with open(os.path.join(state, "srun.jsonl"), "a") as f:
  f.write(json.dumps(argv) + "\n")
i = 0
while argv[i].startswith("-"):
  i += 1
cmd = argv[i:]
nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
rc = 0
for task in range(nodes):
  env = dict(os.environ, SLURM_PROCID=str(task), SLURM_LOCALID="0", SLURM_NODEID=str(task),
             SLURM_NTASKS=str(nodes), SLURM_STEP_NUM_TASKS=str(nodes),
             SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"],
             SLURMD_NODENAME="node%02d" % (task + 1))
  rc = max(rc, subprocess.run(cmd, env=env).returncode)
sys.exit(rc)
'''


def _exe(path, text):
  with open(path, "w") as f:
    f.write(text.format(python=sys.executable, workers=WORKERS))
  os.chmod(path, 0o755)


def _records(state, name):
  path = os.path.join(state, name)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f]


def _spec_in(env):
  """refine_jax's launch detection in exactly this host environment."""
  with mock.patch.dict(os.environ, env, clear=True):
    return mesh.launch_spec()


# ---------------------------------------------------------------------------- TPU pod slice


def _scrubbed_env(names, *, prefixes=(), **set_vars):
  """This process's environment without the variables a launcher reads (so the host's own
  settings cannot leak into the test), plus `set_vars`."""
  env = {k: v for k, v in os.environ.items()
         if k not in names and not k.startswith(tuple(prefixes))}
  env.update(set_vars)
  return env


@pytest.fixture
def slice_env(tmp_path):
  """(env, state dir, checkout dir): a copy of tpu_pod.sh in a small checkout (so `setup`
  tars something known), a fake gcloud on PATH, the workers' PATH holding a fake python3."""
  repo = tmp_path / "repo"
  for rel, text in {"launch/tpu_pod.sh": open(TPU).read(), "refine_jax/main.py": "# main\n",
                    "configs/midtrain.py": "# cfg\n", "runs/old/metrics.jsonl": "{}\n",
                    ".git/HEAD": "ref\n", "refine_jax/__pycache__/main.pyc": "x"}.items():
    (repo / rel).parent.mkdir(parents=True, exist_ok=True)
    (repo / rel).write_text(text)
  state, local_bin, worker_bin = tmp_path / "state", tmp_path / "bin", tmp_path / "wbin"
  for d in (state, local_bin, worker_bin):
    d.mkdir()
  _exe(local_bin / "gcloud", _FAKE_GCLOUD)
  _exe(worker_bin / "python3", _FAKE_PYTHON)
  env = _scrubbed_env(("ZONE", "TPU_NAME", "PROJECT", "ACCELERATOR", "VERSION", "SPOT",
                       "CONFIG", "BUCKET", "WORKDIR", "KEEP"),
                      PATH=f"{local_bin}:/usr/bin:/bin", FAKE_CLUSTER=str(state),
                      FAKE_WORKER_PATH=f"{worker_bin}:/usr/bin:/bin")
  return env, str(state), str(repo)


def _tpu(env, repo, *args):
  return subprocess.run(["bash", os.path.join(repo, "launch", "tpu_pod.sh"), *args], env=env,
                        capture_output=True, text=True, timeout=60)


def _make_workers(state):
  for i in range(WORKERS):
    os.makedirs(os.path.join(state, f"worker{i}", "refine_jax"), exist_ok=True)


def _by_host(state, key):
  out = {}
  for rec in _records(state, "python.jsonl"):
    out.setdefault(rec["env"].get(key), []).append(rec)
  return out


def test_tpu_all_creates_ships_installs_runs_the_same_command_everywhere_and_deletes(
    slice_env):
  env, state, repo = slice_env
  env.update(ZONE="us-central2-b", TPU_NAME="t1", PROJECT="proj", ACCELERATOR="v5litepod-16",
             SPOT="1", BUCKET="b")
  r = _tpu(env, repo, "all", "--", "--config.train.steps=7", "--config.data.path=a b'c")
  assert r.returncode == 0, r.stderr
  gc = ["compute", "tpus", "tpu-vm"]
  common = ["--zone=us-central2-b", "--project=proj"]
  calls = _records(state, "gcloud.jsonl")
  assert [c[3] for c in calls] == ["create", "scp", "ssh", "ssh", "delete"], calls
  assert calls[0] == gc + ["create", "t1"] + common + [
      "--accelerator-type=v5litepod-16", "--version=tpu-ubuntu2204-base", "--spot"]
  tgz = calls[1][4]
  assert calls[1] == gc + ["scp", tgz, "t1:~/refine_jax.tgz"] + common + ["--worker=all"]
  assert tgz.endswith(".tgz") and not os.path.exists(tgz)  # the local tarball is removed
  for c in calls[2:4]:
    assert c[:-1] == gc + ["ssh", "t1"] + common + ["--worker=all"]
    assert c[-1].startswith("--command=")
  assert calls[4] == gc + ["delete", "t1"] + common + ["--quiet"]

  want_main = ["-m", "refine_jax.main", "--config=configs/midtrain.py",
               "--workdir=gs://b/runs/t1", "--config.train.steps=7", "--config.data.path=a b'c"]
  hosts = _by_host(state, "TPU_WORKER_ID")
  assert sorted(hosts) == [str(i) for i in range(WORKERS)]
  for i in range(WORKERS):
    home = os.path.join(state, f"worker{i}")
    # setup: the checkout unpacked in ~/refine_jax (no runs/, .git or caches), then installed.
    shipped = sorted(os.path.relpath(os.path.join(d, f), os.path.join(home, "refine_jax"))
                     for d, _, fs in os.walk(os.path.join(home, "refine_jax")) for f in fs)
    assert shipped == ["configs/midtrain.py", "launch/tpu_pod.sh", "refine_jax/main.py"]
    recs = hosts[str(i)]
    assert [rec["argv"] for rec in recs] == [
        ["-m", "pip", "install", "-q", "-U", "pip"],
        ["-m", "pip", "install", "-q", "-e", ".[tpu,gcs]"],
        ["-c", "import jax; print(jax.process_index(), jax.local_device_count(), "
               "jax.device_count())"],
        want_main]
    assert all(rec["cwd"] == os.path.join(home, "refine_jax") for rec in recs)
    # run: worker i's output goes to its own ~/refine_jax_run.log.
    with open(os.path.join(home, "refine_jax_run.log")) as f:
      assert f.read() == f"fake refine_jax.main on host {i}\n"
    # What main does with that environment: one process of a 2-process job.
    spec = _spec_in(recs[-1]["env"])
    assert spec is not None and spec["source"] == "TPU_WORKER_HOSTNAMES"
    assert (spec["num_processes"], spec["process_id"]) == (WORKERS, i)
    assert spec["coordinator"] == "w0 (TPU worker 0)" and spec["kwargs"] == {}
  assert "shared mount" not in r.stderr  # gs:// is seen by every worker


def test_tpu_run_quotes_workdir_and_config(slice_env):
  env, state, repo = slice_env
  _make_workers(state)
  env.update(ZONE="z", TPU_NAME="t1", WORKDIR="/mnt/shared/run 1", CONFIG="configs/my cfg.py")
  r = _tpu(env, repo, "run", "--", "--config.train.steps=7")
  assert r.returncode == 0, r.stderr
  assert [c[3:6] for c in _records(state, "gcloud.jsonl")] == [["ssh", "t1", "--zone=z"]]
  mains = [rec["argv"] for rec in _records(state, "python.jsonl")]
  assert mains == [["-m", "refine_jax.main", "--config=configs/my cfg.py",
                    "--workdir=/mnt/shared/run 1", "--config.train.steps=7"]] * WORKERS
  # Not gs://: each worker's own disk unless it is a shared mount; said, but not refused.
  assert "unless it is a shared mount" in r.stderr


def test_tpu_default_workdir_is_per_worker_disk(slice_env):
  env, state, repo = slice_env
  _make_workers(state)
  env.update(ZONE="z", TPU_NAME="t9")
  r = _tpu(env, repo, "run")
  assert r.returncode == 0, r.stderr
  assert [rec["argv"] for rec in _records(state, "python.jsonl")] == [
      ["-m", "refine_jax.main", "--config=configs/midtrain.py", "--workdir=runs/t9"]] * WORKERS
  assert "set BUCKET" in r.stderr


def test_tpu_refuses_missing_zone_and_non_gcs_urls_before_any_gcloud_call(slice_env):
  env, state, repo = slice_env
  r = _tpu(env, repo, "run")
  assert r.returncode == 2 and "set ZONE" in r.stderr
  env.update(ZONE="z", TPU_NAME="t1", WORKDIR="s3://b/run")
  r = _tpu(env, repo, "run")
  assert r.returncode == 2 and "only gs:// URLs" in r.stderr
  env.update(WORKDIR="gs://b/run")
  r = _tpu(env, repo, "bogus")
  assert r.returncode == 2 and "usage:" in r.stderr
  assert _records(state, "gcloud.jsonl") == []


def test_tpu_all_deletes_the_slice_when_a_worker_fails(slice_env):
  """The run's exit status comes through `| tee` (pipefail) and gcloud; the slice is still
  deleted; KEEP=1 keeps it."""
  env, state, repo = slice_env
  env.update(ZONE="z", TPU_NAME="t2", FAKE_RC="3")
  r = _tpu(env, repo, "all")
  assert r.returncode == 3, r.stderr
  assert [c[3] for c in _records(state, "gcloud.jsonl")] == [
      "create", "scp", "ssh", "ssh", "delete"]
  os.remove(os.path.join(state, "gcloud.jsonl"))
  env.update(KEEP="1", FAKE_RC="0")
  r = _tpu(env, repo, "all")
  assert r.returncode == 0, r.stderr
  assert [c[3] for c in _records(state, "gcloud.jsonl")] == ["create", "scp", "ssh", "ssh"]


# ---------------------------------------------------------------------------- SLURM


@pytest.fixture
def job_env(tmp_path):
  """(env, state dir, submit dir) of the batch step of a 2-node job (what sbatch exports),
  with a fake srun and python on PATH."""
  state, bindir, submit = tmp_path / "state", tmp_path / "bin", tmp_path / "submit dir"
  for d in (state, bindir, submit):
    d.mkdir()
  _exe(bindir / "srun", _FAKE_SRUN)
  _exe(bindir / "python", _FAKE_PYTHON)
  env = _scrubbed_env(("CONFIG", "WORKDIR", "VENV"),
                      prefixes=("SLURM", "XLA_", "NCCL_", "JAX_", "TPU_"))
  env.update(PATH=f"{bindir}:/usr/bin:/bin", FAKE_CLUSTER=str(state), SLURM_JOB_NAME="rj",
             SLURM_JOB_ID="42", SLURM_SUBMIT_DIR=str(submit), SLURM_JOB_NUM_NODES="2",
             SLURM_NNODES="2", SLURM_NTASKS="2", SLURM_JOB_NODELIST="node[01-02]")
  return env, str(state), str(submit)


def _sbatch(env, *args):
  # sbatch runs the script from a spool directory: not the submit dir, not the repo.
  return subprocess.run(["bash", SLURM, *args], env=env, capture_output=True, text=True,
                        timeout=60, cwd="/")


def test_slurm_starts_one_identical_main_per_node(job_env):
  env, state, submit = job_env
  env.update(CONFIG="configs/pretrain.py")
  r = _sbatch(env, "--config.train.steps=5", "--config.data.path=a b")
  assert r.returncode == 0, r.stderr
  want = ["-m", "refine_jax.main", "--config=configs/pretrain.py", "--workdir=runs/rj-42",
          "--config.train.steps=5", "--config.data.path=a b"]
  assert _records(state, "srun.jsonl") == [
      ["--kill-on-bad-exit=1", "--ntasks-per-node=1", "python"] + want]
  recs = _records(state, "python.jsonl")
  assert [rec["env"]["SLURM_PROCID"] for rec in recs] == ["0", "1"]
  for i, rec in enumerate(recs):
    assert rec["argv"] == want and rec["cwd"] == submit
    assert rec["exe"] == os.path.join(os.path.dirname(state), "bin", "python")
    e = rec["env"]
    assert e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9" and e["NCCL_DEBUG"] == "WARN"
    assert e["XLA_FLAGS"].split() == ["--xla_gpu_enable_latency_hiding_scheduler=true"]
    # What main does with that environment: JAX's SLURM detection, 2 processes, this one i,
    # coordinator on the first node with the port JAX derives from the job id (42 + 61440).
    spec = _spec_in(e)
    assert spec is not None and spec["source"] == "SLURM" and spec["kwargs"] == {}
    assert (spec["num_processes"], spec["process_id"]) == (2, i)
    assert spec["coordinator"] == "node01:61482"
  assert "refine_jax: 2 node(s), config=configs/pretrain.py, workdir=runs/rj-42" in r.stdout
  assert r.stdout.count("fake refine_jax.main on host") == 2


def test_slurm_defaults_venv_and_user_settings(job_env, tmp_path):
  env, state, submit = job_env
  for k in ("SLURM_JOB_NAME", "SLURM_JOB_ID"):
    env.pop(k)
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
  _exe(venv / "bin" / "python", _FAKE_PYTHON)
  env.update(VENV=str(venv), XLA_FLAGS="--xla_dump_to=/tmp/d",
             XLA_PYTHON_CLIENT_MEM_FRACTION=".5", NCCL_DEBUG="INFO")
  r = _sbatch(env)
  assert r.returncode == 0, r.stderr
  recs = _records(state, "python.jsonl")
  assert len(recs) == 2
  for rec in recs:
    assert rec["exe"] == str(venv / "bin" / "python")  # the venv's python, on every node
    assert rec["argv"] == ["-m", "refine_jax.main", "--config=configs/midtrain.py",
                           "--workdir=runs/refine_jax-local"]
    e = rec["env"]
    assert e["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/d",
                                      "--xla_gpu_enable_latency_hiding_scheduler=true"]
    assert (e["XLA_PYTHON_CLIENT_MEM_FRACTION"], e["NCCL_DEBUG"]) == (".5", "INFO")
  env.update(WORKDIR="/shared/run 2")
  os.remove(os.path.join(state, "python.jsonl"))
  assert _sbatch(env).returncode == 0
  assert {rec["argv"][3] for rec in _records(state, "python.jsonl")} == {
      "--workdir=/shared/run 2"}


def test_slurm_job_fails_when_a_task_fails(job_env):
  env, state, _ = job_env
  env.update(FAKE_RC="3")
  r = _sbatch(env)
  assert r.returncode == 3
  assert len(_records(state, "python.jsonl")) == 2


def test_slurm_header_asks_for_one_task_per_node_like_srun():
  """The #SBATCH header and the srun line agree: one process per node with all its GPUs."""
  with open(SLURM) as f:
    header = dict(l[len("#SBATCH "):].strip().split("=", 1) for l in f
                  if l.startswith("#SBATCH "))
  assert header["--ntasks-per-node"] == "1" and int(header["--gpus-per-node"]) >= 1
