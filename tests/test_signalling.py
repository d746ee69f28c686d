"""Signals that stop a daemon: the handler takes no lock, so a signal that lands while the main
thread holds the lock ``Event.set()`` needs cannot hang the process.

Each case runs in its own interpreter (a hang must not take pytest with it) and holds the event's
Condition lock on purpose, as ``Event.wait`` does for a few bytecodes on every pass, while the
signal arrives. The first case shows the hazard is real: the plain handler hangs there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from edgekit_agent.signalling import SignalRelay, relayed_signals, setting_on

from tests.fixtures.agent import wait_until

HOLD_THE_LOCK_THEN_SIGNAL = """
import os, signal, sys, threading, time
stop = threading.Event()
{install}
with stop._cond:            # what Event.wait holds for a moment on every pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)         # the handler runs here, in this thread, lock held
print("set" if stop.wait(10) else "not set", flush=True)
{uninstall}
"""


def _run(install: str, uninstall: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
    code = HOLD_THE_LOCK_THEN_SIGNAL.format(install=install, uninstall=uninstall)
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return None


def test_a_handler_that_sets_the_event_itself_hangs_the_process() -> None:
    # Not hung, it would print within a second; 6 s leaves room for a busy machine.
    assert _run("signal.signal(signal.SIGTERM, lambda *_: stop.set())", timeout=6) is None


def test_the_relayed_signal_sets_the_event_once_the_lock_is_free() -> None:
    done = _run("from edgekit_agent.signalling import setting_on\n"
                "relay = setting_on(stop, signal.SIGTERM); relay.__enter__()",
                "relay.__exit__(None, None, None)")
    assert done is not None, "the relayed signal hung the process"
    assert (done.returncode, done.stdout.strip()) == (0, "set"), done.stderr


def test_each_signal_reaches_its_own_callback_and_uninstall_restores_the_old_handlers() -> None:
    got: list[int] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    relay = SignalRelay({signal.SIGUSR1: got.append, signal.SIGUSR2: got.append}).install()
    try:
        sent = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1]
        for n, signum in enumerate(sent, 1):  # one at a time: two of a kind pending at once are one
            os.kill(os.getpid(), signum)
            wait_until(lambda n=n: len(got) == n, 10)  # type: ignore[misc]
        assert got == sent
    finally:
        relay.uninstall()
    assert {s: signal.getsignal(s) for s in before} == before
    assert not any(t.name == "signals" and t.is_alive() for t in threading.enumerate())


def test_many_signals_at_once_lose_no_stop() -> None:
    stop = threading.Event()
    with setting_on(stop, signal.SIGUSR1):
        for _ in range(500):  # more than the pipe takes at once is fine: one byte is enough to stop
            os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.wait(10)


def test_outside_the_main_thread_nothing_is_installed() -> None:
    seen: list[object] = []

    def other() -> None:
        with relayed_signals({signal.SIGUSR1: seen.append}):
            seen.append(signal.getsignal(signal.SIGUSR1))

    before = signal.getsignal(signal.SIGUSR1)
    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert seen == [before]


@pytest.mark.parametrize("where", ["main", "thread"])
def test_the_stop_watchdog_dumps_the_stacks_and_exits_when_a_stop_hangs(where: str) -> None:
    code = textwrap.dedent(f"""
        import threading, time
        from edgekit_agent.daemon import watchdog
        def stopping():
            with watchdog(0.5) as arm:
                arm()
                time.sleep(3)      # a stop that hangs
            print("returned", flush=True)
        if {where!r} == "main":
            stopping()
        else:
            t = threading.Thread(target=stopping); t.start(); t.join()
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parent.parent)
    if where == "main":
        assert done.returncode == 1 and "returned" not in done.stdout
        assert "Timeout (0:00:00.500000)!" in done.stderr and "in stopping" in done.stderr
    else:  # a serve() run in a thread (as tests and the simulator do) is never killed by it
        assert done.returncode == 0 and "returned" in done.stdout and "Timeout" not in done.stderr
