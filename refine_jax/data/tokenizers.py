"""Tokenizers behind one small interface: encode / decode / vocab_size / bos_id / eos_id / pad_id.

`ByteTokenizer` is the offline default (UTF-8 bytes 0..255, then pad/bos/eos). Sentencepiece
`.model` files and HF `tokenizer.json` files are loaded from disk; nothing is downloaded.
`encode` never adds specials: the data pipeline and task encoders add bos/eos themselves.
"""

from __future__ import annotations

import json
import os
from typing import Protocol, Sequence

import sentencepiece as spm
from tokenizers import Tokenizer as _HF


class Tokenizer(Protocol):
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes are ids 0..255; pad=256, bos=257, eos=258; vocab_size=259."""

  vocab_size = 259
  pad_id = 256
  bos_id = 257
  eos_id = 258

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    # Specials and out-of-range ids (a model may sample them) are dropped, not decoded.
    data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")


def _check_file(path: str, field: str, what: str) -> None:
  if not path:
    raise ValueError(f"{field} is empty: set it to the path of a {what}.")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{field}={path!r}: no such file (expected a {what}).")


class SentencePieceTokenizer:
  """A sentencepiece `.model` file. pad falls back to eos when the model defines none."""

  def __init__(self, path: str):
    _check_file(path, "data.tokenizer_path", "sentencepiece .model file")
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError on bad protos
      raise ValueError(f"data.tokenizer_path={path!r} is not a valid sentencepiece model "
                       f"({type(e).__name__}: {e}).") from e
    self.vocab_size = int(self._sp.get_piece_size())
    self.eos_id = int(self._sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(f"sentencepiece model {path!r} has no eos piece; retrain it with "
                       "eos_id >= 0.")
    self.bos_id = int(self._sp.bos_id()) if self._sp.bos_id() >= 0 else self.eos_id
    self.pad_id = int(self._sp.pad_id()) if self._sp.pad_id() >= 0 else self.eos_id

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size
           and int(i) not in (self.bos_id, self.eos_id, self.pad_id)]
    return self._sp.decode(ids)


_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]")
_EOS_NAMES = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "[SEP]")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")


class HFTokenizer:
  """An HF `tokenizer.json` (a file, or a directory holding it and maybe
  `tokenizer_config.json`). Special tokens come from the arguments, then
  tokenizer_config.json, then common names; bos and pad fall back to eos."""

  def __init__(self, path: str, *, bos: str = "", eos: str = "", pad: str = ""):
    config = {}
    if os.path.isdir(path):
      cfg_path = os.path.join(path, "tokenizer_config.json")
      if os.path.exists(cfg_path):
        with open(cfg_path) as f:
          config = json.load(f)
      path = os.path.join(path, "tokenizer.json")
    _check_file(path, "data.tokenizer_path", "HF tokenizer.json")
    try:
      self._tok = _HF.from_file(path)
    except Exception as e:
      raise ValueError(f"data.tokenizer_path={path!r} is not a valid HF tokenizer.json "
                       f"({type(e).__name__}: {e}).") from e
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

    def find(explicit, key, names):
      for name in (explicit, _token_name(config.get(key)), *names):
        if name and self._tok.token_to_id(name) is not None:
          return int(self._tok.token_to_id(name))
      return None

    eos = find(eos, "eos_token", _EOS_NAMES)
    if eos is None:
      raise ValueError(f"HF tokenizer {path!r}: no eos token found; set data.tokenizer_eos "
                       "to the eos token string.")
    self.eos_id = eos
    self.bos_id = find(bos, "bos_token", _BOS_NAMES)
    self.bos_id = eos if self.bos_id is None else self.bos_id
    self.pad_id = find(pad, "pad_token", _PAD_NAMES)
    self.pad_id = eos if self.pad_id is None else self.pad_id

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    return self._tok.decode(ids, skip_special_tokens=True)


def _token_name(value) -> str:
  # tokenizer_config.json stores either "<s>" or {"content": "<s>", ...}.
  if isinstance(value, dict):
    return value.get("content", "")
  return value or ""


def get_tokenizer(data_cfg) -> Tokenizer:
  """Builds the tokenizer named by data.tokenizer (byte | sentencepiece | hf)."""
  kind = data_cfg.tokenizer
  if kind == "byte":
    return ByteTokenizer()
  if kind == "sentencepiece":
    return SentencePieceTokenizer(data_cfg.tokenizer_path)
  if kind == "hf":
    return HFTokenizer(data_cfg.tokenizer_path, bos=data_cfg.tokenizer_bos,
                       eos=data_cfg.tokenizer_eos,
                       pad=data_cfg.tokenizer_pad)
  raise ValueError(f"data.tokenizer={kind!r}: use 'byte', 'sentencepiece' or 'hf'.")
