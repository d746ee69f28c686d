"""Which engine holds a rollout: a ``coordination.k8s.io/v1`` Lease named ``edgerollout-<name>``.

An engine acquires the lease before its first step and renews it while it works; every lease write
is guarded by the Lease's resourceVersion, so of two engines racing only one wins and the other is
refused (``EngineConflictError``). The engine renews before it writes status whenever a third of the
lease has passed, so an engine that stalled longer than the lease notices it lost the rollout
instead of writing over its successor.

A holder is ``host:pid:nonce``. A lease still valid but held by a process that no longer exists on
this same host (an engine killed with SIGKILL) may be taken over at once; anywhere else, a
successor waits for the lease to expire.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from edgekit.errors import EngineConflictError, KubeConflictError


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    duration_s: float
    acquired_at: float | None = None
    renewed_at: float | None = None
    transitions: int = 0
    resource_version: str | None = None

    def expired(self, now: float) -> bool:
        return self.holder is None or self.renewed_at is None or now > self.renewed_at + self.duration_s


class LeaseStore(Protocol):
    def get_lease(self, namespace: str, name: str) -> LeaseRecord | None: ...

    def write_lease(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        """Create (``resource_version`` None) or replace guarded by resourceVersion;
        KubeConflictError when someone else wrote it first."""
        ...


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead_here(holder: str) -> bool:
    """True when ``holder`` names a process on this host that no longer runs."""
    try:
        host, pid_text, _nonce = holder.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def lease_name(rollout: str) -> str:
    return f"edgerollout-{rollout}"[:253]


class Lease:
    """One engine's hold on one rollout."""

    def __init__(self, store: LeaseStore, namespace: str, rollout: str, *, holder: str | None = None,
                 duration_s: float = 15.0, clock: Callable[[], float]) -> None:
        self.store = store
        self.namespace = namespace
        self.name = lease_name(rollout)
        self.rollout = rollout
        self.holder = holder or new_holder_id()
        self.duration_s = duration_s
        self.clock = clock
        self.record: LeaseRecord | None = None

    def acquire(self) -> None:
        now = self.clock()
        current = self.store.get_lease(self.namespace, self.name)
        if current is not None and current.holder and current.holder != self.holder \
                and not current.expired(now) and not holder_is_dead_here(current.holder):
            left = (current.renewed_at or now) + current.duration_s - now
            raise EngineConflictError(
                f"rollout {self.rollout} is being run by engine {current.holder}",
                hint=f"its lease expires in {max(left, 0):.0f}s unless renewed; "
                     "use `edgekit rollout status --watch` to follow it")
        if current is None:
            record = LeaseRecord(self.holder, self.duration_s, now, now, 0, None)
        else:
            record = replace(current, holder=self.holder, duration_s=self.duration_s, acquired_at=now,
                             renewed_at=now, transitions=current.transitions + (current.holder != self.holder))
        try:
            self.record = self.store.write_lease(self.namespace, self.name, record)
        except KubeConflictError as exc:
            raise EngineConflictError(f"another engine took rollout {self.rollout} at the same moment",
                                      hint="use `edgekit rollout status --watch` to follow it") from exc

    def due(self) -> bool:
        return self.record is None or self.clock() - (self.record.renewed_at or 0) >= self.duration_s / 3

    def renew(self, *, force: bool = False) -> None:
        """Renew when a third of the lease has passed (or ``force``). EngineConflictError when lost."""
        if self.record is None:
            raise EngineConflictError(f"rollout {self.rollout}: lease not held")
        if not force and not self.due():
            return
        try:
            self.record = self.store.write_lease(self.namespace, self.name,
                                                 replace(self.record, renewed_at=self.clock()))
        except KubeConflictError as exc:
            raise EngineConflictError(f"lost rollout {self.rollout} to another engine",
                                      hint="use `edgekit rollout status --watch` to follow it") from exc

    def release(self) -> None:
        """Give the rollout up now (a clean stop), so a successor need not wait for expiry."""
        if self.record is None:
            return
        with contextlib.suppress(Exception):  # best effort: the lease expires anyway
            self.store.write_lease(self.namespace, self.name, replace(self.record, holder=None, renewed_at=None))
        self.record = None
