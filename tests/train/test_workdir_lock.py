"""One run per workdir: a second run stops at once naming the owner; stale and broken locks are taken over."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from pixelhdm_jax.train.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError

REPO = pathlib.Path(__file__).resolve().parents[2]


def _plant(workdir: pathlib.Path, host: str, pid: int) -> dict:
  owner = {"host": host, "pid": pid, "started": "2026-01-02T03:04:05+00:00"}
  (workdir / LOCK_NAME).write_text(json.dumps(owner))
  return owner


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_a_second_run_into_a_held_workdir_stops_at_once(tmp_path):
  with WorkdirLock(tmp_path) as lock:  # this process is the first run
    done = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--config=configs/base.py:tiny",
                           f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == lock.owner  # left alone
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.splitlines()[-1] == (
      f"train.py: error: workdir {tmp_path} is in use by pid {os.getpid()} on host {socket.gethostname()} (started "
      f"{lock.owner['started']}): wait for that run to end or use another --workdir; if that run is gone (e.g. its "
      "machine was lost), break the lock with --force_unlock")
  assert "Traceback" not in done.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, the lock released


def test_a_stale_lock_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
  dead = _dead_pid()
  _plant(tmp_path, socket.gethostname(), dead)
  with WorkdirLock(tmp_path) as lock:
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == lock.owner
  assert f"taking over the stale lock {tmp_path / LOCK_NAME} of pid {dead} on host" in caplog.text
  assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_of_another_host_yields_only_to_force_unlock(tmp_path, caplog):
  _plant(tmp_path, "other-host", 1)
  with pytest.raises(WorkdirLockedError, match=r"in use by pid 1 on host other-host \(started 2026-01-02.*"
                                               r"--force_unlock"):
    WorkdirLock(tmp_path).__enter__()
  with WorkdirLock(tmp_path, force=True) as lock:
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == lock.owner
  assert "--force_unlock: taking over" in caplog.text and "pid 1 on host other-host" in caplog.text
  assert not (tmp_path / LOCK_NAME).exists()


def test_a_run_whose_lock_was_broken_leaves_the_new_owner_alone(tmp_path):
  first = WorkdirLock(tmp_path).__enter__()
  taker = _plant(tmp_path, "other-host", 2)  # another run took the workdir over with --force_unlock
  first.__exit__(None, None, None)
  assert json.loads((tmp_path / LOCK_NAME).read_text()) == taker
