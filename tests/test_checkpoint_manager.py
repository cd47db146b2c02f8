"""Checkpointer directly: round trip, partial (killed) saves ignored, config mismatch is an error
that quarantines nothing, params-only loading from each accepted path form."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from refine_jax.checkpoint import Checkpointer, load_params
from refine_jax.errors import UserError

import tiny as T


def _state(hidden=16, seed=0):
  model = T.TinyLM(hidden=hidden, rngs=nnx.Rngs(seed))
  params = nnx.state(model, nnx.Param)
  tx = optax.adamw(1e-3)
  opt = tx.init(params)
  opt = jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x + 3, opt)
  return params, opt


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_and_killed_save_ignored(tmp_path):
  params, opt = _state()
  ck = Checkpointer(tmp_path / "checkpoints", keep=2)
  ck.save(3, params, opt, data={"kind": "json", "value": {"position": 3}})
  ck.save(6, params, opt, data={"kind": "bytes", "value": '{"p": 6}'})
  ck.close()
  # What a kill -9 mid-save leaves behind: an unfinished temporary step directory.
  junk = tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234567"
  (junk / "params").mkdir(parents=True)
  (junk / "params" / "garbage").write_bytes(b"\x00" * 10)
  ck = Checkpointer(tmp_path / "checkpoints", keep=2)
  r = ck.restore_latest(_abstract(params), _abstract(opt))
  ck.close()
  assert r.step == 6 and r.data == {"kind": "bytes", "value": '{"p": 6}'}
  assert r.meta["step"] == 6
  _equal(r.params, params)
  _equal(r.opt_state, opt)
  assert jax.tree.structure(r.opt_state) == jax.tree.structure(opt)


def test_model_mismatch_is_an_error_not_a_fallback(tmp_path):
  params, opt = _state(hidden=16)
  ck = Checkpointer(tmp_path / "checkpoints")
  ck.save(1, params, opt)
  ck.save(2, params, opt)
  small_params, small_opt = _state(hidden=8)
  with pytest.raises(UserError, match="no checkpoint .* could be restored.*new --workdir"):
    ck.restore_latest(_abstract(small_params), _abstract(small_opt))
  # Same params, another optimiser-state layout (e.g. posttrain's {inner, outer} states).
  with pytest.raises(UserError, match="no checkpoint .* could be restored"):
    ck.restore_latest(_abstract(params), _abstract({"inner": opt, "outer": opt}))
  ck.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]  # nothing moved aside
  assert not os.path.exists(str(tmp_path / "checkpoints") + ".corrupt")


def test_load_params_from_each_path_form(tmp_path):
  params, opt = _state(seed=1)
  ck = Checkpointer(tmp_path / "run" / "checkpoints")
  ck.save(4, params, opt)
  ck.close()
  target = _abstract(_state(seed=2)[0])
  for path in (tmp_path / "run", tmp_path / "run" / "checkpoints",
               tmp_path / "run" / "checkpoints" / "4",
               tmp_path / "run" / "checkpoints" / "4" / "params"):
    got, src = load_params(path, target)
    _equal(got, params)
    assert src.endswith(os.path.join("4", "params"))
  with pytest.raises(FileNotFoundError, match="checkpoint .*missing.* does not exist"):
    load_params(tmp_path / "missing", target)
  with pytest.raises(ValueError, match="no loadable params"):
    load_params(tmp_path / "run", _abstract(_state(hidden=8)[0]))
