"""Mesh resolution, logical->mesh rules, and an 8-device (data=2, fsdp=2, tensor=2) run whose
losses equal the 1-device run, then resumed on 1 device from the 8-device checkpoint
(subprocesses: the device count is fixed at JAX import)."""

import json

import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from refine_jax.parallel import logical_to_spec, resolve_mesh_shape

_SCRIPT = r"""
import json, sys
import jax
from flax import nnx
from refine_jax.train import loop, losses, update
import tiny as T
mesh = tuple(int(x) for x in sys.argv[1].split(","))
config = T.tiny_config(steps=int(sys.argv[3]), every=0, batch_size=8, mesh=mesh)
config.train.schedule = "constant"  # lr independent of train.steps, so runs can be extended
result = loop.run_training(config, sys.argv[2], update.loss_spec(losses.ntp_loss), eval_fn=None,
                           model_fn=lambda: T.TinyLM(rngs=nnx.Rngs(0)),
                           train_iter=T.SyntheticIterator(8, config.data.seq_len))
rows = [json.loads(l) for l in open(sys.argv[2] + "/metrics.jsonl")]
state = nnx.state(result.model, nnx.Param)
print("RESULT" + json.dumps({
    "devices": jax.device_count(),
    "losses": [r["loss"] for r in rows],
    "grad_norms": [r["grad_norm"] for r in rows],
    "up_spec": str(state["up"]["kernel"].get_value().sharding.spec),
    "head_spec": str(state["head"]["kernel"].get_value().sharding.spec),
}))
"""


def _result(proc):
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def test_8_device_mesh_matches_1_device_and_restores_on_1(tmp_path, python_subprocess):
  one = _result(python_subprocess(["-c", _SCRIPT, "-1,1,1", str(tmp_path / "one"), "6"]))
  eight = _result(python_subprocess(["-c", _SCRIPT, "2,2,2", str(tmp_path / "eight"), "4"],
                                    devices=8))
  assert one["devices"] == 1 and eight["devices"] == 8
  # Params really are split: embed over fsdp, mlp/vocab over tensor.
  assert eight["up_spec"] == str(P("fsdp", "tensor"))
  assert eight["head_spec"] == str(P("fsdp", "tensor"))
  np.testing.assert_allclose(eight["losses"], one["losses"][:4], rtol=2e-5)
  np.testing.assert_allclose(eight["grad_norms"], one["grad_norms"][:4], rtol=1e-4)
  assert one["losses"][-1] < one["losses"][0]
  # The 8-device checkpoint (step 4) resumes on a 1-device mesh and continues identically.
  resumed = _result(python_subprocess(["-c", _SCRIPT, "-1,1,1", str(tmp_path / "eight"), "6"]))
  np.testing.assert_allclose(resumed["losses"], one["losses"], rtol=2e-5)


def _mesh_cfg(d, f, t):
  return ml_collections.ConfigDict(dict(data=d, fsdp=f, tensor=t))


def test_resolve_mesh_shape():
  assert resolve_mesh_shape(_mesh_cfg(-1, 1, 1), 8) == (8, 1, 1)
  assert resolve_mesh_shape(_mesh_cfg(2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 16 devices"):
    resolve_mesh_shape(_mesh_cfg(4, 4, 1), 8)
  with pytest.raises(ValueError, match="only one of"):
    resolve_mesh_shape(_mesh_cfg(-1, -1, 1), 8)
  with pytest.raises(ValueError, match="uses 4 of 8"):
    resolve_mesh_shape(_mesh_cfg(2, 2, 1), 8)
  with pytest.raises(ValueError, match="mesh.fsdp=0"):
    resolve_mesh_shape(_mesh_cfg(1, 0, 1), 8)


class _FakeMesh:
  def __init__(self, **shape):
    self.shape = shape


def test_logical_to_spec_rules():
  mesh = _FakeMesh(data=2, fsdp=4, tensor=2)
  assert logical_to_spec(("embed", "mlp"), (64, 256), mesh) == P("fsdp", "tensor")
  assert logical_to_spec(("vocab", "embed"), (260, 64), mesh) == P("tensor", "fsdp")
  # Not divisible -> replicated, never a wrong split.
  assert logical_to_spec(("vocab", "embed"), (259, 64), mesh) == P(None, "fsdp")
  # A mesh axis is used once per array (heads and mlp both map to tensor).
  assert logical_to_spec(("heads", "mlp"), (8, 8), mesh) == P("tensor", None)
  assert logical_to_spec(("norm",), (64,), mesh) == P(None)
  assert logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)
  # Size-1 axes are dropped.
  assert logical_to_spec(("embed",), (64,), _FakeMesh(data=8, fsdp=1, tensor=1)) == P(None)
  with pytest.raises(ValueError, match="unknown logical axis name 'experts'"):
    logical_to_spec(("experts",), (4,), mesh)
