"""Start and stop local service processes without leaving orphans.

Each service runs in its own session (process group) so that stopping it also stops whatever it
spawned; every started process is remembered and stopped at interpreter exit too, so a failing
test or an interrupted demo leaves nothing running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from edgekit.errors import EdgekitError

_RUNNING: set[ManagedProcess] = set()


class ServiceError(EdgekitError):
    """A local service did not start or answer in time."""

    exit_code = 70


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def pid_runs(pid: int, binary: str) -> bool:
    """True if ``pid`` runs ``binary`` (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return cmdline == binary


def stop_pid(pid: int, binary: str, timeout: float = 10.0) -> None:
    """Stop the process group led by ``pid`` (started detached, found again by pid): TERM, then KILL."""
    if not pid_runs(pid, binary):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_runs(pid, binary):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ManagedProcess:
    """One service process, its log file, and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServiceError(f"cannot start {self.name}: {exc}") from exc
        finally:
            log.close()
        _RUNNING.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServiceError(
                    f"{self.name} exited with {self.proc.returncode if self.proc else '?'}: {self.log_tail(5)}"
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(interval)
        raise ServiceError(f"{self.name} not ready after {timeout:.0f}s; log {self.log_path}")

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def detach(self) -> int:
        """Let the process outlive this interpreter (it is no longer stopped at exit); its pid."""
        _RUNNING.discard(self)
        return self.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        # Reap anything left in the group (children that ignored SIGTERM).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        _RUNNING.discard(self)


@atexit.register
def _stop_all() -> None:
    for proc in list(_RUNNING):
        with contextlib.suppress(Exception):
            proc.stop(timeout=3)


class LocalService:
    """Lifecycle shared by the local services (broker, registry): start on a fixed port, wait until
    it answers, stop cleanly or kill, restart on the same port and state, log tail.

    Subclasses set ``log_path`` and ``port`` and say how to run and probe themselves.
    """

    log_path: Path
    port: int
    start_timeout = 30.0

    def __init__(self) -> None:
        self._proc: ManagedProcess | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self, timeout: float | None = None) -> Self:
        """Start (or start again, on the same port and state)."""
        if self.running:
            return self
        argv = self._argv()
        self._proc = ManagedProcess(f"{Path(argv[0]).name}:{self.port}", argv, self.log_path).start()
        try:
            self._proc.wait_ready(self._ready, timeout=timeout or self.start_timeout, interval=0.05)
        except ServiceError:
            self._proc.stop()
            self._proc = None
            raise
        return self

    def stop(self) -> None:
        """Stop cleanly (SIGTERM, then SIGKILL after a grace period)."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash or a power cut would."""
        if self._proc is not None:
            self._proc.signal(signal.SIGKILL)
            self._proc.stop(timeout=5)
            self._proc = None

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
