"""Shadow evaluation: a candidate model beside the serving one, run on a sampled share of live
requests after their callers have the answer, so a rollout can judge the candidate on real
inputs before any device switches to it.

The request path only offers: a coin flip (``ratio``), a CPU-budget check and a non-blocking put
on a bounded queue; a full queue drops the sample. One worker thread (``start``) — or the
simulator's scheduler (``drain``) — runs the candidate and compares its outputs with the
serving model's answer. Nothing here raises into the caller or touches the serving statistics:
the candidate's errors are counted apart.

A queued sample holds its request's inputs and outputs, so requests over ``max_sample_bytes`` are
not sampled: the HTTP API's bound on request bytes in flight must not grow by the queue's length.

The CPU budget is a share of one core (``cpu_budget``): a token bucket that fills at that rate
(at most one second's worth) and is spent by the seconds each shadow run took; a sample offered
while the bucket is empty is skipped.

``report()`` is the ``shadow`` object of health reports. Its counts are cumulative since the
candidate was loaded (``since``): the newest report alone holds all the evidence, and a lost
report loses none.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit_agent.agreement import BUILTIN_AGREEMENT, cosine_per_sample, load_user_metric, top1_matches
from edgekit_agent.protocol.histograms import LatencyHistogram, bucket_of

log = logging.getLogger("edgekit_agent")

Run = Callable[[Sequence[str] | None, Mapping[str, Any]], list[np.ndarray[Any, Any]]]


@dataclass(frozen=True)
class _Sample:
    feeds: Mapping[str, np.ndarray[Any, Any]]
    outputs: list[np.ndarray[Any, Any]]
    output_names: Sequence[str] | None
    serving_s: float


class ShadowRunner:
    def __init__(self, run: Run, *, digest: str, ratio: float, cpu_budget: float, metric: str = "top1",
                 queue_size: int = 16, max_sample_bytes: int = 4 << 20, since: float | None = None,
                 rss_delta_mb: float | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.run = run
        self.digest = digest
        self.ratio = ratio
        self.cpu_budget = cpu_budget
        self.metric = metric
        self.max_sample_bytes = max_sample_bytes
        self._user = None if metric in BUILTIN_AGREEMENT else load_user_metric(metric)
        self.since = time.time() if since is None else since
        self.rss_delta_mb = rss_delta_mb
        self._rng = rng or random.Random()
        self._clock = clock
        self._timer = timer
        self._queue: queue.Queue[_Sample | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._tokens = cpu_budget  # a second's worth to start with
        self._filled_at = clock()
        self._thread: threading.Thread | None = None
        # cumulative figures
        self.offered = 0
        self.sampled = 0
        self.skipped_budget = 0
        self.skipped_size = 0  # requests too big to hold for the shadow (the API bounds bodies in flight)
        self.dropped = 0
        self.errors = 0
        self.samples = 0       # compared samples (rows)
        self.agree = 0         # top1: rows whose top class agrees
        self.score_sum = 0.0   # cosine / user metric: sum and sum of squares of per-sample scores
        self.score_sq = 0.0
        self.busy_s = 0.0
        self._serving_buckets: dict[int, int] = {}  # latency of the sampled requests, both models
        self._shadow_buckets: dict[int, int] = {}
        self.last_error: str | None = None

    # -- the request path --------------------------------------------------------------------------
    def offer(self, feeds: Mapping[str, np.ndarray[Any, Any]], outputs: list[np.ndarray[Any, Any]],
              output_names: Sequence[str] | None, serving_s: float) -> bool:
        """Queue a served request for the shadow when sampled and within budget; never blocks."""
        self.offered += 1
        if self.ratio <= 0 or (self.ratio < 1 and self._rng.random() >= self.ratio):
            return False
        held = sum(int(getattr(a, "nbytes", 0)) for a in feeds.values()) + sum(int(a.nbytes) for a in outputs)
        if held > self.max_sample_bytes:
            self.skipped_size += 1
            return False
        with self._lock:
            now = self._clock()
            self._tokens = min(self.cpu_budget, self._tokens + (now - self._filled_at) * self.cpu_budget)
            self._filled_at = now
            if self._tokens <= 0:
                self.skipped_budget += 1
                return False
        try:
            self._queue.put_nowait(_Sample(feeds, outputs, output_names, serving_s))
        except queue.Full:
            self.dropped += 1
            return False
        self.sampled += 1
        return True

    # -- the worker ----------------------------------------------------------------------------
    def start(self) -> ShadowRunner:
        self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        while True:  # make room for the stop mark: the queue may be full of samples
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout)
        self._thread = None

    def drain(self, limit: int | None = None) -> int:
        """Run queued samples on the calling thread (the simulator's scheduler); returns how many."""
        done = 0
        while limit is None or done < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.evaluate(item)
                done += 1
        return done

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.evaluate(item)

    def evaluate(self, item: _Sample) -> None:
        t0 = self._timer()
        try:
            out = self.run(item.output_names, item.feeds)
        except Exception as exc:  # the candidate's failure is a figure, never the caller's problem
            took = self._timer() - t0
            self._spend(took)
            with self._lock:
                self.errors += 1
                self.last_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            return
        took = self._timer() - t0
        self._spend(took)
        try:
            agree, n, total, squares = self._score(item.outputs, out)
        except Exception as exc:  # a metric that fails on these outputs counts as an error
            with self._lock:
                self.errors += 1
                self.last_error = f"metric {self.metric}: {type(exc).__name__}: {exc}"[:300]
            return
        with self._lock:
            self.samples += n
            self.agree += agree
            self.score_sum += total
            self.score_sq += squares
            for buckets, seconds in ((self._serving_buckets, item.serving_s), (self._shadow_buckets, took)):
                k = bucket_of(seconds * 1000.0)
                buckets[k] = buckets.get(k, 0) + 1

    def _spend(self, seconds: float) -> None:
        with self._lock:
            self.busy_s += seconds
            self._tokens -= seconds

    def _score(self, reference: list[np.ndarray[Any, Any]],
               candidate: list[np.ndarray[Any, Any]]) -> tuple[int, int, float, float]:
        if self.metric == "top1":
            agree, n = top1_matches(reference, candidate)
            return agree, n, float(agree), float(agree)
        if self._user is None:
            scores = cosine_per_sample(reference, candidate)
            return 0, int(scores.shape[0]), float(scores.sum()), float((scores ** 2).sum())
        score = float(self._user(list(reference), list(candidate)))
        if not np.isfinite(score):
            raise ValueError(f"returned {score}")
        return 0, 1, score, score * score

    # -- the report ----------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """The health payload's ``shadow`` object (cumulative since ``since``)."""
        with self._lock:
            n = self.samples
            agreement: dict[str, Any] = {"metric": self.metric, "value": None}
            if n:
                agreement["value"] = round((self.agree if self.metric == "top1" else self.score_sum) / n, 6)
            if self.metric == "top1":
                agreement["agree"] = self.agree
            else:
                agreement["sum"] = round(self.score_sum, 6)
                agreement["sum_sq"] = round(self.score_sq, 6)
            serving = LatencyHistogram.from_buckets(self._serving_buckets).quantile(0.95)
            shadow = LatencyHistogram.from_buckets(self._shadow_buckets).quantile(0.95)
            out: dict[str, Any] = {
                "digest": self.digest, "since": round(self.since, 3), "metric": self.metric,
                "samples": n, "offered": self.offered, "sampled": self.sampled,
                "skipped_budget": self.skipped_budget, "skipped_size": self.skipped_size, "dropped": self.dropped,
                "errors": self.errors,
                "agreement": agreement,
                "latency_ms": {"serving_p95": None if serving is None else round(serving, 4),
                               "shadow_p95": None if shadow is None else round(shadow, 4),
                               "ratio": round(shadow / serving, 4) if shadow is not None and serving else None},
                "busy_s": round(self.busy_s, 4),
                "rss_delta_mb": self.rss_delta_mb,
            }
            if self.last_error:
                out["last_error"] = self.last_error
            return out


__all__ = ["ShadowRunner"]
