"""``edgekit-agent serve``: wire the core, the spool + MQTT publisher and the HTTP API together.

Start order: the HTTP API first (liveness answers while a big model loads), then telemetry (so the
load events are spooled), then the model (fetched first when ``image`` is set and the folder is
empty; a folder already there is not fetched again, but ``core.load`` checks its kept chain again,
offline), then the shadow candidate when ``shadow_image`` is set (the same way, into
``shadow_model_dir``; its worker thread runs sampled requests after they are answered), then the
tick loop. SIGTERM/SIGINT stop gracefully: a final health report for the partial
window, an ``agent_stopping`` event, the spool drained (for up to ``drain_timeout_s``; the rest stays
spooled), a retained ``offline`` status and a clean
DISCONNECT (so the broker does not fire the will). SIGHUP retries a broker that refused our login.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edgekit_agent.core import AgentCore
from edgekit_agent.errors import AgentError, EdgekitError
from edgekit_agent.loading import fetch_model
from edgekit_agent.modelmeta import METADATA_FILE
from edgekit_agent.publishing import MqttPublisher
from edgekit_agent.serving import InferenceServer
from edgekit_agent.settings import AgentSettings
from edgekit_agent.signalling import relayed_signals

log = logging.getLogger("edgekit_agent")

# After SIGTERM: the drain, then at most this long for the final report, the offline status, the
# DISCONNECT and the exit. The DaemonSet's grace period leaves a little more before its SIGKILL.
STOP_GRACE_S = 8.0


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[Callable[[], None]]:
    """Yield ``arm``: once called, a stop that takes longer than ``seconds`` writes every thread's
    stack to stderr and exits 1, so a hang says where it hung (a SIGKILL would say nothing).
    Only for the process's own daemon (main thread); in a thread ``arm`` does nothing."""
    armed = False

    def arm() -> None:
        nonlocal armed
        if threading.current_thread() is threading.main_thread():
            faulthandler.dump_traceback_later(seconds, exit=True)
            armed = True

    try:
        yield arm
    finally:
        if armed:
            faulthandler.cancel_dump_traceback_later()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s edgekit-agent: %(message)s"))
    root = logging.getLogger("edgekit_agent")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def return_big_buffers_to_the_os() -> None:
    """Fix glibc's mmap threshold at 1 MiB.

    glibc raises the threshold after a big block is freed, so the next multi-MiB request bodies
    come from per-thread arenas that keep the memory: one round of 8 MiB bombs on 16 threads left
    ~130 MiB resident. With a fixed threshold each big body is mapped and unmapped on its own.
    """
    with contextlib.suppress(OSError, AttributeError):  # no mallopt outside glibc
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def start_shadow(core: AgentCore, settings: AgentSettings) -> None:
    """Fetch (once) and load the shadow candidate, then start its worker thread. A candidate that
    fails is reported (``shadow_rejected``) and serving goes on without it."""
    assert settings.shadow_image is not None
    folder = Path(settings.shadow_model_path)
    if not (folder / METADATA_FILE).exists():
        try:
            log.info("fetching shadow %s into %s", settings.shadow_image, folder)
            fetch_model(settings.shadow_image, folder, public_key=settings.public_key,
                        allow_unsigned=settings.allow_unsigned, options=settings.registry_options(),
                        max_model_bytes=settings.max_model_bytes)
        except EdgekitError as exc:
            core.emit_event("shadow_rejected", exc.one_line(), {"error": type(exc).__name__, "path": str(folder)})
            return
    if core.load_shadow(folder) and core.shadow is not None:
        core.shadow.start()


def serve(settings: AgentSettings, *, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); returns the exit status."""
    settings.check_files()
    return_big_buffers_to_the_os()
    stop = stop or threading.Event()
    core = AgentCore(settings)
    try:
        server = InferenceServer(core).start()
    except OSError as exc:
        raise AgentError(f"cannot listen on {settings.listen_host}:{settings.listen_port}: {exc.strerror}",
                         hint="set listen_port to a free port") from exc
    log.info("listening on %s (session %s, device %s, group %s)", server.url, core.session, settings.device,
             settings.group)

    def on_stop(signum: int) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(signum: int) -> None:
        if isinstance(core.outbox, MqttPublisher):
            log.info("SIGHUP: retrying the broker connection")
            core.outbox.retry()

    signals: dict[int, Callable[[int], object]] = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop,
                                                  signal.SIGHUP: on_hup}
    with relayed_signals(signals), watchdog(settings.drain_timeout_s + STOP_GRACE_S) as arm:
        try:
            core.start_telemetry()
            folder = Path(settings.model_dir)
            if settings.image and not (folder / METADATA_FILE).exists():
                try:
                    log.info("fetching %s into %s", settings.image, folder)
                    fetch_model(settings.image, folder, public_key=settings.public_key,
                                allow_unsigned=settings.allow_unsigned,
                                options=settings.registry_options(), max_model_bytes=settings.max_model_bytes)
                except EdgekitError as exc:
                    core.reject(folder, exc)
            if core.rejected is None:
                core.load(folder)
            if settings.shadow_image:
                start_shadow(core, settings)
            period = min(0.25, settings.interval / 4)
            while not stop.wait(period):
                core.tick()
        finally:
            arm()
            log.info("shutting down")
            started = time.monotonic()
            try:
                core.shutdown(settings.drain_timeout_s)
            finally:
                server.stop()
            log.info("stopped in %.1fs", time.monotonic() - started)
    return 0
