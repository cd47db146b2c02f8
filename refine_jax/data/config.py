"""`default_data_config()`: every data.* field, its default, and what it means."""

import ml_collections

from refine_jax.data.tasks import TASK_NAMES


def default_data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Tokens per training sequence (inputs/targets are [b, seq_len]; packing reads seq_len + 1).
  c.seq_len = 256
  # Where documents come from: "embedded" (shipped KJV + Shakespeare, no downloads),
  # "text" (.txt; one document per file, or per blank-line-separated block with
  # text_split="paragraph"), "jsonl", "parquet", "array_record". .gz/.xz text is read directly.
  # "recall": no documents, the synthetic recall stream of data.recall (one sample per row).
  c.source = "embedded"
  c.path = ""  # files for non-embedded sources: comma-separated paths or globs
  c.text_field = "text"  # jsonl / parquet column / ArrayRecord json key holding the text
  c.text_split = "file"  # "file" | "paragraph": how .txt files are cut into documents
  c.embedded = "kjv,shakespeare"  # which embedded corpora to use (comma-separated)
  # Held-out split: every holdout_every-th document of the source (never seen in training),
  # unless eval_path names separate files of the same source kind.
  c.holdout_every = 50
  c.eval_path = ""
  # Tokenizer: "byte" (259 ids, offline default), "sentencepiece" (.model) or "hf"
  # (tokenizer.json file or directory). The special token strings are optional overrides
  # for "hf" (else tokenizer_config.json, else common names; bos/pad fall back to eos).
  c.tokenizer = "byte"
  c.tokenizer_path = ""
  c.tokenizer_bos = ""
  c.tokenizer_eos = ""
  c.tokenizer_pad = ""
  c.add_bos = True  # prepend bos to every document
  c.add_eos = True  # append eos to every document
  # Mixture, opt-in: about this fraction of training tokens are synthetic task samples
  # (RULER-style NIAH / variable tracking, prompt + answer, from a seed stream disjoint from
  # eval) mixed into the documents. 0 = your corpus only. A model trained with it writes "the
  # special magic numbers" text, so only configs whose eval needs the format set it
  # (configs/pretrain.py, midtrain.py, posttrain.py, ttt.py: 0.1).
  c.synthetic_weight = 0.0
  c.synthetic_tasks = ",".join(TASK_NAMES)
  c.synthetic_min_tokens = 64  # prompt length is drawn in [min, seq_len - 48] tokens
  c.synthetic_haystack = "mixed"  # "noise" (RULER's), "corpus" (a training doc) or "mixed"
  c.synthetic_loss = "all"  # "all": NTP on the whole sample; "answer": only on the answer
  # data.source="recall" (refine_jax/data/recall.py): pairs key=value pairs open each row, a
  # periodic low-entropy haystack follows, every key is asked again at power-law offsets.
  # Training rows come from the "train" seed stream (base data.shuffle_seed); held-out rows
  # (the loop's eval, the experiment's headroom gate) from the "eval" stream with base eval_seed.
  c.recall = ml_collections.ConfigDict()
  c.recall.pairs = 8
  c.recall.queries = 0       # queries per row (0 = pairs); more repeat keys (denser recall)
  c.recall.value_len = 3     # digits per value (a rollout of refine.rollout_len >= it holds one)
  c.recall.power_a = 0.1     # p(query offset o) ∝ (o + 1)^(power_a - 1): small = short gaps
  c.recall.eval_seed = 1
  # Packed rows hold several documents; segment_ids (1, 2, ... per document, 0 = padding) make
  # every mixer start each document from a fresh state (fast weights, short convolutions,
  # attention), as if it were alone, and keep ReFINE's rollouts inside one document. False
  # drops segment_ids from the batches: each row runs as one stream across documents.
  c.reset_at_documents = True
  # Order: documents are shuffled (and reshuffled every epoch) from this seed.
  c.shuffle_seed = 0
  # Packed rows are shuffled in a window of this many sequences (0 = off), so one long
  # document does not fill consecutive rows of a batch.
  c.shuffle_window = 128
  # Threads that read + tokenise documents ahead of packing (0 = in the calling thread;
  # raise it for slow BPE tokenizers or remote files). Any value gives the same batches.
  c.read_threads = 0
  # Multi-process runs: "global" = every process reads the whole stream and keeps the rows
  # its devices hold, so a step's batch is the same for any number of processes (a run can
  # move between topologies); "documents" = each process reads every P-th document and packs
  # its own rows (1/P of the tokenising per host; the stream then depends on P).
  c.host_split = "global"
  # Eval batch size; 0 means train.batch_size.
  c.eval_batch_size = 0
  return c
