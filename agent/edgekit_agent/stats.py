"""Inference statistics: a window for the next health report, cumulative totals for /metrics.

The hot path is one ``list.append`` of a float (bind ``record`` once and call it). Everything
else happens when the agent folds the samples, a few times a second at most: numpy turns the
pending floats into an array, adds them to the window (for p50/p95/p99/max) and to cumulative
Prometheus histogram buckets. Folding takes ``lst[:n]`` and then ``del lst[:n]``, each one call
under the GIL, so samples appended meanwhile by request threads stay for the next fold.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from edgekit_agent.protocol.histograms import LN_GAMMA, MAX_INDEX, MAX_MS, MIN_INDEX, MIN_MS, LatencyHistogram

# Prometheus histogram bucket upper bounds, seconds.
BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                              0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WINDOW_CAP = 1_000_000  # samples kept per window for percentiles; beyond that every other one


@dataclass(frozen=True)
class WindowStats:
    inferences: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    last_error: str | None
    hist: LatencyHistogram = field(default_factory=LatencyHistogram)  # all samples; mergeable


class InferenceStats:
    def __init__(self) -> None:
        self.samples: list[float] = []
        self.record = self.samples.append  # seconds of one successful inference
        self._lock = threading.Lock()
        self._pending_errors = 0
        self._last_error: str | None = None
        # current window
        self._window: list[np.ndarray] = []
        self._window_n = 0
        self._window_kept = 0
        self._window_errors = 0
        self._window_hist = np.zeros(MAX_INDEX - MIN_INDEX + 1, dtype=np.int64)
        # cumulative
        self.total = 0
        self.total_errors = 0
        self.sum_seconds = 0.0
        self.bucket_counts = np.zeros(len(BUCKETS) + 1, dtype=np.int64)  # last = +Inf overflow
        self._edges = np.array(BUCKETS)

    def record_error(self, reason: str | None = None) -> None:
        with self._lock:
            self._pending_errors += 1
            if reason:
                self._last_error = reason

    def fold(self) -> None:
        """Move pending samples into the window and the cumulative histogram."""
        with self._lock:
            n = len(self.samples)
            chunk = self.samples[:n]
            del self.samples[:n]
            errors, self._pending_errors = self._pending_errors, 0
            self.total_errors += errors
            self._window_errors += errors
            if not n:
                return
            arr = np.asarray(chunk, dtype=np.float64)
            self.total += n
            self.sum_seconds += float(arr.sum())
            idx = np.searchsorted(self._edges, arr, side="left")
            self.bucket_counts += np.bincount(idx, minlength=len(BUCKETS) + 1)
            self._window_n += n
            ms = np.clip(arr * 1000.0, MIN_MS, MAX_MS)
            hidx = np.ceil(np.log(ms) / LN_GAMMA - 1e-12).astype(np.int64) - MIN_INDEX
            self._window_hist += np.bincount(hidx, minlength=len(self._window_hist))
            if self._window_kept + n > _WINDOW_CAP:
                arr = arr[::2]
            self._window.append(arr)
            self._window_kept += len(arr)

    def take_window(self) -> WindowStats:
        """Statistics of everything since the previous call; starts a new window."""
        self.fold()
        with self._lock:
            window, self._window = self._window, []
            n, self._window_n = self._window_n, 0
            self._window_kept = 0
            errors, self._window_errors = self._window_errors, 0
            last_error, self._last_error = self._last_error, None
            hist_counts = self._window_hist
            self._window_hist = np.zeros_like(hist_counts)
        if window:
            arr = np.concatenate(window) * 1000.0
            p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
            mx = float(arr.max())
        else:
            p50 = p95 = p99 = mx = 0.0
        nz = np.flatnonzero(hist_counts)
        hist = (LatencyHistogram(int(nz[0]) + MIN_INDEX, tuple(int(c) for c in hist_counts[nz[0]:nz[-1] + 1]))
                if nz.size else LatencyHistogram())
        return WindowStats(n + errors, errors, round(p50, 4), round(p95, 4), round(p99, 4), round(mx, 4),
                           last_error, hist)

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with +Inf, for the Prometheus histogram."""
        self.fold()
        with self._lock:
            counts = np.cumsum(self.bucket_counts)
        return [(b, int(c)) for b, c in zip((*BUCKETS, float("inf")), counts, strict=True)]
