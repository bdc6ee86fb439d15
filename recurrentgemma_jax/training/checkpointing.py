"""Asynchronous Orbax checkpoints of the train state and the data iterator.

Layout: `WORKDIR/checkpoints/<step>/{state, data}`; `state` is the sharded
train state (each process writes its shards), `data` the grain iterator
state of every process. Orbax writes a step into a temporary folder and
renames it when complete; a step also counts as complete only once its
`commit_success.txt` marker exists, so a half-written checkpoint (a killed
writer, a partial copy) is never taken as the newest.

A checkpoint restores onto any mesh and process count (Orbax reshards the
state); the iterator positions are per process, so a run with a different
process count replays the data instead (`loop._restore_or_init`).

Nothing is created or deleted until the first `save` or the first restore
with a data iterator (both only under the workdir lock, `workdir.py`);
only then does Orbax remove the temporary folders of interrupted saves.
`restore(step, abstract)` without an iterator, `complete_steps` and
`problem` only read (`evaluate`, `length_eval`). `problem(step)` finds a
damaged checkpoint (missing files, unreadable metadata) and refuses one
whose state has other shapes than the config's; `set_aside` moves a damaged
one to `WORKDIR/damaged_checkpoints/`.

Old checkpoints are deleted here rather than by Orbax (which deletes them
even when the newer save fails): only once a newer one is committed, so the
newest intact checkpoint survives a failed save. A failed save (e.g. a full
disk) raises `WorkdirError` naming the storage, the step and the newest
intact checkpoint.

A LoRA run (`frozen`: a `frozen.FrozenParams`) saves only the trained
part of `params` (the adapters), the optimizer state and the step, plus
`base_digest`, the fingerprint of the frozen base. Restoring loads the base
again (`FrozenParams.take`) and joins it to the adapters; `problem` and
`restore` refuse (`WorkdirError`) a checkpoint whose digest differs: it was
trained on other base weights.

Preemption: on one process, SIGTERM and SIGINT (Ctrl-C; a second one quits
without saving) set a flag; with several processes, JAX's preemption sync
manager (started by `jax.distributed.initialize`) catches SIGTERM and makes
every process agree on the step to stop at. `should_stop(step)` answers both
ways; the loop then saves and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from recurrentgemma_jax.training import frozen as frozen_lib
from recurrentgemma_jax.training.workdir import WorkdirError
from recurrentgemma_jax.training.workdir import describe_storage
from recurrentgemma_jax.training.workdir import disk_full

COMMIT_MARKER = "commit_success.txt"
TMP_MARKER = ".orbax-checkpoint-tmp"  # in the names of unfinished saves
DAMAGED_DIR = "damaged_checkpoints"  # beside `checkpoints/`
DIGEST_KEY = "base_digest"  # a LoRA checkpoint's fingerprint of its base


@dataclasses.dataclass(frozen=True)
class Contents:
  """What a checkpoint folder holds.

  Attributes:
    complete: steps with their commit marker, oldest first.
    unmarked: step folders without one (a partial copy; on object stores
      also a save in progress), oldest first.
    unfinished: temporary folders of interrupted saves.
  """

  complete: list[int]
  unmarked: list[int]
  unfinished: list[str]


def one_line(error: BaseException, limit: int = 160) -> str:
  """`Type: first line of the message` (Orbax messages run to pages)."""
  text = str(error).strip().splitlines()
  first = text[0] if text else ""
  if len(first) > limit:
    first = first[:limit] + "..."
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax warns on reads of a step's `state` item alone (its step
  metadata lives one folder up); keep those warnings off the console."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


class _SaveErrors(logging.Filter):
  """Keeps the first exception Orbax logs while saving (an asynchronous
  save fails in a background thread, which only logs it) and drops the
  page-long tracebacks of a full disk, which `WorkdirError` reports."""

  def __init__(self):
    super().__init__()
    self.first: BaseException | None = None

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if error is None:
      return True
    if self.first is None:
      self.first = error
    return not disk_full(error)


def _key_name(key: Any) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """`{"params/embedder/input_embedding": (shape, dtype)}` of a state's
  leaves (arrays, ShapeDtypeStructs or Orbax ArrayMetadata)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      out["/".join(_key_name(k) for k in path)] = (
          tuple(leaf.shape), str(np.dtype(leaf.dtype)))
  return out


def _differences(stored: dict, expected: dict, limit: int = 3) -> str:
  found = []
  # The parameters first: they say which model the checkpoint holds.
  for name in sorted(set(stored) | set(expected),
                     key=lambda n: (not n.startswith("params/"), n)):
    a, b = stored.get(name), expected.get(name)
    if a == b:
      continue
    if a is None:
      found.append(f"{name} missing from the checkpoint")
    elif b is None:
      found.append(f"{name} not in this config's state")
    else:
      found.append(f"{name} stored {a[0]} {a[1]}, config {b[0]} {b[1]}")
  if not found:
    return ""
  more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
  return "; ".join(found[:limit]) + more


class Checkpointer:
  """Saves and restores `{state, data iterator}` pairs by step."""

  def __init__(self, directory: str, *, keep: int, read_only: bool = False,
               frozen: frozen_lib.FrozenParams | None = None):
    self.directory = epath.Path(directory)
    self.keep = keep
    self.read_only = read_only
    self.frozen = frozen
    self._manager: ocp.CheckpointManager | None = None
    self._pending: int | None = None  # the step being saved asynchronously
    self._failed = False
    self._errors = _SaveErrors()
    self._preempted = threading.Event()
    self.stop_signal: str | None = None

  def _get_manager(self) -> ocp.CheckpointManager:
    """The Orbax manager, created on first use: creating it removes the
    temporary folders of interrupted saves (the caller holds the lock)."""
    if self.read_only:
      raise RuntimeError(f"{self.directory} was opened read-only")
    if self._manager is None:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=None,  # `_prune` deletes, after a newer commit
          enable_async_checkpointing=True,
          create=True,
          cleanup_tmp_directories=True,
      )
      logging.getLogger("absl").addFilter(self._errors)
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    return self._manager

  # Preemption ----------------------------------------------------------------

  def catch_sigterm(self) -> Callable[[], None]:
    """Turns SIGTERM and SIGINT into a stop request; returns a function
    undoing it. A second SIGINT raises KeyboardInterrupt (quit now).

    Only on a single process, and only from the main thread (where Python
    delivers signals); elsewhere it does nothing.
    """
    if (jax.process_count() > 1 or
        threading.current_thread() is not threading.main_thread()):
      return lambda: None

    def stop(signum, _):
      if signum == signal.SIGINT and self._preempted.is_set():
        raise KeyboardInterrupt
      self.stop_signal = signal.Signals(signum).name
      self._preempted.set()

    previous = {s: signal.signal(s, stop)
                for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
      for s, handler in previous.items():
        signal.signal(s, handler)

    return restore

  def should_stop(self, step: int) -> bool:
    """Whether a preemption asks the run to save and stop after `step`."""
    if jax.process_count() > 1:
      return self._get_manager().reached_preemption(step)
    return self._preempted.is_set()

  # Steps -------------------------------------------------------------------

  def contents(self) -> Contents:
    """The steps and leftovers in the folder (read only).

    Raises:
      WorkdirError: the checkpoint path is a file.
    """
    if not self.directory.exists():
      return Contents([], [], [])
    if not self.directory.is_dir():
      raise WorkdirError(f"{self.directory} is a file, not a checkpoint "
                         "folder: move it away")
    complete, unmarked, unfinished = [], [], []
    for p in self.directory.iterdir():
      if TMP_MARKER in p.name:
        unfinished.append(p.name)
      elif p.name.isdigit() and p.is_dir():
        (complete if (p / COMMIT_MARKER).exists() else unmarked).append(
            int(p.name))
    return Contents(sorted(complete), sorted(unmarked), sorted(unfinished))

  def complete_steps(self) -> list[int]:
    """Steps whose checkpoint was fully written, oldest first."""
    return self.contents().complete

  def latest_step(self) -> int | None:
    steps = self.complete_steps()
    return steps[-1] if steps else None

  def data_process_count(self, step: int) -> int | None:
    """How many processes wrote the data-iterator states of `step`."""
    data = self.directory / str(step) / "data"
    counts = {int(p.name.split("-of-")[1].split(".")[0])
              for p in (data.iterdir() if data.exists() else ())
              if p.name.startswith("process_") and "-of-" in p.name}
    return counts.pop() if len(counts) == 1 else None

  # Integrity -----------------------------------------------------------------

  def missing_files(self, step: int) -> str | None:
    """Which file of complete checkpoint `step` is missing, if any."""
    state = self.directory / str(step) / "state"
    needed = [state / "_METADATA"]
    shards = [p for p in (state.iterdir() if state.exists() else ())
              if p.name.startswith("ocdbt.process_")]
    if shards:  # an OCDBT store: its root and every process's manifest
      needed += [state / "manifest.ocdbt"] + [p / "manifest.ocdbt"
                                              for p in shards]
    for path in needed:
      if not path.exists():
        return f"{path.relative_to(self.directory)} is missing"
    if self.data_process_count(step) is None:
      return f"{step}/data holds no complete data-iterator state"
    return None

  def problem(self, step: int, abstract_state: Any) -> str | None:
    """What makes checkpoint `step` unusable (a missing file, unreadable
    metadata), or None when it looks intact (read only).

    Raises:
      WorkdirError: it is intact but its state has other shapes or dtypes
        than `abstract_state` (the config is not the run's).
    """
    missing = self.missing_files(step)
    if missing:
      return missing
    path = self.directory / str(step) / "state"
    try:
      with _quiet_orbax():
        reader = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        metadata = reader.metadata(path)
        reader.close()
    except Exception as e:  # pylint: disable=broad-except
      return f"its metadata is unreadable ({one_line(e)})"
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    differences = _differences(_shapes(tree),
                               _shapes(self._saved_abstract(abstract_state)))
    if differences:
      raise WorkdirError(
          f"checkpoint step {step} in {self.directory} does not fit this "
          f"config's train state: {differences}. The config is not the "
          "run's: use the workdir's config.json or a new workdir")
    if self.frozen is not None:
      try:
        stored = self._read_digest(path)
      except Exception as e:  # pylint: disable=broad-except
        return f"its {DIGEST_KEY} is unreadable ({one_line(e)})"
      self.check_base(step, stored)
    return None

  # The frozen base of a LoRA run ---------------------------------------------

  def _saved(self, state: Any) -> Any:
    """What a checkpoint holds of `state`: without a LoRA run's base."""
    if self.frozen is None:
      return state
    digest = jax.device_put(self.frozen.digest(), self.frozen.sharding)
    return {**state, "params": frozen_lib.select(state["params"],
                                                 self.frozen.trainable),
            DIGEST_KEY: digest}

  def _saved_abstract(self, abstract_state: Any) -> Any:
    if self.frozen is None:
      return abstract_state
    digest = jax.ShapeDtypeStruct((len(self.frozen.paths),), np.uint32,
                                  sharding=self.frozen.sharding)
    return {**abstract_state,
            "params": frozen_lib.select(abstract_state["params"],
                                        self.frozen.trainable),
            DIGEST_KEY: digest}

  def _read_digest(self, path: epath.Path) -> np.ndarray:
    with _quiet_orbax():
      reader = ocp.PyTreeCheckpointer()
      try:
        item = {DIGEST_KEY: np.zeros((), np.uint32)}
        restored = reader.restore(path, args=ocp.args.PyTreeRestore(
            item=item, partial_restore=True,
            restore_args={DIGEST_KEY: ocp.RestoreArgs(
                restore_type=np.ndarray)}))
      finally:
        reader.close()
    return np.asarray(restored[DIGEST_KEY])

  def check_base(self, step: int, stored: np.ndarray) -> None:
    """Raises WorkdirError unless `stored` (checkpoint `step`'s digest of
    its LoRA base) is the digest of the base this run loads."""
    different = self.frozen.first_difference(stored)
    if different:
      raise WorkdirError(
          f"checkpoint step {step} in {self.directory} was trained on other "
          f"base weights than this run loads (init_from, or the seed): "
          f"{different} differs. Use the run's base weights (its "
          "config.json) or a new workdir")

  def _with_base(self, step: int, restored: Any) -> Any:
    """A restored LoRA checkpoint joined to the base it was trained on."""
    if self.frozen is None:
      return restored
    self.check_base(step, np.asarray(jax.device_get(restored[DIGEST_KEY])))
    state = {k: v for k, v in restored.items() if k != DIGEST_KEY}
    state["params"] = frozen_lib.combine(self.frozen.take(),
                                         state["params"])
    return state

  def set_aside(self, step: int) -> str:
    """Moves checkpoint `step` to `WORKDIR/damaged_checkpoints/`; returns
    where it went."""
    root = self.directory.parent / DAMAGED_DIR
    root.mkdir(parents=True, exist_ok=True)
    target, n = root / str(step), 0
    while target.exists():
      n += 1
      target = root / f"{step}-{n}"
    (self.directory / str(step)).rename(target)
    self.reload()
    return str(target)

  def reload(self) -> None:
    """Re-reads the steps on disk (after another process moved some)."""
    if self._manager is not None:
      self._manager.reload()

  # Save / restore ------------------------------------------------------------

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Starts saving `state` and the iterator's position; returns at once.

    The device-to-host copy happens before returning, so `state` may be
    donated to the next step. The iterator state is captured now.

    Raises:
      WorkdirError: this save or the previous one failed.
    """
    self.wait()
    manager = self._get_manager()
    if step in manager.all_steps():
      return
    self._errors.first = None  # a cause logged now belongs to this save
    try:
      manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(self._saved(state)),
              data=grain.checkpoint.CheckpointSave(data_iterator),
          ),
          force=True,
      )
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    self._pending = step

  def restore(self, step: int, abstract_state: Any,
              data_iterator: Any | None = None) -> Any:
    """Restores the state (onto the shardings in `abstract_state`).

    When `data_iterator` is given, its position is restored in place;
    without it, nothing but the state is read and nothing is written. A
    LoRA run's base is loaded and joined to the restored adapters.

    Raises:
      WorkdirError: a LoRA checkpoint of other base weights.
    """
    saved = self._saved_abstract(abstract_state)
    if data_iterator is None:
      with _quiet_orbax():
        reader = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        try:
          restored = reader.restore(self.directory / str(step) / "state",
                                    args=ocp.args.StandardRestore(saved))
        finally:
          reader.close()
      return self._with_base(step, restored)
    args = {"state": ocp.args.StandardRestore(saved),
            "data": grain.checkpoint.CheckpointRestore(data_iterator)}
    restored = self._get_manager().restore(step,
                                           args=ocp.args.Composite(**args))
    return self._with_base(step, restored.state)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed, then deletes
    the checkpoints older than the newest `keep`.

    Raises:
      WorkdirError: the pending save failed (e.g. the disk is full).
    """
    if self._manager is None:
      return
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if step is None:
      return
    if not (self.directory / str(step) / COMMIT_MARKER).exists():
      raise self._save_error(step, self._errors.first)
    self._prune()

  def _prune(self) -> None:
    old = self.complete_steps()[:-self.keep]
    if not old:
      return
    manager = self._get_manager()
    manager.reload()
    for step in old:
      if step in manager.all_steps():
        manager.delete(step)

  def _save_error(self, step: int | None, cause: BaseException | None
                  ) -> WorkdirError:
    """The one-line error for a failed save, after checking what remains."""
    self._failed = True
    self._pending = None
    if cause is not None and disk_full(cause):
      reason = "no space left on device"
    else:
      reason = one_line(cause) if cause else "it was never committed"
    intact = None
    for s in reversed(self.complete_steps()):
      if self.missing_files(s) is None:
        intact = s
        break
    if intact is None:
      left = "no intact checkpoint remains"
    else:
      left = f"the newest intact checkpoint is step {intact}; " + (
          "free space there and " if reason.startswith("no space") else ""
      ) + "run again to resume from it"
    return WorkdirError(
        f"saving the checkpoint of step {step} to {self.directory} failed: "
        f"{reason} ({describe_storage(str(self.directory))}); {left}")

  def close(self) -> None:
    if self._manager is None:
      return
    try:
      self._manager.close()
    except Exception:  # pylint: disable=broad-except
      if not self._failed:  # a failed save was reported already
        raise
    finally:
      logging.getLogger("absl").removeFilter(self._errors)
      self._manager = None
