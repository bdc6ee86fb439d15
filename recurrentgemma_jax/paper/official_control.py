"""The official-model control: our Griffin and the official one, trained
side by side from the same weights on the same batches, then evaluated at
multiples of the training length.

Does our model extrapolate the way it does because of our implementation,
or because of the recipe? This control answers it for any experiment
config whose model the official `recurrentgemma.jax.Griffin` can express:

- our model is built from the config and the seed, as `train` builds it;
  its initial parameters are converted to the official tree
  (`official.to_official`) and the official Linen module starts from
  exactly those values;
- both are trained with the config's optimizer and schedule
  (`optimizer.make_optimizer`, one `tx` for both) on the same batches:
  ours with the loop's jitted train step, the official one with a plain
  Linen step (log-softmax cross-entropy averaged over the scored tokens,
  the positions where `mask` is nonzero, as our loss does);
- `evaluate` scores both on the same held-out sequences at each length
  multiplier.

The official parameters are kept in our tree layout (the conversion only
renames `blocks/i` to `blocks.i`, inside the jitted step), so the optimizer
state, the weight-decay mask and the checkpoints have one layout for both.

Workdir: `config.json`, `metrics.jsonl` (ours: `train/loss`,
`eval/accuracy`, ...; the official model's under `official_train/` and
`official_eval/`), `checkpoints/` (both models, their optimizer states and
the data position; SIGTERM saves and stops, running again resumes) and
`RESULT_FILE` (the length evaluation):
  {"step": int, "train_seq_len": T,
   "settings": {"multipliers": [...], "examples": n},
   "lengths": [{"multiplier": m, "seq_len": m*T, "batch_size": b,
                "examples": n, "tokens": scored tokens,
                "ours": {"loss", "accuracy"},
                "official": {"loss", "accuracy"}}, ...]}

It runs on one device (the first). `recurrentgemma reproduce run
--study=official_control` runs it for each seed (`reproduce control` is
the command of one run).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx

from recurrentgemma_jax import files
from recurrentgemma_jax import official
from recurrentgemma_jax import sharding
from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.data import pipeline
from recurrentgemma_jax.paper import studies
from recurrentgemma_jax.training import checkpointing
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import length_eval
from recurrentgemma_jax.training import loop
from recurrentgemma_jax.training import loss as loss_lib
from recurrentgemma_jax.training import metrics as metrics_lib
from recurrentgemma_jax.training import resume as resume_lib
from recurrentgemma_jax.training import state as state_lib
from recurrentgemma_jax.training import workdir as workdir_lib

RESULT_FILE = studies.CONTROL_RESULT_FILE
# metrics.jsonl prefix of the official model's scalars.
OFFICIAL = "official_"
# The models of a result row.
MODELS = ("ours", "official")


def check_config(config: Any) -> ml_collections.ConfigDict:
  """The validated config, refused (ConfigError) where the two models or
  their steps could not be the same."""
  config = config_lib.validate(config)
  if config.lora.rank:
    raise ConfigError(f"lora.rank={config.lora.rank}: the control trains "
                      "every parameter of both models; set lora.rank=0")
  if config.loss.z_loss:
    raise ConfigError(f"loss.z_loss={config.loss.z_loss}: the official step "
                      "is plain cross-entropy; set loss.z_loss=0")
  if config.grad_accum_steps != 1:
    raise ConfigError(f"grad_accum_steps={config.grad_accum_steps}: the "
                      "official step takes the whole batch; set it to 1")
  if config.init_from.checkpoint or config.init_from.hf:
    raise ConfigError("init_from: the control starts both models from the "
                      "seed's initialisation; leave init_from.checkpoint "
                      "and init_from.hf empty")
  return config


def _official_package():
  """`(recurrentgemma.common, recurrentgemma.jax)`: the official package is
  not a dependency of ours (it pins old absl-py and NumPy)."""
  try:
    from recurrentgemma import common  # pylint: disable=g-import-not-at-top
    from recurrentgemma import jax as official_jax  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(
        f"the control needs the official recurrentgemma package ({e}): "
        "pip install --no-deps recurrentgemma einops jaxtyping "
        "'typeguard<3' (scripts/setup.sh installs it)") from None
  return common, official_jax


def official_model_config(config: GriffinConfig):
  """The official `GriffinConfig` of our `config`.

  Raises:
    ConfigError: a field the official model cannot express (global
      attention, RG-LRU gate blocks other than `num_heads`, another conv
      width), or the official package is not installed.
  """
  common, _ = _official_package()

  if config.has_attention and config.attention_window_size is None:
    raise ConfigError("model.attention_window_size=0 (global attention): "
                      "the official model has local attention only; the "
                      "control needs a Griffin or Hawk model")
  if config.has_recurrence and config.lru_num_heads != config.num_heads:
    raise ConfigError(
        f"model.lru_num_heads={config.lru_num_heads}: the official RG-LRU "
        f"gates have num_heads={config.num_heads} blocks; leave it unset")
  if config.conv1d_temporal_width != 4:
    raise ConfigError(
        f"model.conv1d_temporal_width={config.conv1d_temporal_width}: the "
        "official recurrent block's convolution has 4 taps")
  kinds = {BlockType.RECURRENT: common.TemporalBlockType.RECURRENT,
           BlockType.ATTENTION: common.TemporalBlockType.ATTENTION}
  return common.GriffinConfig(
      vocab_size=config.vocab_size,
      width=config.width,
      mlp_expanded_width=config.mlp_expanded_width,
      num_heads=config.num_heads,
      block_types=tuple(kinds[b] for b in config.block_types),
      embeddings_scale_by_sqrt_dim=config.embeddings_scale_by_sqrt_dim,
      # Unused without attention blocks (Hawk), but the field is an int.
      attention_window_size=config.attention_window_size or 1,
      logits_soft_cap=config.logits_soft_cap,
      lru_width=config.lru_width,
  )


def official_module(config: GriffinConfig):
  """The official Linen `Griffin` of our model `config` (no remat)."""
  _, official_jax = _official_package()
  return official_jax.Griffin(
      official_model_config(config), gradient_checkpointing=False,
      dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array
                  ) -> jax.Array:
  """Mean next-token cross-entropy over the scored positions.

  Args:
    logits: `[B, T, V]`.
    targets: `[B, T]` token ids.
    mask: `[B, T]` loss weights (0 where a position is not scored).

  Returns:
    `sum(mask * -log_softmax(logits)[target]) / sum(mask)`, a scalar.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  weights = mask.astype(jnp.float32)
  return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1.0)


@dataclasses.dataclass(frozen=True)
class Control:
  """Both models of a config, their optimizer and the data.

  Attributes:
    config: the validated config.
    workdir: the run's directory.
    program: our model's optimizer, schedule and state spec (one device).
    task: the data.
    module: the official Linen module.
    checkpointer: both models' checkpoints.
  """

  config: ml_collections.ConfigDict
  workdir: str
  program: loop.Program
  task: pipeline.Task
  module: Any
  checkpointer: checkpointing.Checkpointer

  @property
  def abstract(self) -> dict[str, Any]:
    """The checkpointed state: ours (step, params, opt_state) and the
    official model's params and opt_state, in the same layout."""
    ours = self.program.spec.abstract
    return {"ours": ours, "official": {"params": ours["params"],
                                       "opt_state": ours["opt_state"]}}

  def official_params(self, params: Any) -> dict[str, Any]:
    """Our-layout `params` as the official module's tree (renaming only)."""
    return official.to_official(nnx.merge(self.program.spec.graphdef, params))

  def logits_fns(self):
    """`{"ours": f, "official": f}`, `f(params, batch) -> [B, T, V]`."""
    graphdef = self.program.spec.graphdef

    def ours(params, batch):
      return nnx.merge(graphdef, params)(batch["inputs"], batch["segment_pos"])

    def theirs(params, batch):
      logits, _ = self.module.apply(
          {"params": self.official_params(params)}, batch["inputs"],
          batch["segment_pos"], return_cache=False)
      return logits

    return {"ours": ours, "official": theirs}


def build(config: Any, workdir: str, *, read_only: bool = False) -> Control:
  """Checks `config` and builds both models' spec, the data and the
  checkpointer. Nothing is compiled; the workdir is created (unless
  `read_only`) only after every check passed.

  Raises:
    ConfigError: a config the control cannot run (`check_config`,
      `official_model_config`), or the official module's parameter tree
      differs from the converted one.
  """
  config = check_config(config)
  mesh = loop.experiment_mesh(config, jax.devices()[:1])
  task = pipeline.make_task(config, 0, 1)
  model_config, _ = loop.initial_weights(config,
                                         loop.data_vocab_size(config))
  if model_config.vocab_size < task.vocab_size:
    raise ConfigError(
        f"the data's vocabulary ({task.vocab_size} ids) is larger than the "
        f"model's vocab_size={model_config.vocab_size}")
  module = official_module(model_config)
  program = loop.build_program(config, mesh, model_config)
  _check_official_tree(program, module, config.seq_len)
  workdir = (os.path.abspath(os.path.expanduser(workdir)) if read_only
             else loop.prepare_workdir(workdir))
  return Control(
      config=config, workdir=workdir, program=program, task=task,
      module=module,
      checkpointer=checkpointing.Checkpointer(
          str(epath.Path(workdir) / "checkpoints"),
          keep=config.keep_checkpoints, read_only=read_only))


def _check_official_tree(program: loop.Program, module, seq_len: int) -> None:
  """The converted tree must have the official module's paths and shapes."""
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  expected = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), tokens,
                          jnp.arange(seq_len)[None]))["params"]
  converted = jax.eval_shape(
      lambda p: official.to_official(nnx.merge(program.spec.graphdef, p)),
      program.spec.abstract["params"])
  want = {jax.tree_util.keystr(k): v.shape for k, v in
          jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = {jax.tree_util.keystr(k): v.shape for k, v in
         jax.tree_util.tree_flatten_with_path(converted)[0]}
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))
    raise ConfigError(f"the official module's parameters differ from ours "
                      f"converted: {diff[:3]}")


def initial_state(control: Control) -> dict[str, Any]:
  """Both models at the seed's initialisation: the official parameters are
  a copy of ours (the same values, their own buffers)."""
  program = control.program
  ours = state_lib.init_train_state(program.spec, program.tx,
                                         control.config.seed)
  params = jax.tree.map(
      lambda x: jax.device_put(jnp.array(x, copy=True), x.sharding),
      ours["params"])
  opt_state = jax.jit(program.tx.init,
                      out_shardings=program.spec.shardings["opt_state"])(
                          params)
  return {"ours": ours,
          "official": {"params": params, "opt_state": opt_state}}


def official_train_step(control: Control):
  """The jitted plain Linen step: `(params, opt_state, batch) -> (params,
  opt_state, loss)`; `params` in our layout, donated."""
  tx = control.program.tx
  logits_fn = control.logits_fns()["official"]

  def loss_fn(params, batch):
    return cross_entropy(logits_fn(params, batch), batch["targets"],
                         batch["mask"])

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def _stats_fn(control: Control):
  """`f(params_by_model, batch) -> {model: summed token stats}`, jitted."""
  fns = control.logits_fns()

  def stats(params, batch):
    return {name: loss_lib.token_stats(fns[name](params[name], batch),
                                       batch["targets"], batch["mask"])
            for name in MODELS}

  return jax.jit(stats)


def _params(state: dict[str, Any]) -> dict[str, Any]:
  return {"ours": state["ours"]["params"],
          "official": state["official"]["params"]}


def _score(control: Control, stats_fn, params, batches
           ) -> tuple[dict[str, Any], int]:
  """Summed statistics of both models over `batches` -> (per-token means
  by model, sequences scored)."""
  totals, rows = None, 0
  for local in batches:
    batch = jax.device_put(local, control.program.batch_sharding)
    stats = jax.device_get(stats_fn(params, batch))
    totals = stats if totals is None else jax.tree.map(np.add, totals, stats)
    rows += len(local["inputs"])
  if totals is None or float(totals["ours"]["tokens"]) == 0:
    seq_len = len(local["inputs"][0]) if rows else control.config.seq_len
    raise ConfigError(
        "evaluation data is empty: the eval split holds less than one batch "
        f"of {control.config.batch_size} x {seq_len} tokens")
  return {name: {k: float(v) for k, v in
                 loss_lib.summarize(totals[name]).items()}
          for name in MODELS}, rows


def _eval_scalars(scores: dict[str, Any]) -> dict[str, float]:
  out = {}
  for name, prefix in (("ours", ""), ("official", OFFICIAL)):
    out[f"{prefix}eval/loss"] = scores[name]["loss"]
    out[f"{prefix}eval/accuracy"] = scores[name]["accuracy"]
  return out


def train(config: Any, workdir: str) -> loop.TrainResult:
  """Trains (or resumes) both models of `config` in `workdir`.

  Returns:
    The `loop.TrainResult` (`preempted`: SIGTERM saved and stopped it).

  Raises:
    ConfigError: a config the control cannot run, before anything is
      written; `WorkdirError` as `loop.train` raises it.
    loop.NonFiniteLossError: a model's loss became NaN or infinite.
  """
  control = build(config, workdir)  # every check before the workdir
  try:
    with workdir_lib.hold(control.workdir) as note:
      if note:
        metrics_lib.log(note)
      return _train_locked(control)
  finally:
    control.checkpointer.close()


def _train_locked(control: Control) -> loop.TrainResult:
  config = control.config
  abstract = control.abstract
  found = resume_lib.inspect(control.workdir, control.checkpointer, abstract,
                             config)
  if found.latest == config.total_steps:
    metrics_lib.log(f"the control is already complete (step "
                    f"{found.latest}) in {control.workdir}")
    return loop.TrainResult(step=found.latest, preempted=False, metrics={})
  for name, change in found.changes.items():
    metrics_lib.log("changed on resume: "
                    + resume_lib.format_changes({name: change}))
  resume_lib.record(control.workdir, config, found.changes, found.latest or 0)
  restore_signal = control.checkpointer.catch_sigterm()
  writer = None
  try:
    train_iter = iter(control.task.train())
    state, start = resume_lib.restore_newest(
        control.checkpointer, abstract, train_iter, found.steps, main=True)
    if state is None:
      state = initial_state(control)
    n_params = state_lib.num_params(control.program.spec)
    metrics_lib.log(
        f"official control ({control.task.name}): {n_params / 1e6:.2f}M "
        "parameters, our Griffin and the official one from the same "
        "weights, " + (f"resuming from step {start}" if start else
                       "starting at step 0")
        + f" of {config.total_steps} in {control.workdir}")
    writer = metrics_lib.MetricWriter(control.workdir)
    result = _run(control, state, start, train_iter, writer)
    control.checkpointer.wait()
  finally:
    restore_signal()
    if writer is not None:
      writer.close()
  if result.preempted:
    metrics_lib.log(f"preempted: saved step {result.step}; run the same "
                    "command again to resume from it")
  else:
    metrics_lib.log(f"done: step {result.step}; files: {control.workdir}")
  return result


def _run(control: Control, state, start: int, train_iter, writer
         ) -> loop.TrainResult:
  config = control.config
  ours_step = loop.jit_train_step(control.program)
  theirs_step = official_train_step(control)
  stats_fn = _stats_fn(control)
  pending: list[tuple[jax.Array, jax.Array]] = []
  last: dict[str, float] = {}
  step = start
  preempted = False

  def flush(step: int) -> None:
    nonlocal last
    if not pending:
      return
    fetched = jax.device_get(pending)
    pending.clear()
    ours = [float(m["loss"]) for m, _ in fetched]
    theirs = [float(loss) for _, loss in fetched]
    if not all(map(math.isfinite, ours + theirs)):
      raise loop.NonFiniteLossError(
          f"non-finite training loss by step {step} (ours {ours[-1]}, "
          f"official {theirs[-1]}); stopping. The newest checkpoint (step "
          f"{control.checkpointer.latest_step()}) predates it")
    scalars = {"train/loss": float(np.mean(ours)),
               "train/accuracy": float(np.mean(
                   [float(m["accuracy"]) for m, _ in fetched])),
               f"{OFFICIAL}train/loss": float(np.mean(theirs))}
    writer.write(step, scalars)
    metrics_lib.log(f"step {step}/{config.total_steps} | loss ours "
                    f"{scalars['train/loss']:.4f}, official "
                    f"{scalars[f'{OFFICIAL}train/loss']:.4f}")
    last = scalars

  for step in range(start + 1, config.total_steps + 1):
    batch = jax.device_put(next(train_iter), control.program.batch_sharding)
    ours, metrics = ours_step(state["ours"], batch)
    params, opt_state, loss = theirs_step(
        state["official"]["params"], state["official"]["opt_state"], batch)
    state = {"ours": ours,
             "official": {"params": params, "opt_state": opt_state}}
    pending.append((metrics, loss))
    actions = loop.step_actions(config, step,
                                control.checkpointer.should_stop(step))
    preempted = actions.stop
    if actions.log:
      flush(step)
    if actions.save:
      control.checkpointer.save(step, state, train_iter)
    if actions.evaluate:
      scores, _ = _score(
          control, stats_fn, _params(state),
          itertools.islice(control.task.eval(), config.eval_batches))
      scalars = _eval_scalars(scores)
      writer.write(step, scalars)
      metrics_lib.log(
          f"eval at step {step}: accuracy ours "
          f"{scalars['eval/accuracy']:.4f}, official "
          f"{scalars[f'{OFFICIAL}eval/accuracy']:.4f}")
      last = {**last, **scalars}
    if preempted:
      break
  return loop.TrainResult(step=max(step, start), preempted=preempted,
                          metrics=last)


def evaluate(workdir: str, multipliers: Sequence[int], examples: int,
             result_file: str = RESULT_FILE) -> dict[str, Any]:
  """Scores both models of the newest complete checkpoint of `workdir` at
  `multipliers` x the training length, on the same eval sequences.

  Returns:
    The dict written to `workdir/result_file` (module docstring).

  Raises:
    ConfigError: bad multipliers or examples, or no complete checkpoint,
      before anything is compiled.
  """
  multipliers = list(multipliers)
  if not multipliers or any(isinstance(m, bool) or not isinstance(m, int)
                            or m < 1 for m in multipliers):
    raise ConfigError(
        f"length multipliers must be integers >= 1, got {multipliers}")
  if examples < 1:
    raise ConfigError(f"examples={examples} must be >= 1")
  settings = {"multipliers": multipliers, "examples": int(examples)}
  old = studies.read_json(os.path.join(workdir, result_file))
  if isinstance(old, dict) and old.get("settings") not in (None, settings):
    raise ConfigError(
        f"{os.path.join(workdir, result_file)} holds an evaluation with other "
        f"settings ({old['settings']}, not {settings}); move it away first")
  config = loop.load_workdir_config(workdir)
  control = build(config, workdir, read_only=True)
  try:
    steps = control.checkpointer.complete_steps()
    if not steps:
      raise ConfigError(f"no complete checkpoint in "
                        f"{control.checkpointer.directory}: train first")
    step = steps[-1]
    problem = control.checkpointer.problem(step, control.abstract)
    if problem:
      raise workdir_lib.WorkdirError(
          f"checkpoint step {step} in {control.checkpointer.directory} is "
          f"damaged: {problem}")
    state = control.checkpointer.restore(step, control.abstract)
  finally:
    control.checkpointer.close()
  stats_fn = _stats_fn(control)
  train_len = control.config.seq_len
  rows = []
  for m in multipliers:
    start = time.perf_counter()
    rows.append(_score_length(control, stats_fn, _params(state), m,
                              examples))
    metrics_lib.log(
        f"length {m * train_len} ({m}x): accuracy ours "
        f"{rows[-1]['ours']['accuracy']:.4f}, official "
        f"{rows[-1]['official']['accuracy']:.4f} over "
        f"{rows[-1]['examples']} sequences "
        f"({time.perf_counter() - start:.1f}s)")
  result = {"step": int(step), "train_seq_len": train_len,
            "settings": settings, "lengths": rows}
  path = os.path.join(control.workdir, result_file)
  files.write_json_atomic(path, result)
  metrics_lib.log(f"wrote {path}")
  return result


def _score_length(control: Control, stats_fn, params, multiplier: int,
                  examples: int) -> dict[str, Any]:
  """Both models over up to `examples` eval sequences at `multiplier` x."""
  config = ml_collections.ConfigDict(control.config.to_dict())
  config.seq_len = multiplier * control.config.seq_len
  config.batch_size = length_eval.length_batch_size(
      control.config.batch_size, multiplier,
      sharding.data_parallel_size(control.program.mesh))
  task = pipeline.make_task(config, 0, 1)
  batches = max(1, math.ceil(examples / config.batch_size))
  scores, rows = _score(control, stats_fn, params,
                        itertools.islice(task.eval(), batches))
  return {"multiplier": multiplier, "seq_len": config.seq_len,
          "batch_size": config.batch_size, "examples": rows,
          "tokens": scores["ours"]["tokens"],
          **{name: {"loss": scores[name]["loss"],
                    "accuracy": scores[name]["accuracy"]}
             for name in MODELS}}


def markdown(result: dict[str, Any]) -> str:
  """The result's accuracy by evaluation length as a Markdown table."""
  rows = result["lengths"]
  head = [f"{r['seq_len']} ({r['multiplier']}x)" for r in rows]
  lines = ["| model | " + " | ".join(head) + " |",
           "|---|" + "---|" * len(rows)]
  for name, label in (("ours", "Griffin (ours)"),
                      ("official", "Griffin (official)")):
    lines.append(f"| {label} | " + " | ".join(
        f"{r[name]['accuracy']:.3f}" for r in rows) + " |")
  return "\n".join(lines)
