"""Store-and-forward: the bounded outbox every health report and event passes through.

Every message is written here first and removed only when the broker has acknowledged it
(PUBACK), so a report is never held only in memory. While the broker is unreachable the spool
grows; on reconnect the sender drains it oldest first, before anything newer.

Why SQLite (stdlib ``sqlite3``) in WAL mode rather than hand-made segment files:
- A transaction is atomic: a ``kill -9`` (or a crash) in the middle of an append leaves the
  spool with or without that message, never with a torn record, and no framing/CRC/recovery code
  of our own has to be right. ``synchronous=NORMAL`` with WAL keeps every committed append across
  a process kill (the data is in the WAL file); only a power cut can lose the last few commits.
- Order is the rowid; "drop the oldest until under the size bound", "drop older than max age",
  "delete what the broker acknowledged" and "mark everything pending as replayed" are single
  statements.
- It costs tens of microseconds per append (see ``bench/agent.py``), negligible at one report per
  second, and the file is reused page by page once entries are deleted.

Several agents may share one spool root (a hostPath that outlives pods, see ``spoollock``): each
writes only its own directory under its lock, and adopts the directories of agents that are gone
(``adopt_leftovers``): their entries move into its own spool, marked replayed, in one transaction.
A crash between that commit and the removal of the old directory can send those entries twice,
never lose them (MQTT QoS 1 is at-least-once anyway).

``MemorySpool`` has the same interface without persistence (the fleet simulator's virtual
devices, or a device with ``spool_dir`` unset).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgekit_agent import spoollock
from edgekit_agent.errors import SpoolError
from edgekit_agent.spoollock import SpoolLock

log = logging.getLogger("edgekit_agent")

_OVERHEAD = 32  # bytes accounted per entry beyond topic and payload
# Corrupt spools moved aside that are kept for a post-mortem; older ones are deleted so a spool
# that keeps breaking cannot fill the disk.
KEEP_CORRUPT = 3
# How often a running agent looks for spools of agents that are gone (a directory listing and a
# non-blocking flock per sibling): often enough that a replaced pod's reports move within seconds.
ADOPT_EVERY_S = 2.0
_ADOPTING = ".adopting-"  # a sibling renamed away while its entries move (one a dead adopter left is adopted too)


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    topic: str
    payload: bytes
    created: float
    replayed: bool


@dataclass
class Dropped:
    """Messages dropped since the last ``take_dropped`` (to report in a spool_overflow event)."""

    by_size: int = 0
    by_age: int = 0
    bytes: int = 0
    oldest_ts: float | None = None
    newest_ts: float | None = None
    corrupt: bool = False
    topics: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.by_size + self.by_age

    def add(self, reason: str, topic: str, size: int, created: float) -> None:
        if reason == "size":
            self.by_size += 1
        else:
            self.by_age += 1
        self.bytes += size
        kind = topic.rsplit("/", 1)[-1]
        self.topics[kind] = self.topics.get(kind, 0) + 1
        self.oldest_ts = created if self.oldest_ts is None else min(self.oldest_ts, created)
        self.newest_ts = created if self.newest_ts is None else max(self.newest_ts, created)


class Spool(Protocol):
    max_bytes: int
    max_age: float
    sent_through: int

    def append(self, topic: str, payload: bytes, created: float, *, replayed: bool) -> int: ...
    def peek(self, after_id: int, limit: int) -> list[SpoolEntry]: ...
    def delete(self, ids: list[int]) -> None: ...
    def mark_replayed(self) -> int: ...
    def prune(self, now: float) -> None: ...
    def take_dropped(self) -> Dropped: ...
    def stats(self) -> tuple[int, int]: ...
    def adopt_leftovers(self, *, force: bool = False) -> int: ...
    def close(self) -> None: ...


class _Bounded:
    def __init__(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._lock = threading.Lock()
        self._dropped = Dropped()
        self.dropped_total = {"size": 0, "age": 0}
        # Entries up to this id are on the wire awaiting PUBACK (set by the publisher). The size
        # bound spares them: dropping one would count it lost although it may still arrive.
        self.sent_through = 0

    def take_dropped(self) -> Dropped:
        with self._lock:
            d, self._dropped = self._dropped, Dropped()
        return d

    def _note_drop(self, reason: str, topic: str, size: int, created: float) -> None:
        self._dropped.add(reason, topic, size, created)
        self.dropped_total[reason] += 1


class MemorySpool(_Bounded):
    """In-memory spool with the same bounds and semantics (nothing survives a restart)."""

    def __init__(self, max_bytes: int = 16 << 20, max_age: float = 7 * 86400.0) -> None:
        super().__init__(max_bytes, max_age)
        self._entries: OrderedDict[int, SpoolEntry] = OrderedDict()
        self._next = 1
        self._bytes = 0

    def append(self, topic: str, payload: bytes, created: float, *, replayed: bool) -> int:
        with self._lock:
            eid = self._next
            self._next += 1
            self._entries[eid] = SpoolEntry(eid, topic, payload, created, replayed)
            self._bytes += len(topic) + len(payload) + _OVERHEAD
            if self._bytes > self.max_bytes:
                for old in [e for e in self._entries.values() if self.sent_through < e.id < eid]:
                    if self._bytes <= self.max_bytes:
                        break
                    del self._entries[old.id]
                    size = len(old.topic) + len(old.payload) + _OVERHEAD
                    self._bytes -= size
                    self._note_drop("size", old.topic, size, old.created)
            return eid

    def peek(self, after_id: int, limit: int) -> list[SpoolEntry]:
        with self._lock:
            out = []
            for eid, e in self._entries.items():
                if eid > after_id:
                    out.append(e)
                    if len(out) >= limit:
                        break
            return out

    def delete(self, ids: list[int]) -> None:
        with self._lock:
            for eid in ids:
                e = self._entries.pop(eid, None)
                if e is not None:
                    self._bytes -= len(e.topic) + len(e.payload) + _OVERHEAD

    def mark_replayed(self) -> int:
        with self._lock:
            n = 0
            for eid, e in list(self._entries.items()):
                if not e.replayed:
                    self._entries[eid] = SpoolEntry(e.id, e.topic, e.payload, e.created, True)
                    n += 1
            return n

    def prune(self, now: float) -> None:
        with self._lock:
            cutoff = now - self.max_age
            while self._entries:
                eid, e = next(iter(self._entries.items()))
                if e.created >= cutoff:
                    break
                del self._entries[eid]
                size = len(e.topic) + len(e.payload) + _OVERHEAD
                self._bytes -= size
                self._note_drop("age", e.topic, size, e.created)

    def stats(self) -> tuple[int, int]:
        with self._lock:
            return len(self._entries), self._bytes

    def adopt_leftovers(self, *, force: bool = False) -> int:
        return 0  # nothing outlives a memory spool to adopt

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    replayed INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL
)
"""


def _restrict(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except PermissionError:  # not ours (a directory an operator made): say so, still run
        log.warning("cannot restrict %s to mode %o", path, mode)


def _remove_old_corrupt(path: Path) -> None:
    """Keep the ``KEEP_CORRUPT`` newest ``<spool>.corrupt-<time>`` copies (with their -wal/-shm)."""
    copies = sorted((p for p in path.parent.glob(f"{path.name}.corrupt-*") if p.name.split("-")[-1].isdigit()),
                    key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
    old = copies[KEEP_CORRUPT:]
    for copy in old:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{copy}{suffix}")
    if old:
        log.warning("removed %d older corrupt spool copies, kept the %d newest", len(old), KEEP_CORRUPT)


class SqliteSpool(_Bounded):
    """The on-disk spool: ``<directory>/spool.sqlite3`` (WAL).

    Telemetry may say more about a site than it should to other local users: the directory is
    0700 and the files 0600 (SQLite gives its ``-wal``/``-shm`` files the database's mode).
    """

    FILE = "spool.sqlite3"

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 16 << 20,
                 max_age: float = 7 * 86400.0, *, lock: SpoolLock | None = None,
                 shared_root: str | os.PathLike[str] | None = None) -> None:
        """``lock``: this directory's lock, held by the caller and released by ``close``;
        ``shared_root``: the directory whose other subdirectories are other agents' spools."""
        super().__init__(max_bytes, max_age)
        self.path = Path(directory) / self.FILE
        self.lock = lock
        self.shared_root = Path(shared_root) if shared_root is not None else None
        self._next_adopt = 0.0
        self.adopted_total = 0
        try:
            Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
            _restrict(Path(directory), 0o700)
            self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open the spool at {self.path}: {exc}",
                             hint="check spool_dir is writable, or unset it to keep telemetry in memory") from exc
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])

    def _open(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            db = self._connect()
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError:  # "file is not a database", "database disk image is malformed"
            ok = False
        if not ok or db is None:
            # A spool we cannot trust is moved aside rather than crash the agent or replay garbage.
            with contextlib.suppress(Exception):
                if db is not None:
                    db.close()
            aside = self.path.with_name(f"{self.FILE}.corrupt-{int(time.time())}")
            log.error("spool %s is corrupt; moved aside to %s", self.path, aside.name)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            self._dropped.corrupt = True
            _remove_old_corrupt(self.path)
            db = self._connect()
        return db

    def _connect(self) -> sqlite3.Connection:
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):  # also the files of an older agent's spool
            if os.path.exists(f"{self.path}{suffix}"):
                _restrict(Path(f"{self.path}{suffix}"), 0o600)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        return db

    def append(self, topic: str, payload: bytes, created: float, *, replayed: bool) -> int:
        size = len(topic) + len(payload) + _OVERHEAD
        with self._lock:
            try:
                cur = self._db.execute("INSERT INTO outbox (topic, payload, created, replayed, size) "
                                       "VALUES (?, ?, ?, ?, ?)", (topic, payload, created, int(replayed), size))
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot write the spool {self.path}: {exc}") from exc
            self._count += 1
            self._bytes += size
            if self._bytes > self.max_bytes:
                self._drop_oldest()
            return int(cur.lastrowid or 0)

    def _drop_oldest(self) -> None:
        excess = self._bytes - self.max_bytes
        freed = 0
        ids = []
        # Never drop the newest entry (the one just written), nor one awaiting its PUBACK.
        for eid, topic, size, created in self._db.execute(
                "SELECT id, topic, size, created FROM outbox WHERE id > ? AND id < (SELECT MAX(id) FROM outbox) "
                "ORDER BY id", (self.sent_through,)):
            ids.append(eid)
            freed += size
            self._note_drop("size", topic, size, created)
            if freed >= excess:
                break
        self._delete_locked(ids, freed)

    def _delete_locked(self, ids: list[int], size: int | None = None) -> None:
        if not ids:
            return
        try:
            self._db.execute("BEGIN")
            if size is None:
                size = 0
                for chunk in _chunks(ids, 500):
                    marks = ",".join("?" * len(chunk))
                    row = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox "
                                           f"WHERE id IN ({marks})", chunk).fetchone()
                    self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                    self._count -= int(row[0])
                    size += int(row[1])
                self._bytes -= size
            else:
                for chunk in _chunks(ids, 500):
                    self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                self._count -= len(ids)
                self._bytes -= size
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise SpoolError(f"cannot update the spool {self.path}: {exc}") from exc

    def peek(self, after_id: int, limit: int) -> list[SpoolEntry]:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, created, replayed FROM outbox WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [SpoolEntry(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def delete(self, ids: list[int]) -> None:
        with self._lock:
            self._delete_locked(ids)

    def mark_replayed(self) -> int:
        with self._lock:
            return self._db.execute("UPDATE outbox SET replayed = 1 WHERE replayed = 0").rowcount

    def prune(self, now: float) -> None:
        with self._lock:
            # Called every tick: look at the oldest entry first (a rowid lookup), scan only if needed.
            oldest = self._db.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
            if oldest is None or oldest[0] >= now - self.max_age:
                return
            rows = self._db.execute("SELECT id, topic, size, created FROM outbox WHERE created < ? ORDER BY id",
                                    (now - self.max_age,)).fetchall()
            for _, topic, size, created in rows:
                self._note_drop("age", topic, size, created)
            self._delete_locked([r[0] for r in rows], sum(r[2] for r in rows))

    def stats(self) -> tuple[int, int]:
        with self._lock:
            return self._count, self._bytes

    # -- spools of agents that are gone ------------------------------------------------------
    def adopt_leftovers(self, *, force: bool = False) -> int:
        """Move the entries of every sibling spool whose lock is free into this one and remove that
        directory; the number of entries moved. Looks at most every ``ADOPT_EVERY_S`` unless
        ``force``. Siblings still locked (a running agent) are left alone."""
        if self.shared_root is None:
            return 0
        now = time.monotonic()
        if not force and now < self._next_adopt:
            return 0
        self._next_adopt = now + ADOPT_EVERY_S
        own = self.path.parent
        moved = 0
        try:
            siblings = sorted(p for p in self.shared_root.iterdir() if p.is_dir() and p != own)
        except OSError as exc:
            log.warning("cannot list the spool root %s: %s", self.shared_root, exc)
            return 0
        for sibling in siblings:
            try:
                lock = spoollock.try_lock(sibling)
            except SpoolError as exc:
                log.warning("%s", exc.one_line())
                continue
            if lock is None:
                continue  # its agent still runs (it drains on its own) or another adopter has it
            try:
                moved += self._adopt_dir(sibling)
            except OSError as exc:  # e.g. renamed or removed under us: the next look tries again
                log.warning("cannot adopt the spool %s: %s", sibling, exc)
            finally:
                lock.release()
        return moved

    def _adopt_dir(self, sibling: Path) -> int:
        work = sibling
        if not sibling.name.startswith(_ADOPTING):
            # Renamed first, under its lock: an agent of that revision starting now makes a new,
            # empty directory instead of writing into the one being emptied.
            work = sibling.with_name(f"{_ADOPTING}{os.getpid()}-{sibling.name}")
            os.replace(sibling, work)
        n = 0
        db = work / self.FILE
        if db.exists():
            n = self.adopt(db)
            log.info("spool: adopted %d report(s) left by %s", n, sibling.name)
        shutil.rmtree(work, ignore_errors=True)
        return n

    def adopt(self, other: Path) -> int:
        """Append every entry of the spool database ``other`` (marked replayed, oldest first) in one
        transaction; the number moved. A database that cannot be read counts as corrupt."""
        with self._lock:
            try:
                self._db.execute("ATTACH DATABASE ? AS old", (str(other),))
            except sqlite3.Error as exc:
                log.error("spool %s cannot be read (%s); its reports are lost", other, exc)
                self._dropped.corrupt = True
                return 0
            try:
                if self._db.execute("SELECT 1 FROM old.sqlite_master WHERE type = 'table' AND name = 'outbox'"
                                    ).fetchone() is None:
                    return 0
                self._db.execute("BEGIN")
                moved = self._db.execute(
                    "INSERT INTO main.outbox (topic, payload, created, replayed, size) "
                    "SELECT topic, payload, created, 1, size FROM old.outbox ORDER BY id").rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                log.error("spool %s cannot be read (%s); its reports are lost", other, exc)
                self._dropped.corrupt = True
                return 0
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("DETACH DATABASE old")
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
            self._count, self._bytes = int(row[0]), int(row[1])
            if self._bytes > self.max_bytes:
                self._drop_oldest()
            self.adopted_total += moved
            return int(moved)

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self.lock is not None:
            self.lock.release()


def _chunks(items: list[int], n: int) -> list[list[int]]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def open_spool(directory: str | None, *, max_bytes: int, max_age: float, instance: str | None = None,
               device: str = "", lock_timeout: float = 60.0) -> SqliteSpool | MemorySpool:
    """The agent's spool. ``directory`` None: in memory. ``instance`` None: ``directory`` itself,
    locked. Else ``<directory>/<device>/<instance>``, locked, adopting its siblings' leftovers."""
    if directory is None:
        return MemorySpool(max_bytes, max_age)
    own = Path(directory)
    shared = None
    if instance is not None:
        shared = own / device
        own = shared / instance
    lock = spoollock.acquire(own, lock_timeout)
    for made in (shared, Path(directory)):  # mkdir(parents=True) made them with the umask's mode
        if made is not None:
            _restrict(made, 0o700)
    try:
        spool = SqliteSpool(own, max_bytes, max_age, lock=lock, shared_root=shared)
    except BaseException:
        lock.release()
        raise
    spool.adopt_leftovers(force=True)
    return spool
