"""Every user mistake at an entry point is one line on stderr, naming the field or file and
the fix, with exit status 2 and no traceback (a real bug still shows one)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

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
    (MAIN, ["--config=configs/midtrain.py", "--config.eval.progres=False"],  # misspelled field
     ["--config.eval.progres", "no such config field"]),
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
    ("refine_jax.export", ["--run", "{tmp}/afile", "--out", "{tmp}/o"],
     ["--run", "afile is a file"]),
    ("refine_jax.generate", ["--checkpoint", "{tmp}/nothing", "--prompt", "hi",
                             "--max-new-tokens", "-1"], ["--max-new-tokens -1", ">= 0"]),
]


@pytest.mark.parametrize("module,config", [(MAIN, "configs/midtrian.py"),
                                           ("refine_jax.eval", "configs/eval_rulr.py")])
def test_misspelled_config_alone_is_one_line_listing_the_configs(tmp_path, module, config):
  """The bare form, no overrides: ml_collections loads the file lazily, after flag parsing."""
  proc = _run(module, [f"--config={config}"], tmp_path)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if "error: " in l]
  assert len(errors) == 1, proc.stderr
  assert f"--config={config}" in errors[0] and "configs/midtrain.py" in errors[0]
  assert "configs/eval_ruler.py" in errors[0]


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


def _model_dirs(tmp):
  """Directories a user might point the argparse CLIs at by mistake (no model needed: each
  mistake is caught before anything loads)."""
  (tmp / "afile").write_text("not a checkpoint\n")
  for name in ("empty", "notes/sub", "run/checkpoints/3", "badcfg", "badst", "cutst"):
    (tmp / name).mkdir(parents=True)
  (tmp / "notes" / "readme.txt").write_text("x")
  (tmp / "badcfg" / "config.json").write_text('{"model_type": "delta')
  (tmp / "badst" / "config.json").write_text("{}")
  (tmp / "badst" / "model.safetensors").write_bytes(b"\x00garbage")
  # A real file cut short, as a partial download leaves it.
  save_file({"w": np.ones((64, 64), np.float32)}, str(tmp / "cutst" / "model.safetensors"))
  blob = (tmp / "cutst" / "model.safetensors").read_bytes()
  (tmp / "cutst" / "model.safetensors").write_bytes(blob[:len(blob) - 100])
  (tmp / "cutst" / "config.json").write_text("{}")
  return tmp


CONVERT, EXPORT, GENERATE = "convert", "export", "generate"
OUT = ["--out", "{tmp}/o"]
IN_PROCESS = [
    # (CLI, args, what the one line must say)
    (CONVERT, ["--from-hf", "{tmp}/nothing"] + OUT, ["--from-hf", "does not exist", "hub id"]),
    (CONVERT, ["--from-hf", "{tmp}/afile"] + OUT, ["--from-hf", "afile is a file"]),
    (CONVERT, ["--from-hf", "{tmp}/empty"] + OUT, ["--from-hf", "empty directory"]),
    (CONVERT, ["--from-hf", "{tmp}/badcfg"] + OUT, ["config.json is not a valid json file"]),
    (CONVERT, ["--from-hf", "{tmp}/badst"] + OUT, ["model.safetensors is not a valid"]),
    (CONVERT, ["--from-hf", "{tmp}/cutst"] + OUT, ["model.safetensors is not a valid",
                                                   "truncated"]),
    (CONVERT, ["--from-hf", "{tmp}/badst", "--dtype", "bfloat16"] + OUT, ["--to-hf only"]),
    (CONVERT, ["--from-hf", "{tmp}/notes", "--out", "{tmp}/afile"], ["--out", "is a file"]),
    (CONVERT, ["--to-hf", "{tmp}/notes"] + OUT, ["notes", "no config.json"]),
    (CONVERT, ["--to-hf", "{tmp}/run", "--out", "{tmp}/run/"], ["is the input itself"]),
    (CONVERT, ["--to-hf", "{tmp}/run", "--max-shard-size", "5XB"] + OUT,
     ["--max-shard-size 5XB", "e.g. 5GB"]),
    (CONVERT, ["--to-hf", "{tmp}/run", "--max-shard-size=-1GB"] + OUT, ["--max-shard-size -1GB"]),
    (EXPORT, ["--run", "{tmp}/nothing"] + OUT, ["nothing", "does not exist"]),
    (EXPORT, ["--run", "{tmp}/empty"] + OUT, ["--run", "empty directory"]),
    (EXPORT, ["--run", "{tmp}/run", "--step", "9"] + OUT, ["--step 9", "steps here: 3"]),
    (EXPORT, ["--run", "{tmp}/notes", "--step", "9"] + OUT, ["--step 9", "no checkpoints/"]),
    (GENERATE, ["--checkpoint", "{tmp}/nothing", "--prompt", "x", "--temperature", "-1"],
     ["--temperature -1.0", ">= 0", "greedy"]),
    (GENERATE, ["--checkpoint", "{tmp}/nothing", "--prompt", "x", "--top-k", "-2"], ["--top-k -2"]),
    (GENERATE, ["--checkpoint", "{tmp}/badst", "--prompt", "x"], ["--checkpoint", "badst"]),
    (GENERATE, ["--checkpoint", "{tmp}/afile", "--prompt", "x"], ["--checkpoint", "is a file"]),
]


@pytest.mark.parametrize("cli,args,want", IN_PROCESS,
                         ids=[f"{c}:{' '.join(a[:2] + a[3:4])}"[:60] for c, a, _ in IN_PROCESS])
def test_argparse_cli_mistakes_in_process(tmp_path, capsys, cli, args, want):
  import importlib
  main = importlib.import_module(f"refine_jax.{cli}").main
  tmp = _model_dirs(tmp_path)
  assert main([a.replace("{tmp}", str(tmp)) for a in args]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"refine_jax.{cli}: error: "), err
  for w in want:
    assert w in err, err
