"""Reading and writing HF-style safetensors checkpoints (single file or sharded + index).

Only safetensors: a pickle (.bin / .pt / .pth) can run arbitrary code when loaded, so such
directories are refused with a message telling the user how to convert them.
Tensors are numpy arrays (bfloat16 via ml_dtypes), so nothing here needs torch or a device.
"""
from __future__ import annotations

import json
import os

import numpy as np
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointFormatError(ValueError):
  """A checkpoint directory that cannot be read as safetensors (or is inconsistent)."""


def _refuse_pickles(ckpt_dir: str) -> None:
  pickles = sorted(f for f in os.listdir(ckpt_dir) if f.endswith(_PICKLE_SUFFIXES))
  raise CheckpointFormatError(
      f"{ckpt_dir} has no {SINGLE_FILE} or {INDEX_FILE}"
      + (f"; it holds pickle weights {pickles}, which refine_jax refuses to load (unpickling can "
         "run arbitrary code). Re-save them as safetensors on a trusted machine, e.g. "
         "`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)`."
         if pickles else "."))


def _read_index(index_path: str):
  try:
    with open(index_path) as f:
      return json.load(f).get("weight_map")
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
    raise CheckpointFormatError(f"{index_path} is not a valid safetensors index ({e}); download "
                                "it again.") from e


def weight_files(ckpt_dir: str) -> list[str]:
  """The safetensors files of a checkpoint dir: the index's shards, else model.safetensors."""
  index_path = os.path.join(ckpt_dir, INDEX_FILE)
  if os.path.exists(index_path):
    weight_map = _read_index(index_path)
    if not isinstance(weight_map, dict) or not weight_map:
      raise CheckpointFormatError(f"{index_path} has no 'weight_map' {{tensor name: shard file}}.")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.exists(os.path.join(ckpt_dir, s))]
    if missing:
      raise CheckpointFormatError(
          f"{index_path} names shard(s) {missing} that are not in {ckpt_dir}; download the "
          "missing shard files (or fix the index).")
    return [os.path.join(ckpt_dir, s) for s in shards]
  single = os.path.join(ckpt_dir, SINGLE_FILE)
  if os.path.exists(single):
    return [single]
  _refuse_pickles(ckpt_dir)
  return []  # unreachable


def read_tensors(ckpt_dir: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint dir as {name: numpy array} (dtype as stored)."""
  if not os.path.isdir(ckpt_dir):
    raise CheckpointFormatError(f"checkpoint directory {ckpt_dir!r} does not exist.")
  index_map = None
  index_path = os.path.join(ckpt_dir, INDEX_FILE)
  if os.path.exists(index_path):
    index_map = _read_index(index_path)
  tensors: dict[str, np.ndarray] = {}
  for path in weight_files(ckpt_dir):
    try:
      with safe_open(path, framework="numpy") as f:
        for name in f.keys():
          if name in tensors:
            raise CheckpointFormatError(
                f"tensor {name!r} appears in more than one shard ({path}).")
          tensors[name] = f.get_tensor(name)
    except SafetensorError as e:  # garbage or a partial download
      raise CheckpointFormatError(f"{path} is not a valid safetensors file ({e}); it is corrupt "
                                  "or truncated: download or export it again.") from e
  if index_map is not None:
    # The index and the shards must agree, else a partial download would load silently.
    absent = sorted(set(index_map) - set(tensors))
    if absent:
      raise CheckpointFormatError(
          f"{index_path} lists tensors missing from their shards: {absent[:5]}"
          f"{' ...' if len(absent) > 5 else ''}; re-download the shards.")
  return tensors


def write_tensors(out_dir: str, tensors: dict[str, np.ndarray], *,
                  max_shard_bytes: int | None = None) -> list[str]:
  """Writes {name: array} as model.safetensors, or as shards + index past max_shard_bytes.

  Shard names follow HF ("model-00001-of-00003.safetensors"); metadata format=pt lets
  transformers' `from_pretrained` accept the files. Returns the written file names.
  """
  os.makedirs(out_dir, exist_ok=True)
  arrays = {n: np.ascontiguousarray(tensors[n]) for n in sorted(tensors)}
  meta = {"format": "pt"}
  if max_shard_bytes is None or sum(a.nbytes for a in arrays.values()) <= max_shard_bytes:
    save_file(arrays, os.path.join(out_dir, SINGLE_FILE), metadata=meta)
    return [SINGLE_FILE]
  # huggingface_hub's splitter: the shard names and index layout transformers expects.
  split = split_state_dict_into_shards_factory(
      arrays, get_storage_size=lambda a: a.nbytes, max_shard_size=int(max_shard_bytes),
      filename_pattern="model{suffix}.safetensors")
  for fname, names in split.filename_to_tensors.items():
    save_file({n: arrays[n] for n in names}, os.path.join(out_dir, fname), metadata=meta)
  with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
    json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, f, indent=2)
  return sorted(split.filename_to_tensors) + [INDEX_FILE]
