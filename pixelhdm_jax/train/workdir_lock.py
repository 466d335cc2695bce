"""One training run per workdir: `WORKDIR/run.lock`, a JSON file naming the run that holds it.

Process 0 takes the lock before it writes anything and removes it when the run ends (normally, preempted or
failing). A second run into a held workdir stops at once with `WorkdirLockedError`, naming the owner. A lock
whose owner is a dead process on this host is stale and taken over with a warning; the pid of a process on
another host cannot be checked (a lock on gs:// or on a shared disk), so only `force=True` (`--force_unlock`)
breaks that one.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

from absl import logging
from etils import epath

LOCK_NAME = "run.lock"


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir."""


def _owner() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _create(path: epath.Path, text: str) -> bool:
  """Writes `text` to `path` unless it exists; False if it did. Atomic on a local disk; on object stores
  (gs://), which have no exclusive create, a check and a write."""
  if "://" not in str(path):
    try:
      with open(str(path), "x", encoding="utf-8") as file:
        file.write(text)
    except FileExistsError:
      return False
    return True
  if path.exists():
    return False
  path.write_text(text)
  return True


class WorkdirLock:
  """`with WorkdirLock(workdir, force=...):` holds `workdir/run.lock` for the run (process 0 only)."""

  def __init__(self, workdir: str | os.PathLike, *, force: bool = False, enabled: bool = True):
    self.path = epath.Path(workdir) / LOCK_NAME
    self.force = force
    self.enabled = enabled
    self.owner = _owner()

  def __enter__(self):
    if self.enabled:
      self._acquire()
    return self

  def __exit__(self, *exc):
    if self.enabled:
      self._release()

  def _acquire(self) -> None:
    text = json.dumps(self.owner)
    if _create(self.path, text):
      return
    held = self._read()
    if self.force:
      logging.warning("--force_unlock: taking over %s from %s", self.path, _describe(held))
    elif held.get("host") == self.owner["host"] and isinstance(held.get("pid"), int) and not _alive(held["pid"]):
      logging.warning("taking over the stale lock %s of %s (that process is gone)", self.path, _describe(held))
    else:
      raise WorkdirLockedError(
          f"workdir {self.path.parent} is in use by {_describe(held)}: wait for that run to end or use another "
          f"--workdir; if that run is gone (e.g. its machine was lost), break the lock with --force_unlock")
    self.path.write_text(text)

  def _read(self) -> dict:
    try:
      held = json.loads(self.path.read_text())
    except (OSError, ValueError):  # removed meanwhile, or written half by a process killed while writing it
      return {}
    return held if isinstance(held, dict) else {}

  def _release(self) -> None:
    if self._read() == self.owner:  # not when another run took the lock over with --force_unlock
      self.path.unlink(missing_ok=True)


def _describe(owner: dict) -> str:
  if not owner:
    return "an unknown run (unreadable lock file)"
  return f"pid {owner.get('pid')} on host {owner.get('host')} (started {owner.get('started')})"
