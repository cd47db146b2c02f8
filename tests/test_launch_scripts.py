"""Launch scripts: syntax (bash -n) and the commands they issue, with fake gcloud / srun."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu_pod.sh")
SLURM = os.path.join(ROOT, "launch", "slurm_gpu.sbatch")


@pytest.mark.parametrize("script", [TPU, SLURM])
def test_bash_syntax(script):
  r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


def _fake_bin(tmp_path, name, exit_code=0):
  """A fake `name` on PATH that appends its argv (one arg per line) to calls.log."""
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  log = tmp_path / "calls.log"
  fake = bindir / name
  fake.write_text(f'#!/bin/bash\n{{ echo "== {name}"; printf "%s\\n" "$@"; }} >> {log}\n'
                  f'if [[ "$*" == *refine_jax.main* ]]; then exit {exit_code}; fi\n')
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
  return env, log


def test_tpu_requires_zone(tmp_path):
  env, _ = _fake_bin(tmp_path, "gcloud")
  env.pop("ZONE", None)
  r = subprocess.run(["bash", TPU, "run"], env=env, capture_output=True, text=True)
  assert r.returncode == 2 and "set ZONE" in r.stderr


def test_tpu_run_issues_one_command_on_all_workers(tmp_path):
  env, log = _fake_bin(tmp_path, "gcloud")
  env.update(ZONE="us-central2-b", TPU_NAME="t1", WORKDIR="/gcs/b/run 1")
  r = subprocess.run(["bash", TPU, "run", "--", "--config.train.steps=7"], env=env,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  args = log.read_text().splitlines()
  assert args[:6] == ["== gcloud", "compute", "tpus", "tpu-vm", "ssh", "t1"]
  assert "--zone=us-central2-b" in args and "--worker=all" in args
  cmd = next(a for a in args if a.startswith("--command="))
  assert "python3 -m refine_jax.main --config=configs/midtrain.py" in cmd
  assert r"--workdir=/gcs/b/run\ 1 --config.train.steps=7" in cmd


def test_tpu_workdir_on_gcs(tmp_path):
  """BUCKET makes gs://BUCKET/runs/<TPU_NAME> the run dir; other URL schemes are refused."""
  env, log = _fake_bin(tmp_path, "gcloud")
  env.update(ZONE="z", TPU_NAME="t1", BUCKET="b")
  r = subprocess.run(["bash", TPU, "run"], env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  cmd = next(a for a in log.read_text().splitlines() if a.startswith("--command="))
  assert "--workdir=gs://b/runs/t1" in cmd and "shared mount" not in r.stderr
  env.update(WORKDIR="s3://b/run")
  log.unlink()
  r = subprocess.run(["bash", TPU, "run"], env=env, capture_output=True, text=True)
  assert r.returncode == 2 and "only gs:// URLs" in r.stderr and not log.exists()


def test_tpu_all_deletes_the_slice_even_when_the_run_fails(tmp_path):
  env, log = _fake_bin(tmp_path, "gcloud", exit_code=3)
  env.update(ZONE="z", TPU_NAME="t2")
  r = subprocess.run(["bash", TPU, "all"], env=env, capture_output=True, text=True)
  assert r.returncode == 3
  calls = [l for l in log.read_text().splitlines()]
  verbs = [calls[i + 4] for i, l in enumerate(calls) if l == "== gcloud"]
  assert verbs == ["create", "scp", "ssh", "ssh", "delete"], verbs


def test_slurm_runs_main_under_srun(tmp_path):
  env, log = _fake_bin(tmp_path, "srun")
  env.update(SLURM_JOB_NAME="rj", SLURM_JOB_ID="42", SLURM_SUBMIT_DIR=ROOT,
             CONFIG="configs/pretrain.py")
  r = subprocess.run(["bash", SLURM, "--config.train.steps=5"], env=env, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr
  args = log.read_text().splitlines()
  i = args.index("refine_jax.main")
  assert args[i - 2:] == ["python", "-m", "refine_jax.main", "--config=configs/pretrain.py",
                          "--workdir=runs/rj-42", "--config.train.steps=5"]
  assert "--kill-on-bad-exit=1" in args
