"""Config files load, and each bad resolved config gets one clear error naming field and fix."""

import pytest

from configs import base, pretrain
from refine_jax.train.validate import validate_config


def _cfg():
  return pretrain.get_config()


def test_pretrain_config_is_valid():
  c = _cfg()
  validate_config(c, num_devices=8, process_count=1)
  assert c.stage == "pretrain" and c.model.arch == "deltanet"
  for field in ("seed", "init_checkpoint"):
    assert field in c
  for section, fields in {"train": ("batch_size", "steps", "lr"), "data": ("seq_len",),
                          "mesh": ("data", "fsdp", "tensor"), "checkpoint": ("every_steps",),
                          "model": ("arch", "hidden", "layers", "heads", "vocab_size")}.items():
    for f in fields:
      assert f in c[section], f"{section}.{f} missing"
  assert "refine" in base.get_config()


@pytest.mark.parametrize("edit, devices, match", [
    (lambda c: setattr(c, "stage", "nope"), 1, r"stage='nope' is unknown"),
    (lambda c: setattr(c.train, "batch_size", 6), 4, r"train.batch_size=6 is not divisible by "
                                                     r"the data-parallel size"),
    (lambda c: (setattr(c.mesh, "data", 4), setattr(c.mesh, "fsdp", 4)), 8, r"needs 16 devices"),
    (lambda c: setattr(c.data, "seq_len", 100), 1, r"data.seq_len=100 is not a multiple of "
                                                   r"model.chunk_size=64"),
    (lambda c: setattr(c.model, "chunk_size", 48), 1, r"model.chunk_size=48 must be a power"),
    (lambda c: setattr(c.train, "lr", -1.0), 1, r"train.lr=-1.0"),
    (lambda c: setattr(c.train, "steps", 0), 1, r"train.steps=0 must be a positive integer"),
    (lambda c: setattr(c.train, "schedule", "step"), 1, r"train.schedule='step'"),
    (lambda c: setattr(c.model, "vocab_size", 100), 1, r"model.vocab_size=100 is smaller than "
                                                       r"the tokenizer's vocab_size=259"),
    (lambda c: setattr(c.model, "heads", 3), 1, r"model.hidden=128 is not divisible by "
                                                r"model.heads=3"),
    (lambda c: setattr(c, "init_checkpoint", "/no/such/dir"), 1, r"init_checkpoint="),
    (lambda c: setattr(c.checkpoint, "keep", 0), 1, r"checkpoint.keep=0"),
])
def test_bad_config_errors(edit, devices, match):
  c = _cfg()
  edit(c)
  with pytest.raises(ValueError, match=match):
    validate_config(c, num_devices=devices, process_count=1)


def test_batch_must_split_over_processes_when_each_reads_its_own_rows():
  c = _cfg()
  c.train.batch_size = 6
  validate_config(c, num_devices=2, process_count=4)  # "global": every process has every row
  c.data.host_split = "documents"
  with pytest.raises(ValueError, match="number of processes 4"):
    validate_config(c, num_devices=2, process_count=4)
  c.data.host_split = "hosts"
  with pytest.raises(ValueError, match="data.host_split='hosts'"):
    validate_config(c, num_devices=2, process_count=1)


def test_unknown_field_is_rejected():
  c = _cfg()
  c.lock()
  with pytest.raises(AttributeError, match="batch_sise"):
    c.train.batch_sise = 3


def test_config_defaults_name_the_libraries_own_lists():
  """refine_jax/config.py imports nothing from the package, so its literal defaults must match
  the lists their owners validate against."""
  from refine_jax import config as base  # pylint: disable=g-import-not-at-top
  from refine_jax.data import tasks  # pylint: disable=g-import-not-at-top
  from refine_jax.models import config as model_config  # pylint: disable=g-import-not-at-top
  from refine_jax.refine import step  # pylint: disable=g-import-not-at-top
  assert tuple(base.default_data_config().synthetic_tasks.split(",")) == tasks.TASK_NAMES
  assert base.default_model_config().remat in model_config.REMAT_CHOICES
  assert base.default_refine_config().capture in step.CAPTURES
  assert base.default_refine_config().group in step.GROUPS
