"""The one train / eval loop shared by every experiment.

    from recurrentgemma_jax.training import loop
    result = loop.train(config, "/tmp/run")    # config: an experiment's
    metrics = loop.evaluate(config, "/tmp/run")  # ConfigDict

`train` validates the config, builds the mesh, data, model and optimizer
(all errors in the config surface here, before anything is compiled),
resumes from the newest complete checkpoint in `WORKDIR/checkpoints` or
initialises, and runs `total_steps` optimizer steps with periodic logging,
evaluation and asynchronous checkpoints. One sequence builds every run:
`experiment_mesh`, the model config, `build_program` (optimizer, state
shardings), `jit_train_step`; `aot.py` follows it with abstract inputs.

One workdir, one trainer, one config. `train` first locks the workdir
(`workdir.WorkdirLock`; with several processes, process 0 holds it) and,
before writing anything, refuses (`WorkdirError`, one line;
`resume.inspect`):
- another trainer on the workdir (named by host, pid and start time);
- a config that differs from the run's `config.json` outside the fields
  that may change on resume (`resume.RESUME_SAFE`; those are printed as
  `changed on resume: ...` and kept in `config_history.jsonl`);
- `total_steps` below the newest checkpoint's step;
- step folders it cannot use (no commit marker), or only damaged ones: it
  never starts over on top of checkpoints.
A damaged newest checkpoint is moved to `WORKDIR/damaged_checkpoints/` and
the run resumes from the newest one that restores. A finished run is
reported, not retrained. SIGTERM and SIGINT save and stop. `evaluate` only
reads checkpoints (it appends its scalars to metrics.jsonl).
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
from recurrentgemma_jax.config import check_token_ids
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.training import checkpointing
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import flops as flops_lib
from recurrentgemma_jax.training import frozen as frozen_lib
from recurrentgemma_jax.training import loss as loss_lib
from recurrentgemma_jax.training import metrics as metrics_lib
from recurrentgemma_jax.training import optimizer as optimizer_lib
from recurrentgemma_jax.training import resume as resume_lib
from recurrentgemma_jax.training import state as state_lib
from recurrentgemma_jax.training import step as step_lib
from recurrentgemma_jax.training import workdir as workdir_lib
from recurrentgemma_jax.training.workdir import WorkdirError


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
class Program:
  """A config's sharded train step on a mesh, before compilation: what
  `train` runs, and what `aot.py` lowers with abstract inputs (no data, no
  weights). Made by `build_program`."""

  config: ml_collections.ConfigDict
  mesh: Mesh
  model_config: GriffinConfig
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  spec: state_lib.StateSpec
  batch_sharding: NamedSharding


@dataclasses.dataclass(frozen=True)
class Experiment(Program):
  """A `Program` with its workdir, data and checkpoints: everything `setup`
  builds from a config before any compilation."""

  workdir: str
  task: pipeline.Task
  checkpointer: checkpointing.Checkpointer
  init_params: Any | None  # released weights to start from, if any
  frozen: frozen_lib.FrozenParams | None = None  # a LoRA run's base

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0


def _normalize(workdir: str) -> str:
  if "://" not in workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))
  return workdir


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` (local or e.g. `gs://`) and checks it is writable."""
  workdir = _normalize(workdir)
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: {e}") from e
  return workdir


def _model_vocab(v: int) -> int:
  """Default model vocabulary: the task's `v`, padded to a multiple of 128
  for vocabularies above 128 (fast, shardable matmuls)."""
  return v if v <= 128 else 128 * math.ceil(v / 128)


def data_vocab_size(config) -> int:
  """The vocabulary `setup` gives a model without `model.vocab_size`, found
  without preparing the data (the tokenizer of an `lm` task)."""
  if config.model.get("vocab_size"):
    return config.model.vocab_size
  if config.data.get("task") == "lm":
    from recurrentgemma_jax.data import tokenizers  # pylint: disable=g-import-not-at-top

    vocab = tokenizers.get_tokenizer(
        config.data.get("tokenizer", "bytes")).vocab_size
    return _model_vocab(vocab)
  return _model_vocab(pipeline.make_task(config, 0, 1).vocab_size)


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
      **{name: model[name] for name in config_lib.COMPUTE_FIELDS}, **hypers,
  )
  params = nnx.state(loaded, nnx.Param).to_pure_dict()
  return loaded.config, params


def _check_eval_data(config, task: pipeline.Task) -> None:
  """An eval split too small for one batch fails here, not after training."""
  if config.eval_batches == 0:
    return
  first = next(iter(task.eval()), None)
  if first is None or not np.any(first["mask"]):
    raise ConfigError(
        "evaluation data is empty: the eval split holds less than one batch "
        f"of {config.batch_size} x {config.seq_len} tokens; lower "
        "batch_size or set eval_batches=0 (no evaluation)")


def experiment_mesh(config: ml_collections.ConfigDict,
                    devices: Any | None = None) -> Mesh:
  """The mesh of a validated config's `mesh` section over `devices` (by
  default all), checked against the batch: rows split over data x fsdp
  (times grad_accum_steps), time over `sequence`.

  Raises:
    ConfigError: a bad mesh, or a batch it does not split.
  """
  mesh = sharding.make_mesh(config.mesh, devices)
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
  return mesh


def build_program(config: ml_collections.ConfigDict, mesh: Mesh,
                  model_config: GriffinConfig) -> Program:
  """The optimizer, learning-rate schedule and sharded train-state spec of
  a validated config for `model_config` on `mesh`.

  Raises:
    ConfigError: the model does not fit `mesh`, or `lora.targets` names no
      projection.
  """
  tx = optimizer_lib.make_optimizer(config)
  return Program(
      config=config,
      mesh=mesh,
      model_config=model_config,
      tx=tx,
      schedule=optimizer_lib.learning_rate_schedule(config),
      spec=state_lib.state_spec(model_config, tx, mesh,
                                lora=config_lib.lora_config(config),
                                base_dtype=config.lora.base_dtype or None),
      batch_sharding=sharding.batch_sharding(mesh),
  )


def setup(config: Any, workdir: str, *, read_only: bool = False
          ) -> Experiment:
  """Validates `config` and builds mesh, data, model spec and optimizer.

  With `read_only`, the workdir is neither created nor written to, and its
  checkpoints can only be read (`evaluate`).

  Raises:
    ConfigError: with a one-line message naming the problem.
  """
  config = config_lib.validate(config)
  workdir = _normalize(workdir) if read_only else prepare_workdir(workdir)
  mesh = experiment_mesh(config)
  lora = config_lib.lora_config(config)
  if lora is not None:  # before the data and the weights are read
    _check_lora_targets(config, lora)
  task = pipeline.make_task(config, jax.process_index(), jax.process_count())
  model_config, init_params = initial_weights(config,
                                              _model_vocab(task.vocab_size))
  if model_config.vocab_size < task.vocab_size:
    raise ConfigError(
        f"the data's vocabulary ({task.vocab_size} ids) is larger than the "
        f"model's vocab_size={model_config.vocab_size}"
    )
  _check_eval_data(config, task)
  program = build_program(config, mesh, model_config)
  spec = program.spec
  frozen = None
  if lora is not None:
    frozen = frozen_lib.FrozenParams(
        spec.trainable,
        lambda: state_lib.init_base(spec, config.seed, init_params),
        sharding.replicated(mesh))
  return Experiment(
      **{f.name: getattr(program, f.name)
         for f in dataclasses.fields(Program)},
      workdir=workdir,
      task=task,
      checkpointer=checkpointing.Checkpointer(
          str(epath.Path(workdir) / "checkpoints"),
          keep=config.keep_checkpoints, read_only=read_only, frozen=frozen),
      init_params=init_params,
      frozen=frozen,
  )


def initial_weights(config, vocab_size: int | None = None
                    ) -> tuple[GriffinConfig, Any | None]:
  """The model of `config` and the weights it starts from: the pure-dict
  parameters `init_from` names, or None (the seed's initialisation; the
  model's vocabulary is then `vocab_size` unless `model.vocab_size` is
  set)."""
  if config.init_from.checkpoint and config.init_from.hf:
    raise ConfigError("init_from.checkpoint and init_from.hf are both set: "
                      "start from one of them")
  if config.init_from.hf:
    return _load_hf_params(config)
  if config.init_from.checkpoint:
    return _load_init_params(config)
  return config_lib.build_model_config(config.model, vocab_size), None


def _load_hf_params(config) -> tuple[GriffinConfig, Any]:
  """The Hugging Face checkpoint `config.init_from.hf` and its model config
  (from its config.json; compute fields and a set window from `model`)."""
  from recurrentgemma_jax import hf  # pylint: disable=g-import-not-at-top

  model = config.model
  path = os.path.expanduser(config.init_from.hf)
  overrides = {name: model[name] for name in config_lib.COMPUTE_FIELDS}
  if model.attention_window_size is not None:
    overrides["attention_window_size"] = model.attention_window_size or None
  try:
    # Host (NumPy) arrays: the train state places them with its shardings,
    # never whole on one device.
    hf_config, tensors = hf.read_hf_checkpoint(path)
    griffin = hf.config_from_hf(hf_config, **overrides)
    dtype = jax.numpy.dtype(griffin.param_dtype)
    params = jax.tree.map(lambda v: np.asarray(v, dtype),
                          hf.params_from_hf(tensors, griffin))
  except (OSError, ValueError) as e:  # ConfigError is a ValueError
    raise ConfigError(f"init_from.hf: {e}") from None
  # The workdir's readers (sample, convert) rebuild the model from the
  # `model` section: it must describe these weights.
  fix = "build it with training.config.hf_model_config(path)"
  try:
    described = config_lib.build_model_config(model,
                                              griffin.vocab_size)
  except ConfigError as e:
    raise ConfigError(f"init_from.hf: the model section does not describe "
                      f"{path} ({e}); {fix}") from None
  for field in (*config_lib.MODEL_OVERRIDES, "block_types"):
    got, want = getattr(described, field), getattr(griffin, field)
    if got != want:
      raise ConfigError(
          f"init_from.hf: the model section does not describe {path} "
          f"({field}: {got!r}, the checkpoint's {want!r}); {fix}")
  return griffin, params


def _check_lora_targets(config, lora) -> None:
  """`lora.targets` must name a projection of the model; checked on the
  model section alone when it describes the model (the weights are not
  loaded yet), else later by `state_spec`."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  try:
    model_config = config_lib.build_model_config(
        config.model, config.model.vocab_size or 128)
  except ConfigError:
    return
  nnx.eval_shape(lambda: state_lib.build_model(model_config, lora, 0))


def _global_batch(local: dict[str, np.ndarray], sharding_: NamedSharding,
                  vocab_size: int):
  """This process's rows of a batch -> global arrays, after checking its
  token ids: inside the jitted step an id outside the vocabulary would
  silently embed as NaN or wrap around."""
  for key in ("inputs", "targets"):
    try:
      check_token_ids(local[key], vocab_size, name=f"data batch {key!r}")
    except ValueError as e:
      raise ConfigError(f"{e}: the data does not fit the model's "
                        f"vocabulary") from None
  return {k: jax.make_array_from_process_local_data(sharding_, v)
          for k, v in local.items()}


def _evaluate(exp: Experiment, eval_step, params) -> dict[str, float]:
  """Summed statistics over `eval_batches` batches -> eval/* scalars."""
  totals = None
  for local in itertools.islice(exp.task.eval(), exp.config.eval_batches):
    stats = eval_step(params, _global_batch(
        local, exp.batch_sharding, exp.model_config.vocab_size))
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


def jit_train_step(program: Program):
  """The jitted, sharded `train_step(state, batch)` of `program` (state
  donated); also what `aot.py` lowers for a TPU topology."""
  config, spec = program.config, program.spec
  train_step = step_lib.make_train_step(
      spec.graphdef, program.tx, program.schedule,
      grad_accum_steps=config.grad_accum_steps, z_loss=config.loss.z_loss,
      batch_sharding=program.batch_sharding, trainable=spec.trainable,
      dropout_seed=(config.seed if spec.lora is not None and
                    spec.lora.dropout > 0 else None),
  )
  return jax.jit(
      _with_model_sharding(train_step, program.mesh),
      in_shardings=(spec.shardings, program.batch_sharding),
      out_shardings=(spec.shardings, sharding.replicated(program.mesh)),
      donate_argnums=(0,),
  )


def _jit_steps(exp: Experiment):
  """The jitted `train_step(state, batch)` and `eval_step(params, batch)`."""
  train_step = jit_train_step(exp)
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


def _restore_or_init(exp: Experiment, train_iter, steps: list[int]):
  """(state, first step to run): resume from the newest of `steps` that
  restores (data position included), or initialise when there are none."""
  state, step = resume_lib.restore_newest(
      exp.checkpointer, exp.spec.abstract, train_iter, steps,
      main=exp.is_main)
  if state is None:
    state = state_lib.init_train_state(
        exp.spec, exp.tx, exp.config.seed, exp.init_params,
        base=exp.frozen.take() if exp.frozen is not None else None)
  return state, step


def _files_line(exp: Experiment) -> str:
  return (f"files: {exp.workdir}/{{checkpoints, metrics.jsonl, tensorboard, "
          f"{resume_lib.CONFIG_FILE}}}")


def _finished(exp: Experiment, step: int) -> TrainResult:
  """Reports a run that already reached `total_steps` (no training).

  Evaluates the final checkpoint only when its evaluation is missing (the
  run was stopped between saving and evaluating it).
  """
  records = metrics_lib.read_records(exp.workdir)
  evaluated = any(r["step"] == step and "eval/loss" in r for r in records)
  if exp.config.eval_batches and not evaluated:
    scalars = _evaluate_checkpoint(exp, step)
    records = metrics_lib.read_records(exp.workdir) or [
        {"step": step, **scalars}]
  metrics_lib.log(
      "the run is already complete: "
      + metrics_lib.summary(records, step, exp.config.total_steps),
      enabled=exp.is_main)
  metrics_lib.log(_files_line(exp), enabled=exp.is_main)
  return TrainResult(step=step, preempted=False,
                     metrics=metrics_lib.final_scalars(records, step))



@dataclasses.dataclass(frozen=True)
class StepActions:
  """What a training loop does after `step`, from the config's cadences."""
  log: bool  # flush the pending metrics (always before save and evaluate)
  save: bool  # checkpoint (SIGTERM, the last step, every checkpoint_every)
  evaluate: bool  # every eval_every steps and at the last one
  stop: bool  # preempted: stop after saving


def step_actions(config, step: int, preempted: bool) -> StepActions:
  final = step == config.total_steps
  save = preempted or final or step % config.checkpoint_every == 0
  evaluate = config.eval_batches > 0 and (
      final or step % config.eval_every == 0)
  return StepActions(log=save or evaluate or step % config.log_every == 0,
                     save=save, evaluate=evaluate, stop=preempted)


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
    ConfigError: bad config, data, mesh or workdir (before compilation);
      `WorkdirError` (a subclass) when the workdir is locked, holds another
      run or unusable checkpoints, or a save fails (e.g. a full disk).
    NonFiniteLossError: the loss became NaN / inf; checkpoints written
      before that step are kept and none is written after it.
  """
  config = config_lib.validate(config)
  workdir = prepare_workdir(workdir)
  with workdir_lib.hold(workdir) as note:  # before loading data or weights
    if note:
      metrics_lib.log(note, enabled=jax.process_index() == 0)
    return _train_locked(setup(config, workdir))


def _train_locked(exp: Experiment) -> TrainResult:
  config = exp.config
  main = exp.is_main
  session_start = time.perf_counter()
  found = resume_lib.inspect(exp.workdir, exp.checkpointer,
                             exp.spec.abstract, exp.config)
  if found.latest == config.total_steps:
    return _finished(exp, found.latest)
  what = ("changed on resume" if found.latest is not None else
          "changed since the last start (no checkpoint yet)")
  for name, (old, new) in found.changes.items():
    metrics_lib.log(f"{what}: {resume_lib.format_changes({name: (old, new)})}",
                    enabled=main)
  if main:
    try:
      resume_lib.record(exp.workdir, config, found.changes,
                        found.latest or 0)
    except OSError as e:
      raise WorkdirError(
          f"cannot write {resume_lib.CONFIG_FILE} in {exp.workdir}: {e} "
          f"({workdir_lib.describe_storage(exp.workdir)})") from e
  if found.unfinished:
    metrics_lib.log(
        f"removing {len(found.unfinished)} unfinished checkpoint save(s) of "
        f"an interrupted run: {', '.join(found.unfinished)}", enabled=main)
  restore_signal = exp.checkpointer.catch_sigterm()
  writer = None
  try:
    train_iter = iter(exp.task.train())
    state, start = _restore_or_init(exp, train_iter, found.steps)
    n_params = state_lib.num_params(exp.spec)
    trained = ""
    if exp.spec.lora is not None:
      trained = (f" ({state_lib.num_trained(exp.spec) / 1e6:.2f}M trained: "
                 f"LoRA rank {exp.spec.lora.rank})")
    flops_per_token = flops_lib.train_flops_per_token(exp.model_config,
                                                      config.seq_len)
    if exp.spec.lora is not None:
      # No weight gradients for the frozen base: forward + input gradients,
      # two forward passes (a lower bound: the attention scores' backward
      # and the adapters' own matmuls are left out).
      flops_per_token *= 2 / 3
    tokens_per_step = config.batch_size * config.seq_len
    peak = (config.peak_tflops * 1e12 if config.peak_tflops
            else flops_lib.peak_flops_per_device())
    metrics_lib.log(
        f"{exp.task.name}: {n_params / 1e6:.2f}M parameters{trained}, "
        f"{flops_per_token / 1e6:.1f} MFLOP/token, mesh "
        f"{dict(exp.mesh.shape)}, "
        + (f"resuming from step {start}" if start else "starting at step 0")
        + f" of {config.total_steps} in {exp.workdir}",
        enabled=main,
    )
    writer = metrics_lib.MetricWriter(exp.workdir, enabled=main)
    result = _run(exp, state, start, train_iter, writer, flops_per_token,
                  tokens_per_step, peak)
  finally:
    restore_signal()
    try:
      exp.checkpointer.wait()
    finally:
      exp.checkpointer.close()
      if writer is not None:
        writer.close()
  if result.preempted:
    how = ("interrupted" if exp.checkpointer.stop_signal == "SIGINT"
           else "preempted")
    metrics_lib.log(
        f"{how}: saved step {result.step}; run the same command (same "
        "workdir and config) again to resume from it", enabled=main)
  else:
    metrics_lib.log(
        f"done: {result.step - start} steps in "
        f"{metrics_lib.format_duration(time.perf_counter() - session_start)}"
        " | " + metrics_lib.summary(metrics_lib.read_records(exp.workdir),
                                    result.step, config.total_steps),
        enabled=main)
    memory = metrics_lib.memory_line(
        [d.memory_stats() for d in jax.local_devices()])
    if memory:
      metrics_lib.log(memory, enabled=main)
    metrics_lib.log(_files_line(exp), enabled=main)
  return result


def _run(exp: Experiment, state, start: int, train_iter, writer,
         flops_per_token: float, tokens_per_step: int,
         peak: float | None) -> TrainResult:
  """The training steps `start + 1 .. total_steps` (or until stopped)."""
  config = exp.config
  main = exp.is_main
  throughput = metrics_lib.Throughput(
      config.total_steps, tokens_per_step, flops_per_token * tokens_per_step,
      peak * exp.mesh.size if peak else None,
  )
  train_step, eval_step = _jit_steps(exp)
  profiler = _Profiler(config.profile_steps,
                       str(epath.Path(exp.workdir) / "profile"))
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

  compile_start = time.perf_counter()
  for step in range(start + 1, config.total_steps + 1):
    profiler.before(step)
    batch = _global_batch(next(train_iter), exp.batch_sharding,
                          exp.model_config.vocab_size)
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
    actions = step_actions(config, step, exp.checkpointer.should_stop(step))
    preempted = actions.stop
    if actions.log:
      flush()  # before saving: a non-finite loss is never checkpointed
    if actions.save:  # before evaluating: a failed evaluation costs no steps
      exp.checkpointer.save(step, state, train_iter)
    if actions.evaluate:
      scalars = _evaluate(exp, eval_step, state["params"])
      writer.write(step, scalars)
      metrics_lib.log(
          f"eval at step {step}: loss {scalars['eval/loss']:.4f}, "
          f"accuracy {scalars['eval/accuracy']:.4f}", enabled=main)
      last = {**last, **scalars}
    if actions.evaluate or actions.save:
      throughput.resume()  # keep eval and saving out of tokens/s
    if preempted:
      break
  return TrainResult(step=max(step, start), preempted=preempted,
                     metrics=last)


def evaluate(config: Any, workdir: str, step: int | None = None
             ) -> dict[str, float]:
  """Evaluates a checkpoint of `workdir` (the newest complete by default).

  Only reads the checkpoints (a trainer may be running on the workdir);
  writes the scalars to metrics.jsonl / TensorBoard as `eval/*` at that
  step and returns them.
  """
  exp = setup(config, workdir, read_only=True)
  if exp.config.eval_batches == 0:
    raise ConfigError("eval_batches=0 means no evaluation: set eval_batches "
                      ">= 1 (e.g. --config.eval_batches=4)")
  step = readable_checkpoint(exp, step)
  return {"step": step, **_evaluate_checkpoint(exp, step)}


def readable_checkpoint(exp: Experiment, step: int | None = None) -> int:
  """`step` (by default the newest complete checkpoint), checked to exist
  and to be intact, for read-only users (evaluate, length_eval).

  Raises:
    ConfigError: there is no such complete checkpoint.
    WorkdirError: it is damaged (files missing, or not this model's).
  """
  steps = exp.checkpointer.complete_steps()
  step = (steps[-1] if steps else None) if step is None else step
  if step is None or step not in steps:
    where = "" if step is None else f" at step {step}"
    raise ConfigError(f"no complete checkpoint{where} in "
                      f"{exp.checkpointer.directory}")
  problem = exp.checkpointer.problem(step, exp.spec.abstract)
  if problem:
    raise WorkdirError(f"checkpoint step {step} in "
                       f"{exp.checkpointer.directory} is damaged: {problem}")
  return step


def _evaluate_checkpoint(exp: Experiment, step: int) -> dict[str, float]:
  """Evaluates checkpoint `step` and appends its eval/* scalars to the
  workdir's metrics."""
  state = exp.checkpointer.restore(step, exp.spec.abstract)
  _, eval_step = _jit_steps(exp)
  scalars = _evaluate(exp, eval_step, state["params"])
  writer = metrics_lib.MetricWriter(exp.workdir, enabled=exp.is_main)
  writer.write(step, scalars)
  writer.close()
  return scalars


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`; fields the schema
  gained after it was saved (e.g. `init_from.hf`) take their defaults."""
  return parse_workdir_config(read_workdir_config_text(workdir))


def read_workdir_config_text(workdir: str) -> str:
  """The text of `workdir/config.json` (ConfigError if there is none)."""
  path = epath.Path(os.path.expanduser(workdir)) / "config.json"
  if not path.exists():
    raise ConfigError(f"no config.json in {workdir}: not a training workdir")
  return path.read_text()


def parse_workdir_config(text: str) -> ml_collections.ConfigDict:
  """`load_workdir_config` of a config.json's text."""
  return ml_collections.ConfigDict(_with_defaults(
      json.loads(text), config_lib.base_config().to_dict()))


def _with_defaults(saved: dict[str, Any], schema: dict[str, Any]
                   ) -> dict[str, Any]:
  """`saved` plus the `schema` fields it lacks (not inside `data`, whose
  fields are the task's)."""
  out = dict(saved)
  for key, default in schema.items():
    if key not in out:
      out[key] = default
    elif (key != "data" and isinstance(default, dict)
          and isinstance(out[key], dict)):
      out[key] = _with_defaults(out[key], default)
  return out
