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

Preemption: on one process, SIGTERM sets a flag; with several processes,
JAX's preemption sync manager (started by `jax.distributed.initialize`)
catches SIGTERM and makes every process agree on the step to stop at.
`should_stop(step)` answers both ways; the loop then saves and exits.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

COMMIT_MARKER = "commit_success.txt"


class Checkpointer:
  """Saves and restores `{state, data iterator}` pairs by step."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=True,
        create=True,
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._preempted = threading.Event()

  # Preemption ----------------------------------------------------------------

  def catch_sigterm(self) -> Callable[[], None]:
    """Turns SIGTERM into a stop request; returns a function undoing it.

    Only on a single process, and only from the main thread (where Python
    delivers signals); elsewhere it does nothing.
    """
    if (jax.process_count() > 1 or
        threading.current_thread() is not threading.main_thread()):
      return lambda: None
    previous = signal.signal(signal.SIGTERM,
                             lambda *_: self._preempted.set())
    return lambda: signal.signal(signal.SIGTERM, previous)

  def should_stop(self, step: int) -> bool:
    """Whether a preemption asks the run to save and stop after `step`."""
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self._preempted.is_set()

  # Steps -------------------------------------------------------------------

  def complete_steps(self) -> list[int]:
    """Steps whose checkpoint was fully written, oldest first."""
    if not self.directory.exists():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir()
                  if p.name.isdigit() and (p / COMMIT_MARKER).exists())

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

  # Save / restore ------------------------------------------------------------

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Starts saving `state` and the iterator's position; returns at once.

    The device-to-host copy happens before returning, so `state` may be
    donated to the next step. The iterator state is captured now.
    """
    if step in self._manager.all_steps():
      return
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        ),
        force=True,
    )

  def restore(self, step: int, abstract_state: Any,
              data_iterator: Any | None = None) -> Any:
    """Restores the state (onto the shardings in `abstract_state`).

    When `data_iterator` is given, its position is restored in place.
    """
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored.state

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
