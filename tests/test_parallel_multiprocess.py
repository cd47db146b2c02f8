"""Real multi-process runs: `python -m refine_jax.main` as 2 processes on localhost (2 CPU
devices each, CPU collectives over gloo) launched with the environment SLURM's srun gives, or
the generic JAX_COORDINATOR_ADDRESS form; compared with the same job as 1 process with 4 devices.

What must hold: the same per-step losses for any process count (every process reads the same
global stream and keeps its rows), one checkpoint / metrics file / event file (not one per
process), exact resume after a SIGKILL of one process, and one clear line (exit 2) when the
coordinator cannot be reached or the processes disagree on their count."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from refine_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2"]
_TINY = ["--config.model.hidden=32", "--config.model.layers=1", "--config.model.heads=2",
         "--config.model.chunk_size=16", "--config.data.seq_len=32",
         "--config.train.batch_size=8", "--config.train.eval_every=2",
         "--config.train.eval_batches=1", "--config.checkpoint.every_steps=2",
         "--config.train.progress_bar=False", "--config.mesh.dist_timeout_s=120"] + _MESH
_MID = ["--config.data.seq_len=64", "--config.midtrain.warmup_steps=2",
        "--config.midtrain.run_eval=False", "--config.refine.num_chunks=4",
        "--config.refine.log_rollouts_every=2"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _port_free(port):
  with socket.socket() as s:
    try:
      s.bind(("127.0.0.1", port))
      return True
    except OSError:
      return False


def _slurm_job_id():
  """A job id whose coordinator port (JAX derives it from the id, as on a real cluster) is free
  here, so parallel test workers do not collide."""
  while True:
    job = random.randint(10_000, 10_000_000)
    if _port_free(job % 4096 + 61440):
      return str(job)


def _env(devices, extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  for k in [k for k in env if k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC",
                                            "JAX_PROCESS_ID", "OMPI_", "TPU_WORKER"))]:
    del env[k]
  env.update(extra)
  return env


def _start(config, args, workdir, *, processes, devices, style="slurm", counts=None, log=None):
  """Starts the job as `processes` OS processes; returns their Popen objects."""
  job, port = _slurm_job_id(), _free_port()
  procs = []
  for i in range(processes):
    if processes == 1:
      extra = {}
    elif style == "slurm":  # what `srun --ntasks=2` on one node exports
      extra = dict(SLURM_JOB_ID=job, SLURM_STEP_NODELIST="localhost", SLURM_NODELIST="localhost",
                   SLURM_NTASKS=str(processes), SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
                   SLURM_STEP_NUM_NODES="1", SLURM_NNODES="1")
    else:
      extra = dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str((counts or [processes] * processes)[i]),
                   JAX_PROCESS_ID=str(i))
    out = open(f"{log or workdir}.p{i}.log", "w")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "refine_jax.main", f"--config={config}", f"--workdir={workdir}"]
        + list(args), cwd=ROOT, env=_env(devices, extra), stdout=out, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, workdir, timeout=600, log=None):
  deadline = time.time() + timeout
  codes = []
  for i, p in enumerate(procs):
    try:
      codes.append(p.wait(timeout=max(1, deadline - time.time())))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      codes.append("timeout")
  logs = [open(f"{log or workdir}.p{i}.log").read() for i in range(len(procs))]
  return codes, logs


def _run(config, args, workdir, **kw):
  procs = _start(config, args, workdir, **kw)
  codes, logs = _wait(procs, workdir)
  assert codes == [0] * len(procs), "\n\n".join(l[-4000:] for l in logs)
  return logs


def _losses(workdir, key="loss"):
  return [r[key] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]


def _assert_close(a, b, rtol=1e-4):
  assert len(a) == len(b) and a, (a, b)
  for x, y in zip(a, b):
    assert abs(x - y) <= rtol * abs(y), (a, b)


def test_two_processes_equal_one_process_pretrain(tmp_path):
  """SLURM-style 2 x 2 devices vs 1 x 4: same losses and held-out perplexity, files once."""
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  args = _TINY + ["--config.train.steps=4"]
  _run("configs/pretrain.py", args, two, processes=2, devices=2)
  _run("configs/pretrain.py", args, one, processes=1, devices=4)
  _assert_close(_losses(two), _losses(one))
  _assert_close([r["eval_ppl"] for r in read_metrics(os.path.join(two, "metrics.jsonl"))
                 if "eval_ppl" in r],
                [r["eval_ppl"] for r in read_metrics(os.path.join(one, "metrics.jsonl"))
                 if "eval_ppl" in r])
  assert [r["step"] for r in read_metrics(os.path.join(two, "metrics.jsonl"))] == [1, 2, 3, 4]
  events = [f for f in os.listdir(two) if f.startswith("events.out.tfevents")]
  assert len(events) == 1, events  # process 0 only
  for step in ("2", "4"):  # one Orbax checkpoint; the data state once for the whole job
    assert sorted(os.listdir(os.path.join(two, "checkpoints", step, "data"))) == [
        "commit_success.txt", "global.json"]
  assert json.load(open(os.path.join(two, "config.json")))["mesh"]["fsdp"] == 2


@pytest.mark.slow
def test_two_processes_equal_one_process_midtrain(tmp_path):
  """ReFINE (selection, rollouts, GRPO) with the generic JAX_COORDINATOR_ADDRESS launch."""
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  args = _TINY + _MID + ["--config.train.steps=4"]
  _run("configs/midtrain.py", args, two, processes=2, devices=2, style="jax")
  _run("configs/midtrain.py", args, one, processes=1, devices=4)
  _assert_close(_losses(two), _losses(one))
  _assert_close(_losses(two, "ntp_loss"), _losses(one, "ntp_loss"))
  assert len(read_metrics(os.path.join(two, "rollouts.jsonl"))) == len(
      read_metrics(os.path.join(one, "rollouts.jsonl")))  # written once, not per process


@pytest.mark.slow
def test_sigkill_one_process_then_rerun_resumes_exactly(tmp_path):
  """SIGKILL one of 2 processes after a checkpoint, stop the other, rerun the same command:
  the finished run's losses equal an uninterrupted 1-process run (iterator state included)."""
  wd, straight = str(tmp_path / "run"), str(tmp_path / "straight")
  args = _TINY + ["--config.train.steps=10", "--config.train.schedule=constant",
                  "--config.train.warmup_steps=0"]
  procs = _start("configs/pretrain.py", args, wd, processes=2, devices=2, log=wd + "-a")
  ckpt = os.path.join(wd, "checkpoints", "4")
  deadline = time.time() + 300
  while not os.path.isdir(ckpt) and time.time() < deadline and procs[0].poll() is None:
    time.sleep(0.2)
  assert os.path.isdir(ckpt), open(wd + "-a.p0.log").read()[-3000:]
  procs[1].send_signal(signal.SIGKILL)
  procs[0].send_signal(signal.SIGKILL)  # as srun --kill-on-bad-exit would
  for p in procs:
    p.wait()
  logs = _run("configs/pretrain.py", args, wd, processes=2, devices=2)
  assert "resumed" in logs[0]
  _run("configs/pretrain.py", args, straight, processes=1, devices=4)
  rows = read_metrics(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(1, 11))
  _assert_close(_losses(wd), _losses(straight))


def test_unreachable_coordinator_fails_with_one_line(tmp_path):
  """A process whose coordinator never answers exits 2 after mesh.dist_timeout_s, naming it."""
  port = _free_port()
  env = _env(2, dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                     JAX_PROCESS_ID="1"))
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-m", "refine_jax.main", "--config=configs/pretrain.py",
                         f"--workdir={tmp_path / 'run'}", "--config.mesh.dist_timeout_s=3"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert time.time() - t0 < 60
  assert f"127.0.0.1:{port}" in proc.stderr and "within 3 s" in proc.stderr
  assert "Traceback" not in proc.stderr and "Check failure" not in proc.stderr
  assert not os.path.exists(tmp_path / "run")


def test_mismatched_process_counts_fail_with_one_line(tmp_path):
  """Process 1 believes in 3 processes, process 0 in 2: both say so in one line and exit 2."""
  procs = _start("configs/pretrain.py", _TINY + ["--config.train.steps=1"], str(tmp_path / "r"),
                 processes=2, devices=2, style="jax", counts=[2, 3])
  codes, logs = _wait(procs, str(tmp_path / "r"), timeout=300)
  assert codes == [2, 2], [l[-3000:] for l in logs]
  for log in logs:
    assert "process 0: 2, process 1: 3" in log and "formed a job of 2" in log, log[-3000:]
    assert "Traceback" not in log


def test_generic_launch_env_needs_count_and_id(tmp_path):
  env = _env(1, dict(JAX_COORDINATOR_ADDRESS="127.0.0.1:1"))
  proc = subprocess.run([sys.executable, "-m", "refine_jax.main", "--config=configs/pretrain.py",
                         f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert "JAX_NUM_PROCESSES and JAX_PROCESS_ID" in proc.stderr
  assert "Traceback" not in proc.stderr
