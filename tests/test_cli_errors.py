"""Every user mistake at an entry point is one line on stderr, naming the field or file and
the fix, with exit status 2 and no traceback (a real bug still shows one)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, args, tmp_path, extra_env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **(extra_env or {}))
  return subprocess.run([sys.executable, "-m", module] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _files(tmp_path):
  (tmp_path / "afile").write_text("not a checkpoint\n")
  (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
  return tmp_path


MAIN = "refine_jax.main"
CASES = [
    # (module, args, what the one line must say)
    (MAIN, ["--config=configs/pretrain.py", "--config.train.batch_sise=3"],
     ["--config.train.batch_sise", "no such config field", "batch_size"]),
    (MAIN, ["--config=configs/nope.py"], ["--config=configs/nope.py", "could not be loaded"]),
    (MAIN, ["--config=configs/pretrain.py", "--config.train.steps=abc"],
     ["--config.train.steps=abc"]),
    (MAIN, ["--config=configs/midtrain.py", "--config.refine.selection=foo"],
     ["refine.selection='foo'", "choose one of"]),
    (MAIN, ["--config=configs/midtrain.py", "--config.refine.lambda_rl=-1"],
     ["refine.lambda_rl=-1.0", "must be >= 0"]),
    (MAIN, ["--config=configs/pretrain.py", "--config.init_checkpoint={tmp}/afile"],
     ["init_checkpoint=", "is a file"]),
    (MAIN, ["--config=configs/pretrain.py", "--config.init_checkpoint={tmp}/nothing"],
     ["init_checkpoint=", "does not exist"]),
    (MAIN, ["--config=configs/pretrain.py", "--workdir={tmp}/afile"],
     ["--workdir=", "afile"]),
    (MAIN, ["--config=configs/pretrain.py", "--config.data.source=jsonl",
            "--config.data.path={tmp}/bad.jsonl"], ["bad.jsonl:1", "data.text_field"]),
    (MAIN, ["--config=configs/pretrain.py", "--config.data.source=jsonl",
            "--config.data.path={tmp}/none.jsonl"], ["data.path", "matches no file"]),
    ("refine_jax.eval", ["--config=configs/eval_ruler.py", "--config.checkpoint={tmp}/nothing"],
     ["nothing"]),
    ("refine_jax.eval", ["--config=configs/eval_ruler.py", "--config.eval.taks=x"],
     ["--config.eval.taks", "no such config field"]),
    ("refine_jax.convert", ["--from-hf", "{tmp}/nothing", "--out", "{tmp}/o"], ["nothing"]),
]


@pytest.mark.parametrize("module,args,want", CASES,
                         ids=[f"{m.split('.')[-1]}:{' '.join(a[1:]) or a[0]}"[:60]
                              for m, a, _ in CASES])
def test_user_mistakes_are_one_line(tmp_path, module, args, want):
  tmp = _files(tmp_path)
  args = [a.replace("{tmp}", str(tmp)) for a in args]
  if module == MAIN and not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={tmp}/run")
  proc = _run(module, args + (["--config.train.progress_bar=False"] if module == MAIN else []),
              tmp_path)
  # "error: ..." (absl entry points) or "refine_jax.convert: error: ..." (argparse ones).
  errors = [l for l in proc.stderr.splitlines() if "error: " in l]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for w in want:
    assert w in errors[0], errors[0]
