"""The training loop shared by every stage.

A stage gives its step as a spec.StepSpec: make_step(graphdef, tx, microbatches) -> step, the
optimiser updates the step makes and (optionally) its own optimiser. Objectives inside are
refine_jax.losses.Objective terms, divided once per optimiser update by their total weight, so
microbatches never change them (update.loss_step makes the step of one objective). The loop
owns the mesh, the sharded model/optimiser state, ONE jitted train step with explicit in/out
shardings, Orbax checkpoints (resume, init_checkpoint), metrics, held-out perplexity and the
NaN guard.

Step numbering: "step k" means k optimiser updates done; checkpoint k holds the params after
update k and the data iterator after batch k, and a resumed run continues with step k + 1.
"""

import dataclasses
import json
import math
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from flax import nnx, traverse_util
from tqdm.auto import tqdm

from refine_jax import checkpoint as ckpt_lib
from refine_jax.errors import UserError
from refine_jax import paths
from refine_jax import parallel
from refine_jax.eval import curves, nll
from refine_jax.models import build_model
from refine_jax.train import init_checkpoint, metrics as metrics_lib, optim
from refine_jax.train import state as state_lib
from refine_jax.train.batches import (default_eval_batches, default_train_iter, global_batch,
                                      host_split)
from refine_jax.train.spec import StepSpec


@dataclasses.dataclass
class TrainResult:
  model: Any              # live nnx model with the final params
  step: int               # last completed step
  metrics: dict           # last logged metrics row
  eval_metrics: dict      # last held-out eval, {} if none ran
  workdir: str


def jit_step(step_fn, ms, opt_shardings, mesh):
  """THE jitted train step: explicit in/out shardings, params and optimiser state donated.
  run_training and the ahead-of-time scale check (train/aot.py) both take it from here."""
  batch_sh, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(step_fn,
                 in_shardings=(ms.param_shardings, opt_shardings, ms.rest_shardings, batch_sh,
                               repl),
                 out_shardings=(ms.param_shardings, opt_shardings, repl), donate_argnums=(0, 1))


def make_eval_step(graphdef, eval_fn):
  def step(params, rest, batch):
    return eval_fn(nnx.merge(graphdef, params, rest), batch)
  return step


def default_model_fn(config):
  return lambda: build_model(config.model, rngs=nnx.Rngs(int(config.seed)))


def write_config(config, workdir):
  """config.json (resolved config); warns if a resumed run's config changed."""
  if jax.process_index() != 0:
    return
  path = paths.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if paths.exists(path) and paths.read_text(path) != text:
    logging.warning("config differs from the one saved in %s; the new one replaces it", path)
  paths.write_text(path, text)


def run_training(config, workdir, spec: StepSpec, *, eval_fn=nll.ntp_eval,
                 model_fn: Callable | None = None, train_iter=None, eval_batches=None,
                 on_step: Callable | None = None, stage: str | None = None) -> TrainResult:
  """Trains config.train.steps steps in `workdir`, resuming from its latest good checkpoint.

  spec: the stage's StepSpec; the loop jits spec.make_step(graphdef, tx,
  config.train.microbatches) with tx = spec.tx or optim.make_optimizer(config.train,
  spec.updates_per_step) (the lr schedule follows train steps either way).
  eval_fn(model, batch) -> dict with "nll_sum" and "tokens" (held-out perplexity) or None.
  model_fn() -> nnx model (default: build_model(config.model)); train_iter: an iterator of
  global numpy batches (the same on every process) with get_state/set_state (default: the
  data pipeline, per data.host_split); eval_batches: list of global batches (default:
  config.train.eval_batches from the data
  pipeline's held-out split). on_step(step, metrics, model_state) runs on the host after each step.

  Three parts: _setup (mesh, state, data, restore / init_checkpoint, the jitted step), _loop
  (steps with their hooks: NaN guard, eval, metrics, on_step, checkpoints) and the end (the
  training-curves plot).
  """
  t_start = time.time()
  run = _setup(config, workdir, spec, eval_fn=eval_fn, model_fn=model_fn,
               train_iter=train_iter, eval_batches=eval_batches, stage=stage)
  steps = int(config.train.steps)
  try:
    last_row, last_eval, last_saved = _loop(run, config, on_step)
    if run.start >= steps:
      _say(f"{run.workdir} is already at step {run.start} (train.steps={steps}): nothing to "
           "train; raise --config.train.steps to continue")
      # The summary reports the last logged step and held-out eval, not blanks.
      last_row, last_eval = _last_logged(run.workdir, run.start)
  finally:
    run.close()
  logging.info("trained to step %d in %.1fs (last checkpoint %d)", max(run.start, steps),
               time.time() - t_start, last_saved)
  if jax.process_index() == 0 and run.start < steps:  # <workdir>/eval/training_curves.png
    try:
      curves.write_training_curves(run.workdir)
    except Exception as e:  # pylint: disable=broad-except  (a plot never fails a run)
      logging.warning("training curves not plotted: %s", e)
  return TrainResult(model=run.ms.model(), step=max(run.start, steps), metrics=last_row,
                     eval_metrics=last_eval, workdir=run.workdir)


@dataclasses.dataclass
class _Run:
  """What the loop needs, from _setup: sharded state, data, checkpoints, the jitted step."""
  workdir: str
  stage: str
  mesh: Any
  ms: Any                 # state_lib model state (params, rest, shardings)
  opt_state: Any
  schedule: Callable      # lr per train step, for the metrics
  it: Any                 # the train iterator (get_state / set_state)
  per_process: bool       # data.host_split="documents": batches hold this process's rows
  eval_batches: list
  ck: Any                 # checkpoint.Checkpointer
  writer: Any             # metrics_lib.MetricsWriter
  jstep: Any              # jit_step(...), lowered and compiled on the first batch
  jeval: Any              # jitted eval step, or None
  start: int              # the step restored from (0: a new run)
  bar: Any = None

  def close(self):
    if self.bar is not None:
      self.bar.close()
    self.ck.close()
    if self.writer is not None:
      self.writer.close()


def _setup(config, workdir, spec, *, eval_fn, model_fn, train_iter, eval_batches,
           stage) -> _Run:
  """Mesh, sharded model and optimiser state, data, checkpoint restore (or init_checkpoint),
  config.json, the metrics writer and the jitted train / eval steps."""
  tc = config.train
  stage = stage or config.stage
  workdir = paths.norm(workdir)  # a local path made absolute, or a gs:// URL
  paths.makedirs(workdir)

  mesh = parallel.make_mesh(config.mesh)
  batch_sh = parallel.batch_sharding(mesh)
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)

  ms = state_lib.init_model_state(model_fn or default_model_fn(config), mesh)
  tx = spec.tx
  if tx is None:
    tx, schedule = optim.make_optimizer(tc, spec.updates_per_step)
  else:
    schedule = optim.make_schedule(tc)  # the lr per train step, for the metrics
  opt_state, opt_sh = state_lib.init_opt_state(tx, ms, mesh)

  # Data first: a bad data file fails before any checkpoint I/O has started.
  it = train_iter if train_iter is not None else default_train_iter(config)
  # Custom iterators (post-training, TTT) yield the global batch on every process.
  per_process = train_iter is None and host_split(config) == "documents"
  if eval_batches is None and eval_fn is not None and tc.eval_every > 0 and tc.eval_batches > 0:
    eval_batches = default_eval_batches(config, int(tc.eval_batches))
  eval_batches = [global_batch(b, batch_sh) for b in (eval_batches or [])]

  ck = ckpt_lib.Checkpointer(paths.join(workdir, "checkpoints"),
                             keep=int(config.checkpoint.keep),
                             async_save=bool(config.checkpoint.async_save))
  try:  # until the run owns it: close Orbax's threads on any error
    abs_params = state_lib.abstract(ms.params, ms.param_shardings)
    mismatch = ck.params_shape_mismatch(abs_params)
    if mismatch:
      raise UserError(f"{workdir} holds checkpoints of another model "
                      f"({_model_diff(config, workdir) or mismatch}); resume with the run's "
                      "model.* settings, or train this model in a new --workdir.")
    restored = ck.restore_latest(abs_params, state_lib.abstract(opt_state, opt_sh))
    # Only now: a config that cannot resume this run must not replace the run's config.json.
    write_config(config, workdir)
    start = 0
    if restored is not None:
      ms.params, opt_state, start = restored.params, restored.opt_state, restored.step
      _say(f"resumed {workdir} from checkpoint step {start}")
    elif config.init_checkpoint:
      ms.params, src = _load_init_params(config.init_checkpoint, ms)
      _say(f"init_checkpoint: params loaded from {src} (optimiser and data start fresh)")
    if restored is not None and restored.data is not None:
      ckpt_lib.apply_data_state(it, restored.data)
    elif restored is not None:
      logging.warning("checkpoint %d has no data-iterator state; the data restarts from its "
                      "beginning", start)

    writer = metrics_lib.MetricsWriter(workdir, resume_step=start)
    jstep = jit_step(spec.make_step(ms.graphdef, tx, int(tc.microbatches)), ms, opt_sh, mesh)
    jeval = None
    if eval_fn is not None and eval_batches:
      jeval = jax.jit(make_eval_step(ms.graphdef, eval_fn),
                      in_shardings=(ms.param_shardings, ms.rest_shardings, batch_sh),
                      out_shardings=parallel.replicated(mesh))
  except BaseException:
    ck.close()
    raise
  return _Run(workdir, stage, mesh, ms, opt_state, schedule, it, per_process, eval_batches, ck,
              writer, jstep, jeval, start)


def _loop(run: _Run, config, on_step) -> tuple[dict, dict, int]:
  """Steps run.start + 1 .. train.steps; returns (last metrics row, last eval, last saved
  step). Per step: the NaN guard, held-out eval, the metrics row, on_step, the checkpoint."""
  tc, ms, mesh = config.train, run.ms, run.mesh
  batch_sh = parallel.batch_sharding(mesh)
  base_key = jax.random.key(int(config.seed))
  steps, every = int(tc.steps), int(config.checkpoint.every_steps)
  last_row, last_eval, last_saved = {}, {}, run.start
  run.bar = _progress_bar(tc, run.start, steps)
  compiled = None
  for step in range(run.start + 1, steps + 1):
    batch = global_batch(next(run.it), batch_sh, per_process=run.per_process)
    rng = jax.random.fold_in(base_key, step)
    if compiled is None:  # compile once, outside the timed region (AOT, same shardings)
      t0 = time.perf_counter()
      with parallel.mesh_context(mesh):  # Pallas ops then run per device (shard_map)
        compiled = run.jstep.lower(ms.params, run.opt_state, ms.rest, batch, rng).compile()
      compile_s = time.perf_counter() - t0
      _say(f"train step compiled in {compile_s:.1f}s")
    t0 = time.perf_counter()
    ms.params, run.opt_state, out = compiled(ms.params, run.opt_state, ms.rest, batch, rng)
    out = jax.device_get(out)  # blocks: step_time_s is the step's wall time
    row = _metrics_row(out, batch, time.perf_counter() - t0, float(run.schedule(step - 1)))
    if step == run.start + 1:
      row["compile_time_s"] = compile_s
    _guard_finite(run, step, row)
    if run.jeval is not None and ((tc.eval_every > 0 and step % int(tc.eval_every) == 0)
                                  or step == steps):
      with parallel.mesh_context(mesh):
        last_eval = _evaluate(run.jeval, ms, run.eval_batches)
      row.update(last_eval)
    run.writer.write(step, row)
    last_row = dict(row, step=step)
    if on_step is not None:
      on_step(step, last_row, ms)
    if (every > 0 and step % every == 0) or step == steps:
      run.writer.flush()  # on gs://: every row up to this step is stored before its checkpoint
      run.ck.save(step, ms.params, run.opt_state, data=_snapshot(run.it, run.per_process),
                  meta={"stage": run.stage})
      last_saved = step
    if run.bar is not None:
      run.bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
      run.bar.update(1)
  return last_row, last_eval, last_saved


def _metrics_row(out, batch, dt, lr) -> dict:
  """The logged row of one step: loss, timing, throughput, lr, grad_norm, then the step's own
  metrics."""
  loss, gnorm = float(out["loss"]), float(out.get("grad_norm", 0.0))
  tokens = int(np.prod(batch["inputs"].shape)) if "inputs" in batch else 0
  row = {"loss": loss, "step_time_s": dt, "tokens_per_s": tokens / dt if dt > 0 else 0.0,
         "lr": lr, "grad_norm": gnorm}
  row.update({k: v for k, v in out.items() if k not in row})
  return row


def _guard_finite(run: _Run, step: int, row: dict):
  """A non-finite loss or grad norm: the row is logged, nothing is saved, one clear error."""
  loss, gnorm = row["loss"], row["grad_norm"]
  if math.isfinite(loss) and math.isfinite(gnorm):
    return
  row["nonfinite"] = True
  run.writer.write(step, row)
  run.ck.wait()
  last_good = run.ck.all_steps()[-1] if run.ck.all_steps() else None
  raise FloatingPointError(
      f"non-finite {'loss' if not math.isfinite(loss) else 'grad_norm'} at step {step} "
      f"(loss={loss}, grad_norm={gnorm}); stopped without saving this step. Last good "
      f"checkpoint: step {last_good} in {run.ck.directory}. Lower train.lr, raise "
      "train.warmup_steps or check the data, then rerun the same command to resume.")


def _load_init_params(path, ms):
  """Params from an Orbax run/checkpoint dir, a bundle or an HF/FLA dir (init_checkpoint's
  one loader, train.init_checkpoint.load_params)."""
  return init_checkpoint.load_params(path, state_lib.abstract(ms.params, ms.param_shardings))


def _say(msg):
  """Key events: to the log and, on process 0, to stdout (logging defaults to WARNING)."""
  logging.info(msg)
  if jax.process_index() == 0:
    print(msg, flush=True)


def _evaluate(jeval, ms, eval_batches):
  sums = {}
  for b in eval_batches:
    for k, v in jax.device_get(jeval(ms.params, ms.rest, b)).items():
      sums[k] = sums.get(k, 0.0) + float(v)
  out = {}
  if sums.get("tokens", 0) > 0 and "nll_sum" in sums:
    mean_nll = sums["nll_sum"] / sums["tokens"]
    out.update({"eval_loss": mean_nll, "eval_ppl": math.exp(min(mean_nll, 50.0))})
    if "correct" in sums:
      out["eval_accuracy"] = sums["correct"] / sums["tokens"]
  out.update({f"eval_{k}": v for k, v in sums.items() if k not in ("nll_sum", "tokens",
                                                                    "correct")})
  return out


def _model_diff(config, workdir):
  """'model.hidden: run 32, config 64, ...' between workdir's config.json and `config`."""
  try:
    saved = json.loads(paths.read_text(paths.join(workdir, "config.json"))).get("model", {})
  except Exception:  # pylint: disable=broad-except
    return ""
  now = json.loads(config.model.to_json_best_effort())
  old, new = (traverse_util.flatten_dict(d, sep=".") for d in (saved, now))
  return ", ".join(f"model.{k}: run {old.get(k)!r}, config {new.get(k)!r}"
                   for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def _last_logged(workdir, step):
  """(last metrics row at or before `step`, its latest eval_* values) from metrics.jsonl."""
  rows = [r for r in metrics_lib.read_metrics(paths.join(workdir, "metrics.jsonl"))
          if r.get("step", 0) <= step]
  evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
  last_eval = {k: v for k, v in evals[-1].items() if k.startswith("eval_")} if evals else {}
  return (rows[-1] if rows else {}), last_eval


def _snapshot(it, per_process):
  if hasattr(it, "get_state"):
    return ckpt_lib.snapshot_data_state(it, per_process=per_process)
  return None


def _progress_bar(tc, start, steps):
  if not tc.progress_bar or jax.process_index() != 0 or start >= steps:
    return None
  return tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True)
