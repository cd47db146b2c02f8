"""Tokenizers: byte default, a sentencepiece model trained here, a tokenizer.json built here."""

import json

import pytest

from refine_jax.data import tokenizers
from refine_jax.config import default_data_config

TEXT = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
        "There and back again. One of the special magic numbers for quiet-river is: 1234567.\n")


def _cfg(**kw):
  c = default_data_config()
  c.update(kw)
  return c


def test_byte_tokenizer_roundtrip_and_specials():
  tok = tokenizers.get_tokenizer(_cfg())
  ids = tok.encode("héllo")
  assert ids == list("héllo".encode("utf-8"))
  assert tok.vocab_size == 259 and {tok.pad_id, tok.bos_id, tok.eos_id} == {256, 257, 258}
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, 999]) == "héllo"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  import sentencepiece as spm
  d = tmp_path_factory.mktemp("sp")
  corpus = d / "corpus.txt"
  corpus.write_text(TEXT * 50 + "Where is the needle? A haystack of words.\n" * 20)
  prefix = str(d / "tiny")
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=prefix, vocab_size=60,
                                 model_type="bpe", pad_id=3, minloglevel=2)
  return prefix + ".model"


def test_sentencepiece_model(sp_model):
  tok = tokenizers.get_tokenizer(_cfg(tokenizer="sentencepiece", tokenizer_path=sp_model))
  assert tok.vocab_size == 60 and tok.pad_id == 3
  assert len({tok.bos_id, tok.eos_id, tok.pad_id}) == 3
  ids = tok.encode("The sky is blue.")
  # The ids are sentencepiece's own (no offset, no added specials), not just in range.
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  assert ids == spm.SentencePieceProcessor(model_file=sp_model).encode("The sky is blue.")
  assert len(ids) < len("The sky is blue.")  # BPE merges, not one id per byte
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == "The sky is blue."


def _hf_tokenizer_json(path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  from tokenizers import decoders
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([TEXT] * 20, trainer)
  tok.save(str(path))


def test_hf_tokenizer_file_and_directory(tmp_path):
  _hf_tokenizer_json(tmp_path / "tokenizer.json")
  for path in (str(tmp_path / "tokenizer.json"), str(tmp_path)):
    tok = tokenizers.get_tokenizer(_cfg(tokenizer="hf", tokenizer_path=path))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    ids = tok.encode("The sun is yellow.")
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == "The sun is yellow."
    assert tok.vocab_size <= 300
  # tokenizer_config.json names the specials when present.
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": {"content": "</s>"}, "eos_token": "<s>"}))
  tok = tokenizers.get_tokenizer(_cfg(tokenizer="hf", tokenizer_path=str(tmp_path)))
  assert (tok.bos_id, tok.eos_id) == (2, 1)


def test_missing_and_corrupt_tokenizer_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="data.tokenizer_path"):
    tokenizers.get_tokenizer(_cfg(tokenizer="sentencepiece",
                                  tokenizer_path=str(tmp_path / "nope.model")))
  with pytest.raises(FileNotFoundError, match="data.tokenizer_path"):
    tokenizers.get_tokenizer(_cfg(tokenizer="hf", tokenizer_path=str(tmp_path / "x.json")))
  with pytest.raises(ValueError, match="data.tokenizer_path is empty"):
    tokenizers.get_tokenizer(_cfg(tokenizer="sentencepiece"))
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"\x00\x01 definitely not a protobuf" * 10)
  with pytest.raises(ValueError, match="not a valid sentencepiece model"):
    tokenizers.get_tokenizer(_cfg(tokenizer="sentencepiece", tokenizer_path=str(bad)))
  bad_json = tmp_path / "tokenizer.json"
  bad_json.write_text("{not json")
  with pytest.raises(ValueError, match="not a valid HF tokenizer.json"):
    tokenizers.get_tokenizer(_cfg(tokenizer="hf", tokenizer_path=str(bad_json)))
  with pytest.raises(ValueError, match="data.tokenizer='gpt9'"):
    tokenizers.get_tokenizer(_cfg(tokenizer="gpt9"))
