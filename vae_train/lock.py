"""One process per run directory: a lock file that a dead process does not leave stuck.

``<run dir>/.lock`` is created exclusively (``O_CREAT | O_EXCL``) and holds the owner's process
id, host, start time and the kernel's start time of that process (``/proc/<pid>/stat``). A
second process finds it and refuses, naming the owner and how to clear the lock; if the owner
is a process of this host that no longer exists (killed, crashed), or the pid now belongs to
another process (it started later than the lock's owner did), the lock is stale and is taken
over. A lock from another host (a shared file system) cannot be checked from here: the message
says to delete it if that process is gone. A ``.lock`` that is a folder is refused in one line;
one whose content is not a lock (garbage, another format) is taken over once it is a few
seconds old (a writer gets that long to fill it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from vae_train.errors import UserError
from vae_train.files import disk_error

log = logging.getLogger(__name__)


class RunDirInUse(UserError):
    """Another process holds the run directory (or its lock cannot be taken)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:    # exists, owned by someone else
        return True
    except (OverflowError, ValueError):   # not a pid at all
        return False
    return True


def process_start(pid: int) -> int | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot; Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def owner_alive(owner: dict, host: str) -> bool:
    """Whether the lock ``owner`` (its JSON) names a process of ``host`` that still runs: the
    pid exists and, where the lock recorded it, started when the lock's owner did (a reused
    pid belongs to another process); an older lock without that: the process is a Python."""
    pid = owner.get("pid")
    if owner.get("host") != host or not isinstance(pid, int) or isinstance(pid, bool) \
            or pid <= 0 or not _alive(pid):
        return False
    recorded, now = owner.get("proc_start"), process_start(pid)
    if isinstance(recorded, int) and now is not None:
        return recorded == now
    cmd = _cmdline(pid)
    return not cmd or "python" in cmd or "vae" in cmd


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def _owner(self) -> dict:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def _not_a_file(self) -> None:
        if self.path.is_dir() or (self.path.exists() and not self.path.is_file()):
            kind = "a folder" if self.path.is_dir() else "not a regular file"
            raise RunDirInUse(f"the lock {self.path} is {kind}, not a lock file; remove it "
                              f"(rm -r '{self.path}') if no vae-train process uses "
                              f"{self.path.parent}, then run the command again")

    def refuse_if_held(self) -> None:
        """Refuse (one line) when a live process holds the lock; takes nothing. For a command
        that must not touch the run directory when another process uses it."""
        self._not_a_file()
        owner = self._owner()
        if owner:
            self._refuse(owner, socket.gethostname())

    def _refuse(self, owner: dict, host: str) -> None:
        pid, their_host = owner.get("pid"), owner.get("host")
        if their_host == host and pid != os.getpid() and owner_alive(owner, host):
            raise RunDirInUse(
                f"run directory {self.path.parent} is in use by process {pid} (since "
                f"{owner.get('started')}); wait for it to finish, or stop it first (if that "
                f"process is not training this run, delete {self.path})")
        if isinstance(their_host, str) and their_host != host:
            raise RunDirInUse(
                f"run directory {self.path.parent} is locked by process {pid} on host "
                f"{their_host} (since {owner.get('started')}); if that process is gone, "
                f"delete {self.path}")

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "proc_start": process_start(os.getpid())}
        for _ in range(3):
            self._not_a_file()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if not owner:
                    # being written this instant, or not a lock: give a writer a moment
                    try:
                        fresh = time.time() - self.path.stat().st_mtime < 5
                    except FileNotFoundError:   # released meanwhile: try again
                        continue
                    if fresh:
                        time.sleep(0.5)
                        continue
                else:
                    self._refuse(owner, me["host"])
                self._take_over(owner, me)
                continue
            except OSError as e:   # read-only, no permission, no space
                raise disk_error(e, self.path) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunDirInUse(f"could not lock run directory {self.path.parent}; if no other "
                          f"process uses it, delete {self.path}")

    def _take_over(self, owner: dict, me: dict) -> None:
        """Rename the stale lock aside (only one process can rename that file); if what was
        renamed is not the stale lock, another process took over first: put its lock back."""
        aside = self.path.with_name(f".lock.stale.{me['pid']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError as e:
            raise disk_error(e, self.path) from None
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            moved = {}
        moved = moved if isinstance(moved, dict) else {}
        if moved != owner:
            try:
                os.link(aside, self.path)   # fails if a lock exists again: keep that
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        if owner:
            log.warning("taking over the stale lock of process %s, which is no longer "
                        "running (%s)", owner.get("pid"), self.path)
        else:
            log.warning("replacing %s, which held no lock", self.path)

    def release(self) -> None:
        if self.held and self._owner().get("pid") == os.getpid():
            try:
                self.path.unlink()
            except OSError:
                pass
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
