"""The package's import rules (WORKSPACE.md): no stage module imports another stage (they share
train/ppo.py, qa_eval.py, update.py), and no library module is over 400 lines."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("pretrain", "midtrain", "posttrain", "ttt")


def _imports(path):
  tree = ast.parse(open(path).read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
  return out


def test_no_stage_imports_another():
  for stage in STAGES:
    got = _imports(os.path.join(ROOT, "refine_jax", "train", f"{stage}.py"))
    others = {f"refine_jax.train.{s}" for s in STAGES if s != stage}
    assert not got & others, (stage, sorted(got & others))


def test_no_library_module_over_400_lines():
  long = []
  for base in ("refine_jax", "pallas_kernels"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, base)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(dirpath, name)
          n = sum(1 for _ in open(path))
          if n > 400:
            long.append(f"{os.path.relpath(path, ROOT)}: {n}")
  assert not long, long


def test_config_files_load_from_anywhere_without_sys_path_edits(tmp_path, monkeypatch):
  """Configs import the installed refine_jax and load the files they build on by path
  (refine_jax.config.config_file): none edits sys.path, and each loads from another cwd."""
  import glob  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from refine_jax.experiments.arms import load_config_file  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
  assert len(files) > 20
  monkeypatch.chdir(tmp_path)
  before = list(sys.path)
  for f in files:
    text = open(f).read()
    assert "sys.path" not in text and "from configs" not in text, f
    if not f.endswith(("__init__.py", "base.py", "common.py")):
      assert load_config_file(f) is not None, f
  assert sys.path == before
