"""The pure ingest pipeline: topic -> flood check -> decode -> apply, with counted, rate-limited
rejects. ``FleetWatcher`` runs it off the network thread; tests and benchmarks run it directly.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from edgekit.fleet.decoding import Cleared, Decoder, split_topic
from edgekit.fleet.reports import HealthReport, Reject, Report
from edgekit.fleet.state import FleetState

__all__ = ["Ingestor", "RateLimitedLog"]

LOG: Final = logging.getLogger("edgekit.fleet")


class RateLimitedLog:
    """Log the first occurrence of each key, then at most one line per ``every`` seconds with a
    count of what was suppressed, so a hostile sender cannot flood the log."""

    def __init__(self, logger: logging.Logger = LOG, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, message: str, *, level: int = logging.WARNING) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" (and {suppressed} more like it in the last {now - last:.0f}s)"  # type: ignore[operator]
        self.logger.log(level, message)
        return True


class Ingestor:
    """Feed raw messages into a ``FleetState``; returns what happened to each one."""

    def __init__(self, state: FleetState, decoder: Decoder | None = None, *,
                 log: RateLimitedLog | None = None) -> None:
        self.state = state
        self.decoder = decoder or Decoder()
        self.log = log or RateLimitedLog()
        self._prefix = self.decoder.prefix
        self.last: Report | None = None   # the latest report that decoded (for lag sampling)

    def ingest(self, topic: str, payload: bytes | bytearray, now: float, retained: bool = False) -> str:
        state = self.state
        counters = state.counters
        counters.received += 1
        ref = split_topic(topic, self._prefix)
        if ref is None:
            return self._reject(Reject("unknown_topic", f"not a device topic: {topic[:200]!r}"))
        result = self.decoder.decode_ref(ref, payload)
        if isinstance(result, Reject):
            return self._reject(result)
        if isinstance(result, Cleared):
            state.forget(result.device)
            return "cleared"
        # The flood budget applies to live messages; an agent replaying its spool after an outage
        # sends hours of reports at once, and those are real measurements.
        if not state.admit(ref.device, now) and not getattr(result, "replayed", False):
            return self._reject(Reject("flood", f"more than {state.config.flood_limit} messages in "
                                                f"{state.config.flood_window_s:g}s", ref.device))
        self.last = result
        if type(result) is HealthReport and result.hist_error is not None:
            counters.hist_rejected += 1
            self.log("latency_hist", f"latency_hist ignored from {ref.device} (the report counts without it): "
                                     f"{result.hist_error}")
        return state.apply(result, now, retained=retained)

    def _reject(self, r: Reject) -> str:
        self.state.counters.reject(r.reason)
        who = f" from {r.device}" if r.device else ""
        self.log(r.reason, f"telemetry rejected ({r.reason}){who}: {r.detail}")
        return r.reason
