"""Shared pieces of the paper presets: the three models, the paper's hyperparameters, the
per-stage settings and the scale settings that make a 16K-token, batch-128 step fit (scanned
layers, per-block remat, bf16 compute, microbatches). Each preset file is
`get_config() = preset(model, stage)`; its docstring records what benchmarks/scale_check.py
measured for it.

Memory per parameter (float32 params, as trained here): params 4 B + grads 4 B + AdamW mu 4 B
(2 B with train.mu_dtype=bfloat16) + nu 4 B = 16 B (14 B); FSDP divides all of it by the
chips. Activations: with model.remat=full each block keeps only its float32 input
[micro-batch, T, hidden] per layer. ReFINE's own buffers are the rollouts' caches: a full
capture keeps every fast-weight chunk state ([L, micro-batch, T/64, H, K, V] float32), which
the mid-training presets avoid with refine.capture=strided (every 8th state and the layer
inputs); the PPO updates feed their rollouts layer by layer. One sequence per chip per
microbatch.
"""

from ml_collections import config_dict

from refine_jax import config as base

midtrain = base.config_file(__file__, "../midtrain.py")
posttrain = base.config_file(__file__, "../posttrain.py")
ttt = base.config_file(__file__, "../ttt.py")

SEQ_LEN = 16384          # paper: 16K-token sequences
GLOBAL_BATCH = 128       # paper: 128 sequences per step


def deltanet_1b3(c):
  """fla-hub/delta_net-1.3B-100B: hidden 2048, 24 layers, 16 heads, vocab 32000."""
  m = c.model
  m.arch, m.hidden, m.layers, m.heads, m.vocab_size = "deltanet", 2048, 24, 16, 32000
  return c


def gated_deltanet_1b3(c):
  """FLA's GatedDeltaNetConfig at 1.3B: hidden 2048, 21 layers, 6 heads of head_dim 256,
  expand_v 2 (value heads 512 wide), vocab 32000."""
  m = c.model
  m.arch, m.hidden, m.layers, m.heads, m.vocab_size = "gated_deltanet", 2048, 21, 6, 32000
  m.head_dim, m.expand_v = 256, 2.0
  return c


def lact_760m(c):
  """LaCT-760M (arXiv 2505.23884): hidden 1536, 24 layers, 12 attention heads, 4 fast-weight
  heads, chunk = window = 2048, low-rank (32) W0/W2 init, momentum."""
  m = c.model
  m.arch, m.hidden, m.layers, m.heads, m.vocab_size = "lact", 1536, 24, 12, 32000
  m.lact.num_fw_heads, m.lact.chunk, m.lact.window = 4, 2048, 2048
  m.lact.w0_w2_low_rank, m.lact.use_momentum = 32, True
  return c


def paper_optimizer(c, lr=1e-6):
  """The paper's AdamW at 1B scale: lr 1e-6, weight decay 0.01."""
  c.train.lr, c.train.weight_decay = lr, 0.01
  c.train.warmup_steps, c.train.schedule = 10, "constant"
  c.train.grad_clip = 1.0
  return c


def official_optimizer(c):
  """The public ReFINE code's optimiser details where our defaults differ: AdamW b2 0.999 (ours
  0.95, the usual LM-pretraining choice), weight decay on every parameter (ours: matrices
  only, so norms and biases keep their scale) and no lr warm-up (ours: 10 steps, which keeps
  the first updates of a fresh AdamW state small)."""
  c.train.b2 = 0.999
  c.train.decay_all = True
  c.train.warmup_steps = 0
  return c


def scale(c, *, topology, batch=GLOBAL_BATCH, seq_len=SEQ_LEN, microbatches, chips,
          remat="full", tensor=1):
  """Sizes the run for `topology` (`chips` chips): FSDP over the chips (x `tensor`-way head
  parallelism), bf16 compute, scanned layers with per-block remat, `microbatches` sequential
  microbatches per update."""
  c.data.seq_len = seq_len
  c.train.batch_size = batch
  c.train.microbatches = microbatches
  c.model.dtype = "bfloat16"
  c.model.scan_layers = True
  c.model.remat = remat
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, tensor
  c.train.eval_every, c.train.eval_batches = 500, 8
  c.checkpoint.every_steps, c.checkpoint.keep = 200, 2
  c.scale = config_dict.ConfigDict()
  c.scale.topology = topology  # what benchmarks/scale_check.py compiles for by default
  c.scale.chips = chips
  return c


def user_data(c):
  """Long-text data and tokenizer are the user's: the presets keep the embedded corpus and
  byte tokenizer so they run anywhere; set data.source/path and data.tokenizer(_path) to the
  checkpoint's (e.g. the LLaMA tokenizer.json of fla-hub models)."""
  c.data.synthetic_weight = 0.0
  return c


def _midtrain():
  c = midtrain.get_config()
  c.refine.ppo_minibatches = 4   # several minibatch updates per batch, as the official code
  c.refine.log_rollouts_every = 100
  c.refine.log_grad_share = False  # a diagnostic's extra backward pass has no place at scale
  c.midtrain.warmup_steps = 0    # start from real weights: set init_checkpoint
  c.midtrain.summary_eval = False
  c.train.steps = 1000
  return c


def _posttrain():
  c = posttrain.get_config()
  c.posttrain.warmup_steps = 0   # start from the mid-trained weights: set init_checkpoint
  c.posttrain.min_prompt_tokens = 1024
  c.train.steps = 500
  return c


def _ttt():
  c = ttt.get_config()
  c.ttt.warmup_steps = 0         # adapt real weights: set init_checkpoint
  c.ttt.bucket = SEQ_LEN
  c.ttt.lr = 1e-6
  c.ttt.weight_decay = 0.01
  return c


def gated_deltanet_7b(c):
  """Gated DeltaNet at 7B, FLA-style sizes (the 1.3B's heads of head_dim 256 with value heads
  512 wide, scaled as LLaMA-7B's trunk): hidden 4096, 32 layers, 8 heads, MLP 11008, vocab
  32000: 6.7B parameters."""
  m = c.model
  m.arch, m.hidden, m.layers, m.heads, m.vocab_size = "gated_deltanet", 4096, 32, 8, 32000
  m.head_dim, m.expand_v, m.intermediate_size = 256, 2.0, 11008
  return c


MODELS = {"deltanet_1b3": deltanet_1b3, "gated_deltanet_1b3": gated_deltanet_1b3,
          "lact_760m": lact_760m, "gated_deltanet_7b": gated_deltanet_7b}
STAGES = {"midtrain": _midtrain, "posttrain": _posttrain, "ttt": _ttt}
# LaCT's rollout caches hold a whole partial chunk (2048 tokens) per row and layer. Since the
# PPO updates feed their rollouts layer by layer (LM branch_tokens), the 16K mid-training step
# fits one sequence per chip (lact_760m_midtrain: mesh.tensor=1, 54.8 GiB); the other LaCT
# presets keep heads split over 2 chips (measured that way; the 64K step needs it).
TENSOR = {"lact_760m": 2}


def preset(model: str, stage: str, *, official: bool = False, seq_len: int = SEQ_LEN,
           capture: str = "all", topology: str = "v5p-8", chips: int = 4,
           tensor: int | None = None):
  """The paper preset for `model` x `stage`, sized for a `topology` slice of `chips` chips
  (default v5p-8, 4 chips): one sequence per (tensor group of) chip(s) per microbatch.
  official: the public code's optimiser details (official_optimizer; same shapes, so the same
  memory and FLOPs). seq_len: longer contexts than the paper's 16K (the same 128 sequences per
  step); capture: refine.capture; tensor: mesh.tensor (default: TENSOR's, else 1)."""
  c = STAGES[stage]()
  paper_optimizer(c)
  if official:
    official_optimizer(c)
  tensor = TENSOR.get(model, 1) if tensor is None else tensor
  groups = chips // tensor                  # data-parallel groups on the chips
  if stage == "ttt":
    c.ttt.batch_size = groups               # one 16K prompt per group per adaptation step
    scale(c, topology=topology, chips=chips, batch=groups, microbatches=1, tensor=tensor,
          seq_len=seq_len)
  else:
    updates = c.refine.ppo_minibatches if stage == "midtrain" else 1
    scale(c, topology=topology, chips=chips, microbatches=GLOBAL_BATCH // (updates * groups),
          tensor=tensor, seq_len=seq_len)
  c.refine.capture = capture
  MODELS[model](c)
  user_data(c)
  return c
