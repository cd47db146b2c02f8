"""Every config field and its default, once, in commented sections.

`base_config()` is the config every stage file in configs/ starts from: model, data, train,
refine, midtrain, posttrain, ttt, eval, mesh, checkpoint. Code reads `config.<section>.<field>`
and never repeats a default; a saved config.json is merged over `base_config()` when it is
loaded (interop/bundle.config_from_dict), so runs saved before a field existed still load.
This module imports nothing from refine_jax: any module may import it.
"""

import importlib.util
import os
import sys

from ml_collections import config_dict


def _placeholders(fields: dict) -> config_dict.ConfigDict:
  """A sub-section whose None defaults become untyped placeholders, so
  `--config.model.attention.window=2048` works (config_flags cannot override a plain None)."""
  return config_dict.ConfigDict(
      {k: config_dict.placeholder(object) if v is None else v for k, v in fields.items()})


# model.attention.* (softmax-attention layers: arch "transformer" or model.attn_layers).
ATTENTION_DEFAULTS = dict(
    num_kv_heads=None,   # None = model.heads (no GQA); must divide model.heads
    head_dim=None,       # None = model.hidden // model.heads
    rope_theta=10000.0,
    window=None,         # None = full causal; W = each token sees itself and the W-1 before it
    qkv_bias=False,
    impl=None,           # jax.nn.dot_product_attention implementation: None/"xla" or "cudnn"
)

# model.lact.* (arch "lact": sliding-window attention + chunked fast-weight SwiGLU).
LACT_DEFAULTS = dict(
    num_fw_heads=4,        # fast-weight heads; must divide model.hidden
    inter_multi=1.0,       # fast SwiGLU width = inter_multi * (hidden / num_fw_heads)
    chunk=2048,            # fast-weight update chunk (tokens)
    window=2048,           # sliding attention window (tokens, self included); None = full
    rope_theta=10000.0,
    qkv_bias=False,
    attn_qk_norm=False,    # RMSNorm over q and k (full width) before everything else
    qkv_silu=True,         # SiLU on fast q, k (and v unless no_v_silu)
    no_v_silu=False,
    base_lr=1e-3,          # lr = softplus(lr_proj(x) + softplus^-1(base_lr))
    use_momentum=True,
    use_muon=False,
    learnable_ttt_scale=True,
    ttt_nope=False,        # True: no RoPE on fast q/k
    w0_w2_low_rank=-1,     # >0: init W0, W2 = L @ R + 0.5 I with this rank (LaCT 760M uses 32)
    fw_init_gain=0.5,      # init gain of the low-rank factors
    impl=None,             # jax.nn.dot_product_attention implementation for the no-cache path
)


def default_model_config() -> config_dict.ConfigDict:
  """model.*: architecture and sizes (refine_jax/models/config.py validates and derives).
  Names mirror FLA's DeltaNetConfig / GatedDeltaNetConfig: hidden_size -> hidden,
  num_hidden_layers -> layers, num_heads -> heads; the rest keep FLA's names. None = the arch's
  FLA default where DeltaNet and Gated DeltaNet differ."""
  c = config_dict.ConfigDict()
  c.arch = "deltanet"          # deltanet | gated_deltanet | transformer | lact
  c.vocab_size = 259           # the default byte tokenizer: 256 bytes + pad/bos/eos
  c.hidden = 256
  c.layers = 4
  c.heads = 4
  # DeltaNet / Gated DeltaNet mixer (FLA names).
  c.expand_k = 1.0             # head_k_dim = hidden * expand_k / heads unless head_dim is set
  c.expand_v = config_dict.placeholder(float)   # None: 1.0 DeltaNet, 2.0 GDN
  c.head_dim = config_dict.placeholder(int)     # GDN head_k_dim (FLA head_dim)
  c.num_v_heads = config_dict.placeholder(int)  # GDN value heads (GVA); None = heads
  c.use_short_conv = True
  c.conv_size = 4
  c.use_beta = True
  c.use_gate = config_dict.placeholder(bool)    # None: False DeltaNet, True GDN
  c.qk_norm = "l2"             # l2 | sum
  c.qk_activation = "silu"     # silu | relu | elu | identity
  c.allow_neg_eigval = False
  # MLP, norms, init, head.
  c.hidden_ratio = 4
  c.intermediate_size = config_dict.placeholder(int)
  c.norm_eps = 1e-6
  c.initializer_range = 0.02
  c.tie_word_embeddings = False
  # Hybrids: indices of softmax-attention layers inside a deltanet / gated_deltanet / lact
  # model (FLA's `attn.layers`). arch "transformer" makes every layer attention.
  c.attn_layers = ()
  # Compute dtype; params (and the residual stream) stay float32. "auto" = bfloat16 on GPU/TPU,
  # float32 on CPU (where bf16 is slow and tests compare against float32 references).
  c.dtype = "auto"
  # LM head dtype: "float32" = float32 operands and result whatever model.dtype is (RL
  # log-probs, entropies, PPO ratios and NTP need logits without bf16 rounding: bf16 steps are
  # 0.125 once |logit| >= 16; MaxText's logits_dot_in_fp32); "model" = model.dtype.
  c.logits_dtype = "float32"
  c.backend = "auto"           # pallas_kernels backend
  c.chunk_size = 64            # fast-weight chunk length (also the cache_at advance length)
  # Layers: one lax.scan over stacked params (compile time flat in depth); hybrids unroll.
  c.scan_layers = True
  # Per-block rematerialisation in the backward pass: none | full (keep only each block's
  # input) | dots (keep matmul outputs) | dots_no_batch (keep weight-matmul outputs only).
  c.remat = config_dict.FieldReference("none", field_type=object)  # bools: full / none
  c.attention = _placeholders(ATTENTION_DEFAULTS)
  c.lact = _placeholders(LACT_DEFAULTS)
  return c


def default_data_config() -> config_dict.ConfigDict:
  """data.*: source, tokenizer, packing (refine_jax/data)."""
  c = config_dict.ConfigDict()
  c.seq_len = 256  # tokens per training sequence (packing reads seq_len + 1)
  # Documents: "embedded" (shipped KJV + Shakespeare, no downloads), "text" (.txt, .gz/.xz;
  # one document per file, or per blank-line block with text_split="paragraph"), "jsonl",
  # "parquet", "array_record"; "recall": the synthetic recall stream of data.recall.
  c.source = "embedded"
  c.path = ""  # files for non-embedded sources: comma-separated paths or globs
  c.text_field = "text"  # jsonl / parquet column / ArrayRecord json key holding the text
  c.text_split = "file"  # "file" | "paragraph": how .txt files are cut into documents
  c.embedded = "kjv,shakespeare"  # which embedded corpora to use (comma-separated)
  # Held-out split: every holdout_every-th document (never trained on), unless eval_path names
  # separate files of the same source kind.
  c.holdout_every = 50
  c.eval_path = ""
  # Tokenizer: "byte" (259 ids, offline default), "sentencepiece" (.model) or "hf"
  # (tokenizer.json file or directory). The special token strings override, for "hf", what
  # tokenizer_config.json says (else common names; bos/pad fall back to eos).
  c.tokenizer = "byte"
  c.tokenizer_path = ""
  c.tokenizer_bos = ""
  c.tokenizer_eos = ""
  c.tokenizer_pad = ""
  c.add_bos = True  # prepend bos to every document
  c.add_eos = True  # append eos to every document
  # Opt-in mixture: about this fraction of training tokens are synthetic RULER-style NIAH /
  # variable-tracking samples (a seed stream disjoint from eval). A model trained with it writes
  # "the special magic numbers", so only configs whose eval asks those questions set it.
  c.synthetic_weight = 0.0
  c.synthetic_tasks = ("niah_single,niah_multikey,niah_multivalue,niah_multiquery,"
                       "variable_tracking")
  c.synthetic_min_tokens = 64  # prompt length is drawn in [min, seq_len - 48] tokens
  c.synthetic_haystack = "mixed"  # "noise" (RULER's), "corpus" (a training doc) or "mixed"
  c.synthetic_loss = "all"  # "all": NTP on the whole sample; "answer": only on the answer
  # source="recall" (data/recall.py): key=value pairs open each row, a periodic low-entropy
  # haystack follows, every key is asked again at power-law offsets. Training rows come from the
  # "train" seed stream (base shuffle_seed), held-out rows from "eval" with base eval_seed.
  c.recall = config_dict.ConfigDict()
  c.recall.pairs = 8
  c.recall.queries = 0       # queries per row (0 = pairs); more repeat keys (denser recall)
  c.recall.value_len = 3     # digits per value (a rollout of refine.rollout_len >= it holds one)
  c.recall.power_a = 0.1     # p(query offset o) ∝ (o + 1)^(power_a - 1): small = short gaps
  c.recall.eval_seed = 1
  # Packed rows: segment_ids (1, 2, ... per document, 0 = padding) make every mixer start each
  # document from a fresh state and keep ReFINE's rollouts inside one document. False: each row
  # runs as one stream across documents.
  c.reset_at_documents = True
  c.shuffle_seed = 0     # documents are shuffled (and reshuffled every epoch) from this seed
  c.shuffle_window = 128  # packed rows shuffled in a window of this many sequences (0 = off)
  # Threads that read + tokenise ahead of packing (0 = the calling thread); any value gives
  # the same batches.
  c.read_threads = 0
  # Multi-process: "global" = every process reads the whole stream and keeps its rows (a
  # step's batch does not depend on the process count); "documents" = each process reads every
  # P-th document and packs its own rows (1/P of the tokenising; the stream depends on P).
  c.host_split = "global"
  c.eval_batch_size = 0  # 0 = train.batch_size
  return c


def default_train_config() -> config_dict.ConfigDict:
  """train.*: optimiser and loop (refine_jax/train/optim.py, loop.py)."""
  c = config_dict.ConfigDict()
  c.batch_size = 8       # global sequences per step (split over mesh.data * mesh.fsdp)
  c.steps = 1000         # total optimiser steps (a resumed run stops at the same step)
  c.lr = 3e-4            # peak AdamW learning rate
  c.warmup_steps = 100   # linear warmup from 0
  c.schedule = "cosine"  # after warmup: cosine | constant | linear
  c.min_lr_ratio = 0.1   # final lr = lr * min_lr_ratio (cosine / linear)
  c.weight_decay = 0.1   # decoupled, on matrices only (decay_all: on every parameter)
  c.decay_all = False    # True = the official ReFINE code's AdamW (decays norms/biases too)
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.grad_clip = 1.0      # global-norm clip; 0 disables
  # Each update's batch in N sequential microbatches, gradients averaged in one jitted step
  # (memory only: the update is the same).
  c.microbatches = 1
  # NTP stages: passes over each batch x minibatches per pass (one update each); > 1 gives an
  # SFT baseline with ReFINE's update count (refine.ppo_epochs x refine.ppo_minibatches).
  c.ntp_epochs = 1
  c.ntp_minibatches = 1
  c.mu_dtype = "float32"  # AdamW first moment: float32 | bfloat16 (saves 2 bytes/param)
  c.eval_every = 100     # held-out perplexity every N steps (and at the end); 0 = never
  c.eval_batches = 4     # batches of the held-out split per eval
  c.progress_bar = True  # tqdm bar with loss and tokens/s (process 0)
  return c


def default_refine_config() -> config_dict.ConfigDict:
  """refine.*: the ReFINE step (refine/step.py), with the paper's mid-training defaults."""
  c = config_dict.ConfigDict()
  c.num_chunks = 8             # c: selected positions (= rollout group members) per sequence
  c.rollout_len = 5            # k: tokens per rollout
  c.rollouts_per_position = 1  # n: samples per selected position
  # GRPO group: "position" = the n samples of one (sequence, position), as the official code
  # does for n > 1; "sequence" = all c * n rollouts of a sequence; "auto" = position if n > 1.
  c.group = "auto"
  c.temperature = 1.0          # sampling temperature (<= 0: greedy)
  c.top_k = 0                  # 0 = off
  c.top_p = 1.0                # 1.0 = off
  c.selection = "entropy"      # entropy | uniform | argmax | argmin
  c.tau = 1.0                  # selection temperature: softmax(H / tau) inside each chunk
  c.smooth_kernel = 0          # odd average-pool width over the entropy; 0 = k rounded up to odd
  c.margin = 20                # no rollout starts within `margin` tokens of the sequence start
  c.reward = "cosine"          # cosine | binary | hybrid | any reward.register()ed name
  c.lambda_rl = 0.2
  c.lambda_ntp = 1.0
  c.clip_eps = 0.2
  c.dual_clip = 3.0            # <= 1 disables dual clip
  c.aggregation = "token-mean"  # token-mean | seq-mean
  c.kl_coef = 0.0              # > 0 needs a frozen reference model (k3 estimator)
  c.adv_eps = 1e-6
  # What the rollout caches are cut from (memory only: the same positions, rollouts and loss).
  # "all": one forward pass keeps every chunk's state and the whole sequence's k/v/conv inputs
  # per layer (~0.6 GB per layer per 16K sequence at 1.3B); "strided": one pass keeps every
  # capture_stride-th chunk's state and each layer's input, and a position's cache recomputes
  # the features of up to capture_stride chunks (fast-weight layers; a few % more FLOPs);
  # "selected": a first pass without them picks the positions, then the pass that feeds the
  # loss keeps only those positions' pieces (one more forward pass). PPO updates always
  # capture only the stored positions.
  c.capture = "all"
  c.capture_stride = 8         # "strided": chunks per kept state (memory / S, window S chunks)
  c.ppo_epochs = 1             # > 1 or minibatches > 1: collect once, several updates
  c.ppo_minibatches = 1
  c.log_rollouts_every = 50    # steps between rollouts.jsonl / TensorBoard samples; 0 = off
  c.num_logged_rollouts = 4
  c.log_grad_share = False     # grad_share: the RL terms' share of the update's gradient norm
                               # (one more backward pass per step)
  return c


def default_midtrain_config() -> config_dict.ConfigDict:
  """midtrain.*: what happens around the ReFINE loop (train/midtrain.py)."""
  c = config_dict.ConfigDict()
  c.warmup_steps = 200   # NTP warm-up when init_checkpoint is empty; 0 = none
  c.warmup_lr = 3e-3
  c.summary_eval = True  # greedy next-sequence match before/after -> midtrain_summary.json
  c.run_eval = True      # the eval.* suite at the end
  return c


def default_posttrain_config() -> config_dict.ConfigDict:
  """posttrain.*: the nested step and its data (train/posttrain.py)."""
  c = config_dict.ConfigDict()
  c.mode = "nested_refine"  # nested_refine | nested_sft | sft
  c.answer_cap = 32         # SFT on at most this many answer tokens (+ eos)
  c.inner_lr_scale = 1.0    # the inner (prompt) update is scaled by this
  c.tasks = "niah_single,variable_tracking"  # synthetic training tasks
  c.min_prompt_tokens = 384  # synthetic prompts: [min, seq_len - answer_cap - 2]
  c.data_path = ""          # jsonl/parquet files (comma-separated); "" = synthetic
  c.eval_path = ""          # held-out file; "" = every holdout_every-th row
  c.holdout_every = 10
  c.warmup_steps = 200      # NTP warm-up when init_checkpoint is empty; 0 = none
  c.warmup_lr = 3e-3
  return c


def default_ttt_config() -> config_dict.ConfigDict:
  """ttt.*: test-time training (train/ttt.py)."""
  c = config_dict.ConfigDict()
  c.mode = "refine"       # refine | sft (NTP only on the prompts)
  c.steps = 3             # updates per test batch
  c.batch_size = 4        # prompts adapted together (and answered together)
  c.carry_over = False    # False: every batch starts from the checkpoint's weights
  c.lr = 3e-4             # AdamW, fresh per batch
  c.weight_decay = 0.0
  c.grad_clip = 1.0
  c.bucket = 128          # prompt batches are padded to a multiple (fewer compilations)
  c.data_path = ""        # jsonl/parquet test set; "" = synthetic eval.* cells
  c.max_samples = 0       # rows of data_path to use; 0 = all
  c.pad_id = -1           # prompt padding id; < 0 = the tokenizer's pad
  c.warmup_steps = 200    # NTP warm-up when init_checkpoint is empty; 0 = none
  c.warmup_lr = 3e-3
  return c


def default_eval_config() -> config_dict.ConfigDict:
  """eval.*: the accuracy suite (eval/runner.py). These defaults are the light eval a training
  stage runs at its end; configs/eval_*.py set their own."""
  c = config_dict.ConfigDict()
  # Comma-separated: niah_single, niah_multikey, niah_multivalue, niah_multiquery,
  # variable_tracking, qa (substring match of any reference), qa_f1 (LongBench token F1; the
  # same predictions as qa), mqar, perplexity, recall (-> recall_em, recall_tf, recall_nll,
  # recall_value_nll; needs data.recall in the run config).
  c.tasks = "niah_single,variable_tracking,perplexity"
  # One column each: a generated prompt's tokens; for file rows, prompt + answer budget (longer
  # prompts are cut in the middle). "auto": each file row at its own length only.
  c.context_lengths = "512,1024"
  c.num_samples = 4              # samples per (task, context length); 0: every file row
  c.batch_size = 8               # prompts decoded together
  # > 0: every row's answer budget. 0: a file row's own max_gen_tokens / max_answer_length
  # (ReFINE files, as the paper), else the cell's longest reference + 8 tokens.
  c.max_new_tokens = 0
  c.base_seed = 0                # eval seed stream: sample_seed("eval", i, base_seed)
  c.haystack = "noise"           # "noise" (RULER's), "held_out" (held-out text) or a .txt path
  c.num_needles = 4              # multikey / multivalue / multiquery needles
  c.vt_hops = 4                  # variable tracking chain length
  # qa / qa_f1 rows: comma-separated files or globs, jsonl or parquet, local or gs://
  # (eval/qa_files.py: ReFINE RULER QA and LongBench parquet, THUDM LongBench jsonl,
  # prompt/answer, context/input/answers); each row scored by its own task.
  c.qa_path = ""
  c.mqar_kv_pairs = 8            # key-value pairs per MQAR sequence (length = context length)
  c.mqar_vocab = 256             # MQAR token ids stay in [0, mqar_vocab)
  c.ppl_batches = 2              # held-out batches per perplexity column
  # Also <task>_tf: argmax accuracy on the true answer tokens given prompt + true answer prefix
  # (moves before exact match does: tiny CPU models score 0 on exact match).
  c.teacher_forced = True
  c.add_bos = config_dict.placeholder(bool)  # bos before each prompt; None: data.add_bos
  c.progress = True              # tqdm bar over (task, length) cells
  c.plots = True                 # PNG plots beside results.json
  c.save_predictions = True      # predictions.jsonl (prompt tail, prediction, references, score)
  return c


def default_mesh_config() -> config_dict.ConfigDict:
  """mesh.*: devices per axis (data x fsdp x tensor); -1 = all remaining devices."""
  c = config_dict.ConfigDict()
  c.data = -1    # pure data parallel (batch split, params replicated)
  c.fsdp = 1     # batch split + params/optimiser sharded on the embed dimension
  c.tensor = 1   # heads / mlp / vocab split
  # Multi-process launches (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS): seconds each process
  # waits for all the others at the coordinator before it exits with an error.
  c.dist_timeout_s = 300
  return c


def default_checkpoint_config() -> config_dict.ConfigDict:
  """checkpoint.*: Orbax, under <workdir>/checkpoints."""
  c = config_dict.ConfigDict()
  c.every_steps = 200  # save every N steps (and at the last step); 0 = only at the end
  c.keep = 3           # keep the newest N steps
  c.async_save = True  # write in the background while training continues
  return c


def base_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.stage = "pretrain"  # which refine_jax.train stage runs: pretrain | midtrain | posttrain | ttt
  c.seed = 0            # params init, per-step RNG (fold_in(seed, step)); data has its own seed
  c.model = default_model_config()
  c.data = default_data_config()
  c.train = default_train_config()
  c.refine = default_refine_config()  # read by the ReFINE stages (midtrain, posttrain, ttt)
  c.midtrain = default_midtrain_config()
  c.posttrain = default_posttrain_config()
  c.ttt = default_ttt_config()
  c.eval = default_eval_config()      # the eval every stage runs at its end
  c.mesh = default_mesh_config()
  c.checkpoint = default_checkpoint_config()
  # Params-only start point: a run dir, its checkpoints/ dir, a step dir, an Orbax params
  # checkpoint, a bundle, an HF/FLA dir or a hub id hf://owner/name[@revision]. One that carries
  # a config brings its model.* and tokenizer (train/init_checkpoint.py). Ignored when the
  # workdir already has a checkpoint (that one resumes).
  c.init_checkpoint = ""
  return c


def tiny_deltanet(c):
  """The tiny DeltaNet every stage's embedded default trains on a laptop CPU in minutes
  (~0.6M params with the byte tokenizer). Scale up with --config.model.* overrides."""
  c.model.arch = "deltanet"
  c.model.hidden = 128
  c.model.layers = 2
  c.model.heads = 2
  c.model.chunk_size = 64
  return c


def config_file(here: str, relpath: str):
  """The config module at `relpath` beside the file `here` (a config file's __file__), loaded by
  its path: config files build on one another (recall.py on midtrain.py, the paper presets on
  paper/common.py) from any working directory, with no sys.path edits. Loaded once per path."""
  path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(here)), relpath))
  key = f"refine_jax_config_file:{path}"
  if key not in sys.modules:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{here}: the config file {relpath!r} it builds on is not at {path}.")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[key]
      raise
  return sys.modules[key]
