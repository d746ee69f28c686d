"""Who may write a spool: one exclusive ``flock`` per spool directory.

On Kubernetes the spool is a hostPath per app (``/var/lib/edgekit/<app>/spool``) that outlives pods,
and two revisions of one app may run on a node at once while one replaces the other. Each agent
writes only ``<spool_dir>/<device>/<instance>/`` (the instance is the revision) and holds the lock
file there for as long as it runs, so no file ever has two writers. The directories of the same
device whose lock is free belong to agents that are gone: the running agent takes their lock and
adopts what they left (``SqliteSpool.adopt``), so a new pod drains what the old one could not send.

``flock`` locks belong to the open file, so the kernel releases them when the process dies, even by
``kill -9``; a dead agent never leaves a stale lock. After the lock is taken, the locked file must
still be the one at the path: an adopter renames a directory away while it holds its lock, and a
lock on a file no longer there protects nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from edgekit_agent.errors import SpoolError, SpoolLockedError

log = logging.getLogger("edgekit_agent")

LOCK_FILE = "lock"
_POLL_S = 0.1
_SAY_EVERY_S = 5.0


class SpoolLock:
    """An exclusive lock on ``<directory>/lock`` (held until ``release`` or the process ends)."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def _hint(directory: Path) -> str:
    """What to make writable: the nearest folder that exists (on Kubernetes, the hostPath)."""
    existing = next((p for p in (directory, *directory.parents) if p.exists()), directory)
    return f"make {existing} writable by uid {os.getuid()}; on Kubernetes see docs/kubernetes.md, node preparation"


def try_lock(directory: Path) -> SpoolLock | None:
    """The lock of ``directory`` if it is free now, else None (no wait). SpoolError when the lock
    file cannot be made (the directory is not writable)."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None  # the directory went away (adopted by someone else)
    except OSError as exc:
        raise SpoolError(f"cannot create the spool lock {path}: {exc.strerror}", hint=_hint(directory)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # renamed away or replaced while we waited: this lock guards nothing
        os.close(fd)
        return None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return SpoolLock(directory, fd)


def holder(directory: Path) -> str:
    """The pid written by whoever holds (or last held) the lock, for log lines."""
    with contextlib.suppress(OSError, ValueError):
        return (directory / LOCK_FILE).read_text().strip() or "?"
    return "?"


def acquire(directory: Path, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> SpoolLock:
    """Wait up to ``timeout`` seconds for the lock of ``directory`` (made 0700 if missing), saying
    every few seconds who holds it; SpoolLockedError after the deadline."""
    start = clock()
    said = start
    while True:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {directory}: {exc.strerror}",
                             hint=_hint(directory)) from exc
        lock = try_lock(directory)
        if lock is not None:
            if clock() - start >= _POLL_S:
                log.info("spool %s: lock taken after %.1fs", directory, clock() - start)
            return lock
        now = clock()
        if now - start >= timeout:
            raise SpoolLockedError(
                f"spool {directory} is still locked by another agent (pid {holder(directory)}) "
                f"after {timeout:g}s",
                hint="two agents of one revision share this spool; stop the other one, "
                     "or raise spool_lock_timeout_s")
        if now - said >= _SAY_EVERY_S:
            said = now
            log.warning("spool %s is locked by another agent (pid %s); waiting up to %.0fs more",
                        directory, holder(directory), timeout - (now - start))
        time.sleep(_POLL_S)
