"""Signals handled outside the signal handler.

A Python signal handler runs in the main thread between two bytecodes, possibly while that thread
holds a lock, and ``threading.Event.wait`` holds one (its Condition's) for a few bytecodes on every
pass. A handler that calls ``Event.set()``, which takes the same lock, then waits for itself and
the process hangs until SIGKILL. So the handler here only writes the signal's number into a pipe
(``os.write`` takes no Python lock), and a relay thread reads it and calls the callbacks, where
taking a lock is safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

Callback = Callable[[int], object]


class SignalRelay:
    """Call ``callbacks[signum](signum)`` on a relay thread for each signal received while installed."""

    def __init__(self, callbacks: Mapping[int, Callback]) -> None:
        self._callbacks = dict(callbacks)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous: dict[int, object] = {}
        self._thread = threading.Thread(target=self._relay, name="signals", daemon=True)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # A full pipe already holds wake-ups enough; a closed one means we are being removed.
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([signum]))

    def _relay(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:  # the write end was closed: uninstalled
                return
            for signum in data:
                callback = self._callbacks.get(signum)
                if callback is not None:
                    callback(signum)

    def install(self) -> SignalRelay:
        self._thread.start()
        for signum in self._callbacks:
            self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()
        os.close(self._write_fd)
        self._thread.join(5)
        os.close(self._read_fd)


@contextlib.contextmanager
def relayed_signals(callbacks: Mapping[int, Callback]) -> Iterator[None]:
    """While inside, each signal in ``callbacks`` runs its callback on a relay thread. Outside the
    main thread (where Python cannot install handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    relay = SignalRelay(callbacks).install()
    try:
        yield
    finally:
        relay.uninstall()


def setting_on(event: threading.Event, *signums: int) -> contextlib.AbstractContextManager[None]:
    """While inside, any of ``signums`` sets ``event``."""
    return relayed_signals({signum: lambda _signum: event.set() for signum in signums})


__all__ = ["SignalRelay", "relayed_signals", "setting_on"]
