"""One trainer per workdir: an exclusive lock, and the workdir's errors.

`WorkdirLock(workdir).acquire()` makes this process the workdir's only
trainer, or raises `WorkdirError` naming the holder (host, pid, start time).
The lock is `WORKDIR/trainer.lock`, holding the holder's JSON record:

- On a local or NFS path it is an `fcntl.flock` on that file. The kernel
  drops it when the holder dies (even by SIGKILL), so a stale lock is simply
  free: the next trainer takes it and says whose it was. A clean release
  deletes the file.
- On an object store (`gs://...`, no flock) the holder rewrites the record
  every `heartbeat_s`; a record not refreshed for `stale_after_s`, or left
  by a dead process of this host, is stale and taken over. This is best
  effort: two trainers starting within the same second may both pass.

With several processes (`jax.process_count() > 1`) only process 0 takes the
lock and `hold` shares the outcome with the others, so a second job on the
same workdir is refused as a whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import threading
import time
import uuid
from typing import Any

import jax
import numpy as np
from etils import epath

from recurrentgemma_jax.config import ConfigError

LOCK_FILE = "trainer.lock"

# errno values that mean the storage is full (ENOSPC) or over quota.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WorkdirError(ConfigError):
  """The workdir cannot be used as asked (locked, holding another run, a
  damaged checkpoint, full storage); the one-line message says why."""


def disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, says the storage
  is full (TensorStore reports it in its message, not as an errno)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
      return True
    if "No space left on device" in str(error) or "Disk quota" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def describe_storage(path: str) -> str:
  """`filesystem /data (12.0 MiB free)` for the local storage of `path`."""
  if "://" in str(path):
    return str(path).split("://")[0] + " storage"
  path = os.path.abspath(str(path))
  while not os.path.exists(path):
    path = os.path.dirname(path)
  mount = path
  while not os.path.ismount(mount):
    mount = os.path.dirname(mount)
  try:
    free = shutil.disk_usage(path).free
  except OSError:
    return f"filesystem {mount}"
  return f"filesystem {mount} ({free / 2**20:.1f} MiB free)"


def _holder_text(record: dict[str, Any]) -> str:
  return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}"
          f" (started {record.get('started', '?')})")


def _pid_alive(pid: Any) -> bool:
  try:
    os.kill(int(pid), 0)
  except (OSError, ValueError, TypeError) as e:
    return isinstance(e, PermissionError)  # alive, another user's
  return True


@contextlib.contextmanager
def hold(workdir: str):
  """Holds `workdir`'s lock for this job (process 0 takes it); yields the
  note of a stale lock taken over, or None.

  Raises:
    WorkdirError: on every process, when another trainer holds it.
  """
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  error, note = None, None
  if lock is not None:
    try:
      note = lock.acquire()
    except Exception as e:  # pylint: disable=broad-except
      # Any failure (also e.g. an OSError writing the record on gs://) must
      # reach the agreement below, or the other processes would wait in it.
      error = e
  if not _agree(error is None):
    raise error or WorkdirError(
        f"process 0 could not lock workdir {workdir} (see its error)")
  try:
    yield note
  finally:
    if lock is not None:
      lock.release()


def _agree(ok: bool) -> bool:
  """Process 0's `ok`, on every process."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


class WorkdirLock:
  """An exclusive, advisory lock on a training workdir (module docstring)."""

  def __init__(self, workdir: str, *, heartbeat_s: float = 60.0,
               stale_after_s: float = 600.0, use_flock: bool | None = None):
    self.workdir = str(workdir)
    self.path = epath.Path(workdir) / LOCK_FILE
    self._use_flock = ("://" not in self.workdir if use_flock is None
                       else use_flock)
    self._heartbeat_s = heartbeat_s
    self._stale_after_s = stale_after_s
    self._fd: int | None = None
    self._token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "token": self._token}

  def acquire(self) -> str | None:
    """Takes the lock; returns a note when it took over a stale one.

    Raises:
      WorkdirError: another live trainer holds it.
    """
    if self._use_flock:
      try:
        return self._acquire_flock()
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          raise WorkdirError(f"cannot lock {self.path}: {e}") from e
        self._use_flock = False  # a filesystem without flock
    return self._acquire_heartbeat()

  def release(self) -> None:
    """Gives the lock up (deleting the lock file); safe to call twice."""
    if self._fd is not None:
      import fcntl  # pylint: disable=g-import-not-at-top

      try:
        os.unlink(self.path)  # while still locked: see _acquire_flock
      except OSError:
        pass
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
      try:
        if self._read().get("token") == self._token:
          self.path.unlink()
      except OSError:
        pass

  def _refused(self, record: dict[str, Any]) -> WorkdirError:
    return WorkdirError(
        f"workdir {self.workdir} is in use by another trainer: "
        f"{_holder_text(record)}; stop it or use another workdir "
        f"(lock: {self.path})")

  def _taken_over(self, record: dict[str, Any]) -> str | None:
    if not record:
      return None
    return (f"took over the lock of {_holder_text(record)}, which is no "
            "longer running")

  # Local and NFS paths ------------------------------------------------------

  def _acquire_flock(self) -> str | None:
    import fcntl  # pylint: disable=g-import-not-at-top

    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        record = _parse(_read_fd(fd))
        os.close(fd)
        raise self._refused(record) from None
      except OSError:
        os.close(fd)
        raise
      # The holder deletes the file while locked when it releases: a file
      # opened before that is no longer the lock. Lock the current one.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    previous = _parse(_read_fd(fd))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(self.record).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self._taken_over(previous)

  # Object stores --------------------------------------------------------

  def _read(self) -> dict[str, Any]:
    try:
      return _parse(self.path.read_text())
    except OSError:
      return {}

  def _write(self) -> None:
    text = json.dumps({**self.record, "heartbeat": time.time()})
    if "://" in self.workdir:  # an object store writes an object whole
      self.path.write_text(text)
      return
    # A local file is truncated, then written: a reader in between would see
    # no holder and take the lock. Write aside and rename over it instead.
    aside = self.path.parent / f".{LOCK_FILE}.{self._token}"
    aside.write_text(text)
    os.replace(aside, self.path)

  def _stale(self, record: dict[str, Any]) -> bool:
    if record.get("host") == socket.gethostname():
      return not _pid_alive(record.get("pid"))
    age = time.time() - float(record.get("heartbeat", 0))
    return age > self._stale_after_s

  def _acquire_heartbeat(self) -> str | None:
    previous = self._read()
    if previous and not self._stale(previous):
      raise self._refused(previous)
    self._write()
    time.sleep(min(1.0, self._heartbeat_s))  # let a concurrent writer land
    current = self._read()
    if current.get("token") != self._token:
      raise self._refused(current)
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name="workdir_lock_heartbeat")
    self._thread.start()
    return self._taken_over(previous)

  def _beat(self) -> None:
    while not self._stop.wait(self._heartbeat_s):
      try:
        self._write()
      except OSError:
        pass  # the next beat retries; a long outage makes the lock stale


def _read_fd(fd: int) -> str:
  return os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")


def _parse(text: str) -> dict[str, Any]:
  try:
    value = json.loads(text) if text.strip() else {}
  except ValueError:
    return {"host": "?", "pid": "?", "started": "?"}
  return value if isinstance(value, dict) else {}
