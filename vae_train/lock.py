"""One process per run directory: a lock file that a dead process does not leave stuck.

``<run dir>/.lock`` is created exclusively (``O_CREAT | O_EXCL``) and holds the owner's process
id, host and start time. A second process finds it and refuses, naming the owner; if the owner
is a process of this host that no longer exists (killed, crashed), the lock is stale and is
taken over. A lock from another host (a shared file system) cannot be checked from here: the
message says to delete it if that process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from vae_train.errors import UserError

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:    # exists, owned by someone else
        return True
    return True


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid, host = owner.get("pid"), owner.get("host")
                if not owner:
                    # being written this instant, or garbage: give a writer a moment
                    try:
                        fresh = time.time() - self.path.stat().st_mtime < 5
                    except FileNotFoundError:   # released meanwhile: try again
                        continue
                    if fresh:
                        time.sleep(0.5)
                        continue
                elif (host == me["host"] and isinstance(pid, int) and pid != me["pid"]
                      and _alive(pid)):
                    raise UserError(
                        f"run directory {self.path.parent} is in use by process {pid} (since "
                        f"{owner.get('started')}); wait for it to finish, or stop it first")
                elif host != me["host"]:
                    raise UserError(
                        f"run directory {self.path.parent} is locked by process {pid} on host "
                        f"{host} (since {owner.get('started')}); if that process is gone, "
                        f"delete {self.path}")
                # Take it over by renaming it aside (only one process can rename that file);
                # if what was renamed is not the dead owner's lock, another process took
                # over first: put its lock back and look again.
                aside = self.path.with_name(f".lock.stale.{me['pid']}")
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    continue
                try:
                    moved = json.loads(aside.read_text())
                except (OSError, ValueError):
                    moved = {}
                if moved.get("pid") != pid or moved.get("started") != owner.get("started"):
                    try:
                        os.link(aside, self.path)   # fails if a lock exists again: keep that
                    except FileExistsError:
                        pass
                    aside.unlink(missing_ok=True)
                    continue
                aside.unlink(missing_ok=True)
                log.warning("taking over the stale lock of process %s, which is no longer "
                            "running (%s)", pid, self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise UserError(f"could not lock run directory {self.path.parent}; if no other "
                        f"process uses it, delete {self.path}")

    def release(self) -> None:
        if self.held and self._owner().get("pid") == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
