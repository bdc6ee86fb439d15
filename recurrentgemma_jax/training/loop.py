"""The one train / eval loop shared by every experiment.

    from recurrentgemma_jax.training import loop
    result = loop.train(config, "/tmp/run")    # config: an experiment's
    metrics = loop.evaluate(config, "/tmp/run")  # ConfigDict

`train` validates the config, builds the mesh, data, model and optimizer
(all errors in the config surface here, before anything is compiled),
resumes from the newest complete checkpoint in `WORKDIR/checkpoints` or
initialises, and runs `total_steps` optimizer steps with periodic logging,
evaluation and asynchronous checkpoints.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding

from recurrentgemma_jax import sharding
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import checkpointing
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import flops as flops_lib
from recurrentgemma_jax.training import loss as loss_lib
from recurrentgemma_jax.training import metrics as metrics_lib
from recurrentgemma_jax.training import optimizer as optimizer_lib
from recurrentgemma_jax.training import state as state_lib
from recurrentgemma_jax.training import step as step_lib


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """How a `train` call ended.

  Attributes:
    step: the last completed optimizer step.
    preempted: True when SIGTERM stopped the run early (a checkpoint of
      `step` was saved; running again resumes).
    metrics: the last logged train scalars and the final evaluation.
  """

  step: int
  preempted: bool
  metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything built from a config before any compilation."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  task: pipeline.Task
  model_config: GriffinConfig
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  spec: state_lib.StateSpec
  checkpointer: checkpointing.Checkpointer
  batch_sharding: NamedSharding
  init_params: Any | None  # released weights to start from, if any

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` (local or e.g. `gs://`) and checks it is writable."""
  if "://" not in workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: {e}") from e
  return workdir


def _model_vocab(task: pipeline.Task) -> int:
  """Default model vocabulary: the task's, padded to a multiple of 128 for
  vocabularies above 128 (fast, shardable matmuls)."""
  v = task.vocab_size
  return v if v <= 128 else 128 * math.ceil(v / 128)


def _load_init_params(config) -> tuple[GriffinConfig, Any]:
  """Released weights named by `config.init_from` and their model config."""
  from recurrentgemma_jax import official  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  init = config.init_from
  model = config.model
  hypers = {}
  if not init.preset:
    for name in ("attention_window_size", "logits_soft_cap",
                 "embeddings_scale_by_sqrt_dim"):
      if model[name] is None:
        raise ConfigError(
            f"init_from.preset is empty: set model.{name} for the checkpoint"
        )
      hypers[name] = model[name]
    if hypers["attention_window_size"] == 0:
      hypers["attention_window_size"] = None
  if not os.path.isdir(os.path.expanduser(init.checkpoint)):
    raise ConfigError(
        f"init_from.checkpoint: no checkpoint directory {init.checkpoint}"
    )
  loaded = official.load_official_checkpoint(
      os.path.expanduser(init.checkpoint), preset=init.preset or None,
      dtype=model.dtype, param_dtype=model.param_dtype,
      scan_impl=model.scan_impl, fused_rg_lru=model.fused_rg_lru,
      remat=model.remat, **hypers,
  )
  params = nnx.state(loaded, nnx.Param).to_pure_dict()
  return loaded.config, params


def setup(config: Any, workdir: str) -> Experiment:
  """Validates `config` and builds mesh, data, model spec and optimizer.

  Raises:
    ConfigError: with a one-line message naming the problem.
  """
  config = config_lib.validate(config)
  workdir = prepare_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  rows = dp * config.grad_accum_steps
  if config.batch_size % rows:
    raise ConfigError(
        f"batch_size={config.batch_size} is not divisible by the data-"
        f"parallel size (data x fsdp = {dp}) x grad_accum_steps="
        f"{config.grad_accum_steps}"
    )
  if config.seq_len % mesh.shape["sequence"]:
    raise ConfigError(
        f"seq_len={config.seq_len} is not divisible by the sequence axis "
        f"({mesh.shape['sequence']})"
    )
  task = pipeline.make_task(config, jax.process_index(), jax.process_count())
  init_params = None
  if config.init_from.checkpoint:
    model_config, init_params = _load_init_params(config)
  else:
    model_config = config_lib.build_model_config(config.model,
                                                 _model_vocab(task))
  if model_config.vocab_size < task.vocab_size:
    raise ConfigError(
        f"the data's vocabulary ({task.vocab_size} ids) is larger than the "
        f"model's vocab_size={model_config.vocab_size}"
    )
  tx = optimizer_lib.make_optimizer(config)
  spec = state_lib.state_spec(model_config, tx, mesh)
  return Experiment(
      config=config,
      workdir=workdir,
      mesh=mesh,
      task=task,
      model_config=model_config,
      tx=tx,
      schedule=optimizer_lib.learning_rate_schedule(config),
      spec=spec,
      checkpointer=checkpointing.Checkpointer(
          str(epath.Path(workdir) / "checkpoints"),
          keep=config.keep_checkpoints),
      batch_sharding=sharding.batch_sharding(mesh),
      init_params=init_params,
  )


def _global_batch(local: dict[str, np.ndarray], sharding_: NamedSharding):
  return {k: jax.make_array_from_process_local_data(sharding_, v)
          for k, v in local.items()}


def _evaluate(exp: Experiment, eval_step, params) -> dict[str, float]:
  """Summed statistics over `eval_batches` batches -> eval/* scalars."""
  totals = None
  for local in itertools.islice(exp.task.eval(), exp.config.eval_batches):
    stats = eval_step(params, _global_batch(local, exp.batch_sharding))
    totals = stats if totals is None else jax.tree.map(np.add, totals, stats)
    totals = jax.device_get(totals)
  if totals is None or float(totals["tokens"]) == 0:
    raise ConfigError(
        "evaluation data is empty: the eval split holds less than one batch "
        f"of {exp.config.batch_size} x {exp.config.seq_len} tokens"
    )
  means = {k: float(v) for k, v in loss_lib.summarize(totals).items()}
  return {
      "eval/loss": means["loss"],
      "eval/perplexity": math.exp(min(means["loss"], 80.0)),
      "eval/accuracy": means["accuracy"],
      "eval/tokens": means["tokens"],
  }


def _with_model_sharding(fn, mesh: Mesh):
  """`fn` traced with the RG-LRU scans split per shard of `mesh` and the
  activations pinned by the logical rules (`sharding.model_sharding`)."""

  def traced(*args):
    with sharding.model_sharding(mesh):
      return fn(*args)

  return traced


def jit_train_step(config, spec: state_lib.StateSpec,
                   tx: optax.GradientTransformation, schedule: optax.Schedule,
                   mesh: Mesh, batch_sharding: NamedSharding):
  """The jitted, sharded `train_step(state, batch)` (state donated); also
  what `aot.py` lowers for a TPU topology."""
  train_step = step_lib.make_train_step(
      spec.graphdef, tx, schedule,
      grad_accum_steps=config.grad_accum_steps, z_loss=config.loss.z_loss,
      batch_sharding=batch_sharding,
  )
  return jax.jit(
      _with_model_sharding(train_step, mesh),
      in_shardings=(spec.shardings, batch_sharding),
      out_shardings=(spec.shardings, sharding.replicated(mesh)),
      donate_argnums=(0,),
  )


def _jit_steps(exp: Experiment):
  """The jitted `train_step(state, batch)` and `eval_step(params, batch)`."""
  train_step = jit_train_step(exp.config, exp.spec, exp.tx, exp.schedule,
                              exp.mesh, exp.batch_sharding)
  replicated = sharding.replicated(exp.mesh)
  eval_step = jax.jit(
      _with_model_sharding(step_lib.make_eval_step(exp.spec.graphdef),
                          exp.mesh),
      in_shardings=(exp.spec.param_shardings, exp.batch_sharding),
      out_shardings=replicated,
  )
  return train_step, eval_step


class _Profiler:
  """Captures a jax.profiler trace of steps `first..last` into the workdir."""

  def __init__(self, steps, directory: str):
    self.first, self.last = tuple(steps) if steps else (None, None)
    self.directory = directory
    self.active = False

  def before(self, step: int) -> None:
    if step == self.first:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step == self.last:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False


def _restore_or_init(exp: Experiment, train_iter):
  """(state, first step to run): resume from the newest complete
  checkpoint (data position included) or initialise."""
  latest = exp.checkpointer.latest_step()
  if latest is not None:
    writers = exp.checkpointer.data_process_count(latest)
    same = writers == jax.process_count()
    state = exp.checkpointer.restore(latest, exp.spec.abstract,
                                     train_iter if same else None)
    if not same:
      # Iterator states are per process: with another process count, skip
      # the `latest` batches (one per step) every process has consumed.
      metrics_lib.log(
          f"checkpoint {latest} was written by {writers} processes, this run"
          f" has {jax.process_count()}: skipping {latest} batches of data",
          enabled=exp.is_main)
      for _ in range(latest):
        next(train_iter)
    return state, latest
  state = state_lib.init_train_state(exp.spec, exp.tx, exp.config.seed,
                                     exp.init_params)
  return state, 0


def train(config: Any, workdir: str) -> TrainResult:
  """Trains (or resumes) the experiment `config` in `workdir`.

  Args:
    config: an experiment ConfigDict (e.g. `experiments/x.py:get_config()`)
      or an equivalent nested dict.
    workdir: where checkpoints, metrics.jsonl, TensorBoard events, the
      config and profiles go.

  Returns:
    A `TrainResult`.

  Raises:
    ConfigError: bad config, data, mesh or workdir (before compilation).
    NonFiniteLossError: the loss became NaN / inf; checkpoints written
      before that step are kept and none is written after it.
  """
  exp = setup(config, workdir)
  config = exp.config
  main = exp.is_main
  if main:
    (epath.Path(exp.workdir) / "config.json").write_text(
        config.to_json_best_effort(indent=2))
  train_iter = iter(exp.task.train())
  state, start = _restore_or_init(exp, train_iter)
  n_params = state_lib.num_params(exp.spec)
  flops_per_token = flops_lib.train_flops_per_token(exp.model_config,
                                                    config.seq_len)
  tokens_per_step = config.batch_size * config.seq_len
  peak = (config.peak_tflops * 1e12 if config.peak_tflops
          else flops_lib.peak_flops_per_device())
  metrics_lib.log(
      f"{exp.task.name}: {n_params / 1e6:.2f}M parameters, "
      f"{flops_per_token / 1e6:.1f} MFLOP/token, mesh "
      f"{dict(exp.mesh.shape)}, "
      + (f"resuming from step {start}" if start else "starting at step 0"),
      enabled=main,
  )
  writer = metrics_lib.MetricWriter(exp.workdir, enabled=main)
  throughput = metrics_lib.Throughput(
      config.total_steps, tokens_per_step, flops_per_token * tokens_per_step,
      peak * exp.mesh.size if peak else None,
  )
  train_step, eval_step = _jit_steps(exp)
  profiler = _Profiler(config.profile_steps,
                       str(epath.Path(exp.workdir) / "profile"))
  restore_signal = exp.checkpointer.catch_sigterm()
  pending: list[tuple[int, dict]] = []
  last: dict[str, float] = {}
  preempted = False
  step = start

  def flush() -> None:
    """Fetches pending step metrics, checks them, logs their mean."""
    nonlocal last
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      # A non-finite gradient corrupts the parameters of this very step.
      if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
        exp.checkpointer.wait()
        raise NonFiniteLossError(
            f"non-finite training loss at step {s} (loss {float(m['loss'])},"
            f" gradient norm {float(m['grad_norm'])}); stopping. The newest "
            f"checkpoint (step {exp.checkpointer.latest_step()}) predates it"
        )
    last_step = pending[-1][0]
    pending.clear()
    scalars = {f"train/{k}": float(np.mean([m[k] for m in fetched]))
               for k in fetched[0]}
    scalars.update(throughput.report(last_step))
    writer.write(last_step, scalars)
    metrics_lib.log(metrics_lib.progress_line(last_step, config.total_steps,
                                              scalars), enabled=main)
    last = scalars

  try:
    compile_start = time.perf_counter()
    for step in range(start + 1, config.total_steps + 1):
      profiler.before(step)
      batch = _global_batch(next(train_iter), exp.batch_sharding)
      state, step_metrics = train_step(state, batch)
      pending.append((step, step_metrics))
      if step == start + 1:
        jax.block_until_ready(step_metrics)
        metrics_lib.log(
            f"compiled and ran the first step in "
            f"{time.perf_counter() - compile_start:.1f}s", enabled=main)
        throughput.resume()
      else:
        throughput.step()
      profiler.after(step, state)
      preempted = exp.checkpointer.should_stop(step)
      final = step == config.total_steps
      save = preempted or final or step % config.checkpoint_every == 0
      evaluate_now = final or step % config.eval_every == 0
      if save or evaluate_now or step % config.log_every == 0:
        flush()  # before saving: a non-finite loss is never checkpointed
      if evaluate_now:
        scalars = _evaluate(exp, eval_step, state["params"])
        writer.write(step, scalars)
        metrics_lib.log(
            f"eval at step {step}: loss {scalars['eval/loss']:.4f}, "
            f"accuracy {scalars['eval/accuracy']:.4f}", enabled=main)
        last = {**last, **scalars}
      if save:
        exp.checkpointer.save(step, state, train_iter)
      if evaluate_now or save:
        throughput.resume()  # keep eval and saving out of tokens/s
      if preempted:
        metrics_lib.log(f"preempted: saved step {step}; run again to "
                        "resume", enabled=main)
        break
    if start >= config.total_steps:
      last = _evaluate(exp, eval_step, state["params"])
  finally:
    restore_signal()
    exp.checkpointer.wait()
    exp.checkpointer.close()
    writer.close()
  return TrainResult(step=max(step, start), preempted=preempted,
                     metrics=last)


def evaluate(config: Any, workdir: str, step: int | None = None
             ) -> dict[str, float]:
  """Evaluates a checkpoint of `workdir` (the newest complete by default).

  Writes the scalars to metrics.jsonl / TensorBoard as `eval/*` at that
  step and returns them.
  """
  exp = setup(config, workdir)
  step = exp.checkpointer.latest_step() if step is None else step
  if step is None or step not in exp.checkpointer.complete_steps():
    where = "" if step is None else f" at step {step}"
    raise ConfigError(f"no complete checkpoint{where} in "
                      f"{exp.checkpointer.directory}")
  state = exp.checkpointer.restore(step, exp.spec.abstract)
  _, eval_step = _jit_steps(exp)
  scalars = _evaluate(exp, eval_step, state["params"])
  writer = metrics_lib.MetricWriter(exp.workdir, enabled=exp.is_main)
  writer.write(step, scalars)
  writer.close()
  exp.checkpointer.close()
  return {"step": step, **scalars}


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`."""
  path = epath.Path(os.path.expanduser(workdir)) / "config.json"
  if not path.exists():
    raise ConfigError(f"no config.json in {workdir}: not a training workdir")
  return ml_collections.ConfigDict(json.loads(path.read_text()))
