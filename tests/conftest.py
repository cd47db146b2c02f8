"""Shared pytest setup: the repo root and tests/ on sys.path, and a helper to run Python in a
subprocess with N fake CPU devices (XLA_FLAGS must be set before JAX is imported, so it can't be
done in-process once another test has imported JAX)."""

import contextlib
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for _p in (TESTS, ROOT):  # tests/ too: helpers such as tiny.py import by name in any import mode
  if _p not in sys.path:
    sys.path.insert(0, _p)


def run_python(args, *, devices=1, timeout=600, cwd=ROOT, check=True):
  """`python ARGS...` with `devices` host CPU devices; returns the CompletedProcess."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS, env.get("PYTHONPATH", "")])  # + tiny.py
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable] + list(args), cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"python {' '.join(args)} failed (rc={proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def lower_text(fn, args, platform):
  """StableHLO text of jit(fn)(*args) lowered for `platform` ("cuda" | "tpu") on this CPU
  machine; skips the test when this jaxlib cannot lower for it."""
  import jax  # pylint: disable=g-import-not-at-top
  from pallas_kernels import pallas_gpu  # pylint: disable=g-import-not-at-top
  target = pallas_gpu.abstract_gpu() if platform == "cuda" else contextlib.nullcontext()
  try:
    with target:
      return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
  except ImportError as e:
    # Only a jaxlib built without that dialect is excused (the missing module is jaxlib's or
    # jax's binding of it); an ImportError from the project's own kernel code fails.
    missing = e.name or ""
    if not missing.startswith(("jaxlib", "jax._src.lib")):
      raise
    pytest.skip(f"cannot lower for {platform} here: {e}")


def naive_nll(model, batch):
  """Reference held-out sums of an LM batch, float64: (nll_sum, tokens, correct) over
  loss_mask (all ones if absent), with a plain log-softmax. A row holding several documents
  (segment_ids) is run one document at a time, so no state crosses a document boundary."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
  mask = np.asarray(batch.get("loss_mask", np.ones(targets.shape)), np.float64)
  seg = batch.get("segment_ids")
  if seg is None or all(len(set(np.asarray(s).tolist())) == 1 for s in seg):
    logits = np.asarray(model(inputs).logits, np.float64)
  else:
    rows = []
    for r in range(inputs.shape[0]):
      s = np.asarray(seg[r])
      cuts = [0] + [t for t in range(1, len(s)) if s[t] != s[t - 1]] + [len(s)]
      rows.append(np.concatenate([np.asarray(model(inputs[r:r + 1, a:b]).logits[0], np.float64)
                                  for a, b in zip(cuts[:-1], cuts[1:])]))
    logits = np.stack(rows)
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  correct = (logits.argmax(-1) == targets).astype(np.float64)
  return float((nll * mask).sum()), float(mask.sum()), float((correct * mask).sum())


@pytest.fixture
def python_subprocess():
  return run_python
