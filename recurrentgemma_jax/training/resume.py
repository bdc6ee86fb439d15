"""Resuming a workdir: what it holds, which config changes are allowed,
and the checkpoint to resume from.

`inspect` runs before anything is written and refuses (`WorkdirError`):
step folders without a commit marker (a partial copy: training on top of
them would start over or collide with them), only damaged checkpoints,
`total_steps` below the newest checkpoint, and another run's config.
`restore_newest` restores the newest checkpoint that restores; damaged
newer ones are moved to `WORKDIR/damaged_checkpoints/`, one line each.

A workdir holds one run. Resuming it with another experiment or model (any
field outside `RESUME_SAFE`) is refused with one error naming the fields,
before anything is written. The fields of `RESUME_SAFE` (the schedule,
cadences, learning rate, mesh and compute settings) may change: each change
is printed as `changed on resume: field old -> new`, appended to
`WORKDIR/config_history.jsonl` (one JSON object per resumed session with
changes: `{"time", "step", "changes": {field: [old, new]}}`), and
`config.json` then holds the new config.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from etils import epath

from recurrentgemma_jax import files
from recurrentgemma_jax.training import checkpointing
from recurrentgemma_jax.training import metrics as metrics_lib
from recurrentgemma_jax.training.workdir import WorkdirError

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# Fields that may differ from the saved config when resuming: they change
# neither the train state's shapes nor the data a step sees. `mesh.`
# covers every mesh axis (checkpoints reshard on restore).
RESUME_SAFE = frozenset({
    "total_steps", "warmup_steps", "lr_schedule", "min_lr_ratio",
    "learning_rate", "grad_accum_steps", "eval_every", "eval_batches",
    "checkpoint_every", "keep_checkpoints", "log_every", "profile_steps",
    "peak_tflops", "loss.z_loss", "model.dtype", "model.scan_impl",
    "model.fused_rg_lru", "model.attention_impl", "model.remat",
    "data.data_dir",
})
_SAFE_PREFIXES = ("mesh.",)

_MISSING = "(not recorded)"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as `config.json` stores it (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def _safe(name: str) -> bool:
  return name in RESUME_SAFE or name.startswith(_SAFE_PREFIXES)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]
         ) -> tuple[dict[str, tuple], dict[str, tuple]]:
  """`(safe, unsafe)` changes `{field: (old, new)}` from `old` to `new`.

  A field that only one side has is a change from or to "(not recorded)";
  outside `data` (whose fields are the task's) it is safe: a config saved
  by an older version of the schema.
  """
  a, b = _flatten(old), _flatten(new)
  safe, unsafe = {}, {}
  for name in sorted(set(a) | set(b)):
    before, after = a.get(name, _MISSING), b.get(name, _MISSING)
    if before == after:
      continue
    missing = _MISSING in (before, after) and not name.startswith("data.")
    (safe if _safe(name) or missing else unsafe)[name] = (before, after)
  return safe, unsafe


def _show(value: Any) -> str:
  return value if value is _MISSING else json.dumps(value)


def format_changes(changes: Mapping[str, tuple], limit: int = 8) -> str:
  items = [f"{name} {_show(a)} -> {_show(b)}"
           for name, (a, b) in list(changes.items())[:limit]]
  if len(changes) > limit:
    items.append(f"and {len(changes) - limit} more")
  return ", ".join(items)


def read_saved_config(workdir: str) -> dict[str, Any] | None:
  """The workdir's `config.json` as a dict, or None when there is none."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  try:
    value = json.loads(path.read_text())
  except ValueError as e:
    raise WorkdirError(f"{path} is not valid JSON ({e}); restore it from "
                       f"{HISTORY_FILE} or use a new workdir") from e
  if not isinstance(value, dict):
    raise WorkdirError(f"{path} does not hold a config")
  return value


def check(workdir: str, saved: Mapping[str, Any] | None,
          config: ml_collections.ConfigDict, *, has_run: bool
          ) -> dict[str, tuple]:
  """The resume-safe changes from the saved config to `config`.

  Args:
    workdir: the run's directory (for messages).
    saved: its `config.json` (None: a new workdir).
    config: the validated config of this run.
    has_run: whether the workdir holds checkpoints or metrics of the saved
      run; without them the saved config is merely replaced.

  Raises:
    WorkdirError: a field outside `RESUME_SAFE` differs and `has_run`.
  """
  if saved is None:
    return {}
  safe, unsafe = diff(saved, as_json(config))
  if unsafe and has_run:
    raise WorkdirError(
        f"workdir {workdir} holds a run with another config: "
        f"{format_changes(unsafe)}. These fields cannot change on resume: "
        f"use a new workdir (the run's config is {workdir}/{CONFIG_FILE})")
  return {**safe, **unsafe}


def record(workdir: str, config: ml_collections.ConfigDict,
           changes: Mapping[str, tuple], step: int) -> None:
  """Writes `config.json` (atomically) and, when there are `changes`,
  appends them to the config history."""
  root = epath.Path(workdir)
  if changes:
    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "step": int(step),
             "changes": {k: [None if a is _MISSING else a,
                             None if b is _MISSING else b]
                         for k, (a, b) in changes.items()}}
    history = root / HISTORY_FILE
    text = history.read_text() if history.exists() else ""
    if text and not text.endswith("\n"):
      text += "\n"
    files.write_text_atomic(history, text + json.dumps(entry) + "\n")
  files.write_text_atomic(root / CONFIG_FILE, config.to_json_best_effort(indent=2))


@dataclasses.dataclass(frozen=True)
class Found:
  """What a workdir holds, checked before anything is written.

  Attributes:
    steps: complete checkpoints, oldest first.
    latest: the newest of them that looks intact (None: a new run).
    changes: config fields changed since `config.json`, `{name: (old,
      new)}`, all resume-safe when the workdir holds a run.
    unfinished: folders of interrupted saves (removed once training starts).
  """

  steps: list[int]
  latest: int | None
  changes: dict[str, tuple]
  unfinished: list[str]


def inspect(workdir: str, ckpt: checkpointing.Checkpointer,
            abstract_state: Any, config: ml_collections.ConfigDict) -> Found:
  """Refuses (`WorkdirError`) what this run must not resume or overwrite.

  Reads only: the checkpoint folder, the newest checkpoints' metadata, the
  saved config and metrics.jsonl.
  """
  contents = ckpt.contents()
  # Locally a step folder is renamed into place with its commit marker, so
  # one without it is a partial copy; on object stores it may be a save that
  # was interrupted (Orbax removes those), unless nothing else is there.
  remote = "://" in workdir
  unusable = contents.unmarked if not remote or not contents.complete else []
  if unusable:
    raise WorkdirError(
        f"{ckpt.directory} holds step folders without a "
        f"{checkpointing.COMMIT_MARKER} (a partial copy or an unfinished "
        f"save): {', '.join(map(str, unusable))}. Refusing to train on top "
        "of them: move them out of the folder (or use another workdir)")
  has_run = bool(contents.complete or metrics_lib.read_records(workdir))
  changes = check(workdir, read_saved_config(workdir), config,
                  has_run=has_run)
  latest, damaged = None, []
  for step in reversed(contents.complete):
    problem = ckpt.problem(step, abstract_state)
    if problem is None:
      latest = step
      break
    damaged.append(f"step {step}: {problem}")
  if contents.complete and latest is None:
    raise WorkdirError(
        f"no checkpoint in {ckpt.directory} is intact ({'; '.join(damaged)})"
        ". Refusing to start over on top of them: move them away (or use "
        "another workdir)")
  if latest is not None and latest > config.total_steps:
    raise WorkdirError(
        f"workdir {workdir} holds a run already at step {latest}, past "
        f"total_steps={config.total_steps}: set total_steps >= {latest} to "
        "continue it, or use a new workdir for a shorter run")
  return Found(contents.complete, latest, changes, contents.unfinished)


def _sync(name: str) -> None:
  """Waits for every process (a no-op on one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)


def restore_newest(ckpt: checkpointing.Checkpointer, abstract_state: Any,
                   train_iter: Any, steps: list[int], *, main: bool
                   ) -> tuple[Any, int]:
  """`(state, step)` of the newest of `steps` that restores, the data
  position of `train_iter` included; `(None, 0)` when `steps` is empty.

  Checkpoints that are damaged (missing files, or a failing restore on a
  single process) are moved aside once an older one restored.

  Raises:
    WorkdirError: none restores (nothing is moved), or a restore failed
      with several processes (they cannot agree to go on).
  """
  damaged: list[tuple[int, str]] = []
  for step in reversed(steps):
    problem = ckpt.problem(step, abstract_state)
    if problem is None:
      try:
        state = _restore(ckpt, step, abstract_state, train_iter, main=main)
        break
      except Exception as e:  # pylint: disable=broad-except
        if jax.process_count() > 1:
          raise WorkdirError(
              f"restoring checkpoint step {step} from {ckpt.directory} "
              f"failed ({checkpointing.one_line(e)}); if it is damaged, "
              "move it away and run again") from e
        problem = f"it does not restore ({checkpointing.one_line(e)})"
    damaged.append((step, problem))
  else:
    if not steps:
      return None, 0
    found = "; ".join(f"step {s}: {p}" for s, p in damaged)
    raise WorkdirError(
        f"no checkpoint in {ckpt.directory} restores ({found}). Refusing to "
        "start over on top of them: move them away (or use another workdir)")
  _sync("checkpoint_restored")
  for bad, problem in damaged:
    where = ckpt.set_aside(bad) if main else ""
    metrics_lib.log(
        f"checkpoint step {bad} is damaged ({problem}): resuming from step "
        f"{step} instead; moved it to {where}", enabled=main)
  if damaged:
    _sync("damaged_checkpoints_moved")
    ckpt.reload()
  return state, step


def _restore(ckpt: checkpointing.Checkpointer, step: int,
             abstract_state: Any, train_iter: Any, *, main: bool) -> Any:
  """The state of checkpoint `step`, with the data position restored."""
  writers = ckpt.data_process_count(step)
  same = writers == jax.process_count()
  state = ckpt.restore(step, abstract_state, train_iter if same else None)
  if not same:
    # Iterator states are per process: with another process count, skip
    # the `step` batches (one per step) every process has consumed.
    metrics_lib.log(
        f"checkpoint {step} was written by {writers} processes, this run"
        f" has {jax.process_count()}: skipping {step} batches of data",
        enabled=main)
    for _ in range(step):
      next(train_iter)
  return state
