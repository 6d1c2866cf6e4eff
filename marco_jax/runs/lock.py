"""One training process per workdir: a lock file naming its holder.

Two trainers on one workdir both "succeeded" and one silently replaced the other's checkpoints
and config.json. `WorkdirLock` creates `<workdir>/train.lock` exclusively (O_CREAT | O_EXCL,
atomic on local filesystems and NFSv3+), holding {"pid", "host", "started"}. A second process
gets `WorkdirLockedError` naming the holder. A lock left by a process that died (SIGKILL, a
crashed node) would block every relaunch, so a lock whose pid no longer runs on this host is
taken over; one from another host is only reported, since its pid cannot be checked from here
(remove the file once that process is known to be gone).

Only process 0 of a multi-host job takes the lock: the other hosts write nothing in the workdir.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from types import TracebackType

from absl import logging

LOCK_FILE = "train.lock"


class WorkdirLockedError(RuntimeError):
    """Another live process trains in this workdir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    # A zombie (killed, not yet reaped by its parent) holds nothing any more.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_holder(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or garbage: treated as unknown


class WorkdirLock:
    """Context manager: `with WorkdirLock(workdir): ...` (see the module docstring)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.enabled = enabled
        self._held = False

    def acquire(self) -> None:
        if not self.enabled:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                if holder is None:
                    continue  # released meanwhile
                if self._is_stale(holder):
                    logging.warning(
                        "Taking over %s from pid %s on %s, which no longer runs.",
                        self.path,
                        holder.get("pid"),
                        holder.get("host"),
                    )
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)
                    continue
                if not holder:  # being written by its creator right now
                    time.sleep(0.1)
                    continue
                raise WorkdirLockedError(self._locked_message(holder)) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self._held = True
            return
        raise WorkdirLockedError(self._locked_message(_read_holder(self.path) or {}))

    def _is_stale(self, holder: dict) -> bool:
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int) or host != socket.gethostname():
            return False
        return pid != os.getpid() and not _pid_alive(pid)

    def _locked_message(self, holder: dict) -> str:
        started = holder.get("started")
        since = (
            time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started))
            if isinstance(started, (int, float))
            else ""
        )
        return (
            f"workdir {os.path.dirname(self.path)} is in use by pid {holder.get('pid', '?')} on "
            f"host {holder.get('host', '?')}{since} (lock file {self.path}); wait for it to end, "
            "or remove the lock file if that process is gone."
        )

    def release(self) -> None:
        if self._held:
            self._held = False
            holder = _read_holder(self.path)
            if holder and holder.get("pid") == os.getpid():
                try:
                    os.remove(self.path)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        logging.warning("Could not remove %s: %s", self.path, e)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
