"""Data: tokenizers, synthetic tasks (shared with eval), document sources, Grain pipeline."""

from refine_jax.data.pipeline import (make_eval_batches, make_train_dataset,
                                      make_train_iterator)
from refine_jax.data.tokenizers import (ByteTokenizer, HFTokenizer, SentencePieceTokenizer,
                                        get_tokenizer)
