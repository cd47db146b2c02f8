"""The Colab notebook: valid nbformat, and executed end to end on CPU (slow: ~2 min here)."""
from __future__ import annotations

import os

import nbclient  # test dependencies (pyproject's test extra), on every platform
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB = os.path.join(ROOT, "launch", "colab_refine.ipynb")


def test_notebook_is_valid_and_installs_from_the_repo():
  nb = nbformat.read(NB, as_version=4)
  nbformat.validate(nb)
  src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert "pip\", \"install\", \"-q\", \"-e\", ROOT" in src
  assert "configs/midtrain.py" in src and "load_pretrained" in src
  for c in nb.cells:  # outputs are not shipped
    assert c.cell_type != "code" or not c.outputs


@pytest.mark.slow
def test_notebook_executes_on_cpu(tmp_path):
  nb = nbformat.read(NB, as_version=4)
  env = dict(REFINE_JAX_ROOT=ROOT, REFINE_JAX_NOTEBOOK_SMOKE="1", JAX_PLATFORMS="cpu",
             MPLBACKEND="Agg")
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    # The notebook writes runs/colab-midtrain under ROOT; point it at tmp via a first cell.
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import os; os.environ['HOME'] = {str(tmp_path)!r}"))
    src = nb.cells[4].source
    assert 'WORKDIR = os.path.abspath("runs/colab-midtrain")' in src
    nb.cells[4].source = src.replace('os.path.abspath("runs/colab-midtrain")',
                                     repr(str(tmp_path / "run")))
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  outs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
  assert "midtrain done" in outs
  assert (tmp_path / "run" / "metrics.jsonl").exists()
  assert "In the beginning God created" in outs
