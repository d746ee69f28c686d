"""Device benchmarks: candidate images timed beside the served model on this device, never served.

``edgekit bench --group G --app A CANDIDATE...`` publishes a request on the device's bench topic
(``{root}/{group}/{device}/bench/{app}/request``, schema ``bench_request``); the agent answers on
``.../result`` (schema ``bench_result``): ``running`` when it starts, then ``done``, or at once
``busy`` / ``rejected``.

A request comes from whoever may publish on the topic, so it is treated as hostile:

- candidates are named by digest and must come from the registry of the served image; each is
  fetched and verified exactly as a model to serve (``fetch_model`` / ``load_model``: the
  configured release key; unsigned only when the agent itself runs ``allow_unsigned``), and must
  take the served model's inputs; a refused candidate is a line in the result, never loaded;
- at most ``bench_max_candidates`` candidates of at most ``bench_max_model_bytes`` each, at most
  ``bench_max_runs`` timed runs per model, at most ``bench_max_seconds`` of wall time in all (a bench
  cut short says so: ``truncated``); one bench at a time (another request meanwhile: ``busy``);
  refused and busy requests get at most 10 answers a minute, then none (a flood cannot fill the
  spool);
- its CPU is bounded: one worker thread at a lowered priority (nice +10 where the OS lets it),
  onnxruntime sessions of one intra-op thread, models run one after another, and after each timed
  run the worker sleeps so that its busy time stays within ``bench_cpu_budget`` of one core
  (default 0.25). The served model's own session is never used: serving latency is not queued
  behind a bench.

Timing is interleaved: every round runs the served model (in a session of its own, built like the
candidates') and each candidate once, on the served model's golden-probe inputs, in an order that
rotates each round, so drift (thermal, other load) falls on all alike and the ratio to the served
model is honest. Each figure comes with its sample size and spread (median, p90, min, max), and
its per-round times in round order (``samples_ms``, the complete rounds only, at most
``bench_max_runs`` and ``MAX_SAMPLES`` of them), so the caller can pair each candidate with the
served model (or with another candidate) round by round and test the ratio rather than trust it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent import safejson
from edgekit_agent.errors import EdgekitError
from edgekit_agent.loading import LoadedModel, fetch_model, load_model
from edgekit_agent.oci.reference import parse_reference
from edgekit_agent.runtime import create_session
from edgekit_agent.settings import AgentSettings

log = logging.getLogger("edgekit_agent")

BENCH_SCHEMA_VERSION = 1
DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5
MAX_WARMUP = 20
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_NICE = 10
_REFUSALS_PER_MINUTE = 10  # answers to refused or busy requests; past it they go unanswered
MAX_SAMPLES = 1000  # per-round times sent per model: keeps a result bounded whatever bench_max_runs is

Run = Callable[[Sequence[str] | None, Mapping[str, Any]], list[Any]]


class BenchRequestError(ValueError):
    """A request the agent will not run (its one line goes back in a ``rejected`` result)."""


@dataclass(frozen=True)
class BenchRequest:
    id: str
    candidates: tuple[str, ...]
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    max_seconds: float | None = None


def parse_bench_request(payload: bytes, settings: AgentSettings) -> BenchRequest:
    """Pure: a request payload checked against the schema and this agent's bounds."""
    if len(payload) > 16384:
        raise BenchRequestError(f"request of {len(payload)} bytes (at most 16384)")
    try:
        data = safejson.loads(payload)
    except ValueError as exc:
        raise BenchRequestError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BenchRequestError("the request is not a JSON object")
    unknown = set(data) - {"v", "id", "candidates", "runs", "warmup", "max_seconds"}
    if unknown:
        raise BenchRequestError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if data.get("v") != BENCH_SCHEMA_VERSION:
        raise BenchRequestError(f"schema version {data.get('v')!r}; this agent speaks {BENCH_SCHEMA_VERSION}")
    rid = data.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise BenchRequestError("id: 1-64 letters, digits, . _ -")
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates or not all(isinstance(c, str) for c in candidates):
        raise BenchRequestError("candidates: a non-empty list of image references")
    if len(candidates) > settings.bench_max_candidates:
        raise BenchRequestError(f"{len(candidates)} candidates (this agent times at most "
                                f"{settings.bench_max_candidates})")
    if len(set(candidates)) != len(candidates):
        raise BenchRequestError("a candidate is named twice")
    served = parse_reference(settings.image) if settings.image else None
    for image in candidates:
        try:
            ref = parse_reference(image)
        except EdgekitError as exc:
            raise BenchRequestError(f"candidate {image[:200]!r}: {exc.one_line()}") from exc
        if ref.digest is None or not _DIGEST.match(ref.digest):
            raise BenchRequestError(f"candidate {image[:200]!r} is not pinned by digest (…@sha256:…)")
        if served is None:
            raise BenchRequestError("this agent serves a local model folder: it fetches no candidates")
        if ref.registry != served.registry:
            raise BenchRequestError(f"candidate {image[:200]!r} is not on {served.registry}, the registry "
                                    "of the served image")
    runs = _int(data, "runs", DEFAULT_RUNS, 1, settings.bench_max_runs)
    warmup = _int(data, "warmup", DEFAULT_WARMUP, 0, MAX_WARMUP)
    max_seconds = data.get("max_seconds")
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float)
                                    or not 0 < max_seconds < math.inf):
        raise BenchRequestError("max_seconds: a positive number")
    # the requester's deadline, within the agent's own bound (which always applies)
    limit = min(float(max_seconds), settings.bench_max_seconds) if max_seconds else None
    return BenchRequest(rid, tuple(candidates), runs, warmup, limit)


def _int(data: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BenchRequestError(f"{name}: an integer in [{low}, {high}]")
    return value


def timing_summary(samples_ms: Sequence[float]) -> dict[str, Any]:
    """Pure: n, median, p90, min and max of timed runs (milliseconds; p90 by nearest rank)."""
    if not samples_ms:
        return {"n": 0, "median_ms": None, "p90_ms": None, "min_ms": None, "max_ms": None}
    ordered = sorted(samples_ms)
    n = len(ordered)
    p90 = ordered[min(n - 1, max(0, int(np.ceil(0.9 * n)) - 1))]
    return {"n": n, "median_ms": round(float(np.median(ordered)), 4), "p90_ms": round(p90, 4),
            "min_ms": round(ordered[0], 4), "max_ms": round(ordered[-1], 4)}


def round_samples(samples_ms: Sequence[float]) -> list[float]:
    """Pure: per-round times rounded as the other figures are (a smaller payload, far below the
    timer's noise)."""
    return [round(float(x), 4) for x in samples_ms]


def paired_samples(samples: Mapping[str, Sequence[float]], limit: int) -> dict[str, list[float]]:
    """Pure: each model's per-round times cut to the rounds all of them finished (a deadline can
    fall inside a round, after some models ran in it), at most ``limit`` and ``MAX_SAMPLES``, and
    rounded: index ``i`` is round ``i`` for every model, so the caller can pair them."""
    complete = min((len(s) for s in samples.values()), default=0)
    complete = min(complete, limit, MAX_SAMPLES)
    return {image: round_samples(s[:complete]) for image, s in samples.items()}


def idle_after(busy_s: float, budget: float) -> float:
    """Pure: how long to sleep after ``busy_s`` of work so busy time stays within ``budget`` of a core."""
    return busy_s * (1.0 - budget) / budget


@dataclass
class _Timed:
    image: str
    run: Run
    output_names: list[str]
    samples: list[float]
    error: str | None = None


class DeviceBench:
    """One agent's bench runner: at most one bench at a time, on its own worker thread.

    ``served`` returns the model the agent serves now (or None); ``publish`` sends a result
    payload. ``sleep`` and ``timer`` are seams for the duty cycle (real ones by default)."""

    def __init__(self, settings: AgentSettings, *, served: Callable[[], LoadedModel | None],
                 publish: Callable[[dict[str, Any]], None], sleep: Callable[[float], None] = time.sleep,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.settings = settings
        self.served = served
        self.publish = publish
        self.sleep = sleep
        self.timer = timer
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None
        self.completed = 0
        self.unanswered = 0
        self._refusals: list[float] = []

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def submit(self, payload: bytes) -> str:
        """Take a request from the broker (never blocks): ``running``, ``busy`` or ``rejected``
        (``ignored`` past ``_REFUSALS_PER_MINUTE`` refusals: a flood of requests gets no answers,
        so it cannot fill the spool)."""
        try:
            request = parse_bench_request(payload, self.settings)
        except BenchRequestError as exc:
            log.warning("bench request refused: %s", exc)
            return self._refuse({"id": _request_id(payload), "state": "rejected", "detail": str(exc)[:1000]})
        if not self._busy.acquire(blocking=False):
            return self._refuse({"id": request.id, "state": "busy",
                                 "detail": "another bench is running on this device"})
        self.publish({"id": request.id, "state": "running", "candidates": list(request.candidates),
                      "runs": request.runs})
        self._thread = threading.Thread(target=self._work, args=(request,), name="bench", daemon=True)
        self._thread.start()
        return "running"

    def _refuse(self, answer: dict[str, Any]) -> str:
        now = time.monotonic()
        self._refusals = [t for t in self._refusals if now - t < 60.0]
        if len(self._refusals) >= _REFUSALS_PER_MINUTE:
            self.unanswered += 1
            return "ignored"
        self._refusals.append(now)
        self.publish(answer)
        return str(answer["state"])

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self, request: BenchRequest) -> None:
        try:
            with contextlib.suppress(OSError, AttributeError):  # lower this thread only (Linux threads are tasks)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
            try:
                result = self.run(request)
            except Exception as exc:  # the bench must never take the agent down
                log.exception("bench %s failed", request.id)
                result = {"id": request.id, "state": "failed", "detail": f"{type(exc).__name__}: {exc}"[:1000]}
            self.publish(result)
        finally:
            self.completed += 1
            self._busy.release()

    def run(self, request: BenchRequest) -> dict[str, Any]:
        """Fetch, verify and time the candidates; the ``done`` result (or ``failed``)."""
        s = self.settings
        started = time.monotonic()
        deadline = started + min(request.max_seconds or s.bench_max_seconds, s.bench_max_seconds)
        served = self.served()
        if served is None:
            return {"id": request.id, "state": "failed", "detail": "no model is served: nothing to compare with"}
        feeds = {name: np.asarray(value) for name, value in served.probe.inputs.items()}
        reference = create_session(str(served.directory / served.meta.model.path),
                                   providers=s.execution_providers, intra_op_threads=1)
        timed = [_Timed("running", reference.session.run, reference.output_names, [])]
        entries: list[dict[str, Any]] = []
        base = Path(s.bench_path)
        base.mkdir(parents=True, exist_ok=True)
        for left in base.glob("run-*"):  # what a bench cut short by a crash left behind (only ours)
            shutil.rmtree(left, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        try:
            for i, image in enumerate(request.candidates):
                entry: dict[str, Any] = {"image": image, "digest": image.rsplit("@", 1)[-1]}
                entries.append(entry)
                if time.monotonic() >= deadline:
                    entry.update(status="skipped", detail="the bench ran out of time before this candidate")
                    continue
                loaded = self._load(image, scratch / str(i), entry)
                if loaded is None:
                    continue
                missing = sorted(set(feeds) - {t.name for t in loaded.session.inputs})
                if missing:
                    entry.update(status="refused", error="InputMismatch",
                                 detail=f"the candidate does not take the served model's input(s) {', '.join(missing)}")
                    continue
                entry["status"] = "ok"
                entry["name"], entry["version"] = loaded.name, loaded.meta.version
                entry["precision"] = loaded.meta.precision
                timed.append(_Timed(image, loaded.session.session.run, loaded.session.output_names, []))
            truncated = self._time(timed, feeds, request, deadline)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        by_image = {t.image: t for t in timed}
        rounds = paired_samples({t.image: t.samples for t in timed if t.error is None},
                                min(request.runs, s.bench_max_runs))
        running = timing_summary(by_image["running"].samples)
        running["samples_ms"] = rounds.get("running", [])
        for entry in entries:
            t = by_image.get(entry["image"])
            if t is None or entry.get("status") != "ok":
                continue
            if t.error is not None:
                entry.update(status="failed", error="InferenceError", detail=t.error)
                continue
            entry.update(timing_summary(t.samples))
            entry["samples_ms"] = rounds.get(t.image, [])
            entry["ratio"] = (round(entry["median_ms"] / running["median_ms"], 4)
                              if entry["median_ms"] is not None and running["median_ms"] else None)
            entry["ratio_p90"] = (round(entry["p90_ms"] / running["p90_ms"], 4)
                                  if entry["p90_ms"] is not None and running["p90_ms"] else None)
        return {"id": request.id, "state": "done", "runs": request.runs, "warmup": request.warmup,
                "threads": 1, "cpu_budget": s.bench_cpu_budget, "truncated": truncated,
                "seconds": round(time.monotonic() - started, 3),
                "running": {"digest": served.digest, "name": served.name, "version": served.meta.version,
                            **running},
                "candidates": entries}

    def _load(self, image: str, folder: Path, entry: dict[str, Any]) -> LoadedModel | None:
        s = self.settings
        options = s.registry_options() if s.image else None
        try:
            fetch_model(image, folder, public_key=s.public_key, allow_unsigned=s.allow_unsigned, options=options,
                        max_model_bytes=s.bench_max_model_bytes, platform=s.platform)
            return load_model(folder, image=image, public_key=s.public_key, allow_unsigned=s.allow_unsigned,
                              providers=s.execution_providers, intra_op_threads=1, registry_options=options)
        except EdgekitError as exc:
            log.warning("bench: candidate %s refused: %s", image, exc.one_line())
            entry.update(status="refused", error=type(exc).__name__, exit_code=exc.exit_code,
                         detail=exc.one_line()[:1000])
            return None

    def _time(self, timed: list[_Timed], feeds: Mapping[str, Any], request: BenchRequest, deadline: float) -> bool:
        """Interleaved rounds with a rotating order; True when the deadline cut them short. A
        candidate that fails on the inputs leaves the rounds with its error (``_Timed.error``)."""
        budget = self.settings.bench_cpu_budget
        for r in range(request.warmup + request.runs):
            live = [t for t in timed if t.error is None]
            k = r % len(live)
            for t in live[k:] + live[:k]:
                if time.monotonic() >= deadline:
                    return True
                t0 = self.timer()
                try:
                    t.run(t.output_names, feeds)
                except Exception as exc:  # onnxruntime errors have no common base class
                    t.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                    log.warning("bench: %s failed to run: %s", t.image, t.error)
                    if t.image == "running":
                        return False
                    continue
                took = self.timer() - t0
                if r >= request.warmup:
                    t.samples.append(took * 1000.0)
                self.sleep(idle_after(took, budget))
        return False


def _request_id(payload: bytes) -> str | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        rid = safejson.loads(payload).get("id")
        if isinstance(rid, str) and _ID.match(rid):
            return rid
    return None


__all__ = ["MAX_SAMPLES", "BenchRequest", "BenchRequestError", "DeviceBench", "idle_after",
           "paired_samples", "parse_bench_request", "round_samples", "timing_summary"]
