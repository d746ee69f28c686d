"""The agent core: model state, inference, golden probes, health windows and telemetry payloads.

An ``AgentCore`` is one device. It holds no global state and starts no threads of its own, so
the fleet simulator can run hundreds in one process: share one ``LoadedModel`` (one onnxruntime
session) between them with ``use_model``, give each its own clock (``Clock``), spool and
``MqttPublisher`` (``start_telemetry``), and call ``tick()`` from its scheduler. The daemon
(``edgekit_agent.daemon``) does the same for the single real device.

    core = AgentCore(settings)
    core.start_telemetry()            # spool + MQTT publisher from the settings
    core.load()                       # verify + load settings.model_dir; probe; events
    outputs = core.infer({"input": x})
    core.tick()                       # call often: health every interval, probe every probe_interval
    core.shutdown()                   # final health, agent_stopping, offline status, clean disconnect
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from edgekit_agent import __version__
from edgekit_agent.errors import EdgekitError, InferenceRequestError, ModelNotReadyError
from edgekit_agent.loading import LoadedModel, describe_folder, load_model
from edgekit_agent.probing import ProbeResult, run_probe
from edgekit_agent.protocol.payloads import (
    ModelRef,
    bench_result_payload,
    event_payload,
    health_payload,
    status_payload,
)
from edgekit_agent.protocol.topics import bench_request_topic, bench_result_topic, device_topic
from edgekit_agent.settings import AgentSettings
from edgekit_agent.shadowing import ShadowRunner
from edgekit_agent.spool import MemorySpool, Spool, SqliteSpool, open_spool
from edgekit_agent.stats import InferenceStats

log = logging.getLogger("edgekit_agent")
_perf = time.perf_counter


class Clock(Protocol):
    def time(self) -> float: ...        # wall clock, Unix seconds: the ``ts`` of payloads
    def monotonic(self) -> float: ...   # for intervals


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ResourceMeter:
    """RSS and CPU share of this process (the whole process: shared by a simulator's devices)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._last = (time.monotonic(), time.process_time())

    def rss_mb(self) -> float:
        try:
            with open("/proc/self/statm", "rb") as fh:
                return round(int(fh.read().split()[1]) * self._page / 1048576, 2)
        except (OSError, ValueError, IndexError):
            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)

    def cpu_pct(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._last
        self._last = (wall, cpu)
        if wall - last_wall <= 0:
            return 0.0
        return round(max(0.0, (cpu - last_cpu) / (wall - last_wall) * 100.0), 2)


class Outbox(Protocol):
    """Where payloads go (``MqttPublisher``); ``None`` on a core means telemetry is off."""

    spool: Spool

    @property
    def connected(self) -> bool: ...
    def put(self, topic: str, payload: bytes, created: float) -> None: ...
    def publish_status(self) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def abort(self) -> None: ...


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


class AgentCore:
    def __init__(self, settings: AgentSettings, *, clock: Clock | None = None, session_id: str | None = None,
                 meter: ResourceMeter | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.session = session_id or uuid.uuid4().hex
        self.meter = meter or ResourceMeter()
        self.stats = InferenceStats()
        self.model: LoadedModel | None = None
        self.model_ref: ModelRef | None = None
        self.rejected: str | None = None
        self.probe_ok: bool | None = None
        self.probe_ts: float | None = None
        self.probe_detail = ""
        self.outbox: Outbox | None = None
        self.ready = False
        self.requests_rejected = 0
        # the HTTP API's defences (serving.py): refused at the connection cap, closed for not
        # sending headers or body in time, and told to come back when the body budget is spent
        self.connections_refused = 0
        self.connections_timed_out = {"header": 0, "body": 0}
        self.requests_busy = 0
        self.events_sent: dict[str, int] = {}
        self._seq = {"status": 0, "health": 0, "event": 0}
        self._birth_seq: int | None = None
        # Numbering and spooling happen together, so spool order is seq order even when events
        # come from the publisher's thread.
        self._seq_lock = threading.RLock()
        s = settings
        self._topics = {k: device_topic(s.topic_root, s.group, s.device, k)
                        for k in ("status", "health", "event")}
        now = self.clock.monotonic()
        self._window_start = now
        self._next_report = now + s.interval
        self._next_probe = now + s.probe_interval
        self._last_broker_event = -math.inf
        self._dropped_total = 0
        self._dropped_kinds_total: dict[str, int] = {}
        self._run: Any = None
        # the candidate run beside the served model (shadowing.py); None: no shadow evaluation
        self.shadow: ShadowRunner | None = None
        # candidates timed on request beside the served model (benching.py); None: no benches
        self.bench = self._new_bench()

    def _new_bench(self) -> Any:
        s = self.settings
        if not s.bench_enabled or s.app is None:
            return None
        from edgekit_agent.benching import DeviceBench

        self._topics["bench_request"] = bench_request_topic(s.topic_root, s.group, s.device, s.app)
        self._topics["bench_result"] = bench_result_topic(s.topic_root, s.group, s.device, s.app)
        return DeviceBench(s, served=lambda: self.model, publish=self._publish_bench)

    @property
    def platform(self) -> str:
        """The device class: os/arch whose model layers this device takes."""
        if self.settings.platform:
            return self.settings.platform
        from edgekit_agent.oci.fetching import current_platform

        return current_platform()

    def _publish_bench(self, result: dict[str, Any]) -> None:
        s = self.settings
        assert s.app is not None
        payload = bench_result_payload(device=s.device, group=s.group, app=s.app, session=self.session,
                                       ts=self.clock.time(), model=self.model_ref, platform=self.platform,
                                       result=result)
        log.info("bench %s: %s", result.get("id"), result.get("state"))
        if self.outbox is not None:
            self.outbox.put(self._topics["bench_result"], _encode(payload), float(payload["ts"]))

    # -- telemetry plumbing --------------------------------------------------------------------
    def start_telemetry(self, spool: Spool | None = None) -> Outbox | None:
        """Open the spool and start the MQTT publisher (no-op without ``broker_url``)."""
        s = self.settings
        if s.broker_url is None:
            log.info("no broker_url: telemetry is off")
            return None
        from edgekit_agent.publishing import MqttPublisher

        if spool is None:
            spool = open_spool(s.spool_dir, max_bytes=s.spool_max_bytes, max_age=s.spool_max_age,
                               instance=s.spool_instance, device=s.device, lock_timeout=s.spool_lock_timeout_s)
        # Whatever a previous run left behind was not sent when it was made.
        spool.mark_replayed()
        commands = {self._topics["bench_request"]: self.bench.submit} if self.bench is not None else None
        publisher = MqttPublisher(s, spool, status=self.status_message, on_problem=self._on_publisher_problem,
                                  commands=commands)
        self.outbox = publisher
        publisher.start()
        if isinstance(spool, SqliteSpool | MemorySpool) and spool.take_dropped().corrupt:
            self.emit_event("spool_overflow", "the spool was corrupt and was moved aside; its reports are lost",
                            {"reason": "corrupt"})
        return publisher

    def _next_seq(self, kind: str) -> int:
        with self._seq_lock:  # events also come from the publisher's thread
            seq = self._seq[kind]
            self._seq[kind] = seq + 1
            return seq

    def status_message(self, state: str) -> tuple[str, bytes]:
        """(topic, payload) of a status message; ``will`` is the offline payload set as last will.

        The will is made before the birth but takes effect after it, so it gets the sequence
        number after the birth's: ``will`` reserves two numbers and the next ``online`` uses the
        first. (Later status updates on the same connection have higher numbers than the will;
        subscribers should treat the retained status as last-received-wins.)
        """
        st: Literal["online", "offline"] = "online" if state == "online" else "offline"
        if state == "will":
            self._birth_seq = self._next_seq("status")
            seq = self._next_seq("status")
        elif state == "online" and self._birth_seq is not None:
            seq, self._birth_seq = self._birth_seq, None
        else:
            seq = self._next_seq("status")
        payload = status_payload(device=self.settings.device, group=self.settings.group, session=self.session,
                                 seq=seq, ts=self.clock.time(), model=self.model_ref,
                                 state=st, agent_version=__version__,
                                 ready=self.ready if st == "online" else False, signature=self.signature,
                                 platform=self.platform,
                                 bench=self.settings.app if self.bench is not None else None)
        return self._topics["status"], _encode(payload)

    def _send(self, kind: str, payload: Mapping[str, Any]) -> None:
        if self.outbox is None:
            return
        self.outbox.put(self._topics[kind], _encode(payload), float(payload["ts"]))

    def emit_event(self, kind: str, detail: str, data: dict[str, Any] | None = None) -> None:
        level = logging.INFO if kind in ("model_loaded", "probe_recovered", "agent_stopping") else logging.WARNING
        log.log(level, "event %s: %s", kind, detail)
        with self._seq_lock:
            payload = event_payload(device=self.settings.device, group=self.settings.group, session=self.session,
                                    seq=self._next_seq("event"), ts=self.clock.time(), model=self.model_ref,
                                    kind=kind, detail=detail[:4096], data=data)
            self.events_sent[kind] = self.events_sent.get(kind, 0) + 1
            self._send("event", payload)

    def _on_publisher_problem(self, kind: str, detail: str, data: dict[str, Any]) -> None:
        # Denials repeat for every message; one event a minute is enough (it may be denied too).
        now = self.clock.monotonic()
        if now - self._last_broker_event < 60:
            return
        self._last_broker_event = now
        self.emit_event("broker_rejected", detail, {"problem": kind, **data})

    def _set_ready(self, ready: bool) -> None:
        changed = ready != self.ready
        self.ready = ready
        if changed and self.outbox is not None:
            self.outbox.publish_status()

    # -- model ---------------------------------------------------------------------------------
    def load(self, model_dir: str | os.PathLike[str] | None = None) -> bool:
        """Verify and load a model folder; on any failure: ``model_rejected`` event, not ready."""
        s = self.settings
        folder = Path(model_dir or s.model_dir)
        started = _perf()
        try:
            loaded = load_model(folder, image=s.image, public_key=s.public_key, allow_unsigned=s.allow_unsigned,
                                providers=s.execution_providers,
                                intra_op_threads=s.intra_op_threads, spinning=s.intra_op_spinning,
                                name=s.model_name,
                                registry_options=s.registry_options() if s.public_key and s.image else None,
                                chain_dir=s.kept_chains)
        except EdgekitError as exc:
            self.reject(folder, exc)
            return False
        self.prune_chains(loaded.digest, *([self.shadow.digest] if self.shadow is not None else []))
        return self.use_model(loaded, load_ms=(_perf() - started) * 1000)

    def prune_chains(self, *in_use: str) -> None:
        """After a verified load: drop the kept chains of images no longer run, but the previous
        one (``edgekit_agent.keeping``). Never fails a load: a chain left behind only takes space."""
        chain_dir = self.settings.kept_chains
        if chain_dir is None:
            return
        from edgekit_agent.keeping import prune_kept_chains

        try:
            prune_kept_chains(chain_dir, in_use)
        except OSError as exc:
            log.warning("cannot prune the kept chains in %s: %s", chain_dir, exc.strerror or exc)

    def reject(self, folder: Path, exc: EdgekitError) -> None:
        self.model = None
        self._run = None
        self.model_ref = describe_folder(folder, self.settings.image)
        self.rejected = exc.one_line()
        self.probe_ok = None
        self._set_ready(False)
        self.emit_event("model_rejected", self.rejected,
                        {"error": type(exc).__name__, "exit_code": exc.exit_code, "path": str(folder)})

    def use_model(self, loaded: LoadedModel, *, load_ms: float | None = None) -> bool:
        """Serve an already verified model (possibly shared with other cores); probe it first."""
        self.model = loaded
        self._run = loaded.session.session.run
        self.model_ref = loaded.ref
        self.rejected = None
        data: dict[str, Any] = {"providers": list(loaded.session.providers), "path": str(loaded.directory),
                                "precision": loaded.meta.precision,
                                "signature_verified": bool(loaded.provenance and loaded.provenance.key_sha256)}
        if load_ms is not None:
            data["load_ms"] = round(load_ms, 2)
        self.emit_event("model_loaded", f"loaded {loaded.name} {loaded.meta.version} ({loaded.digest}) on "
                                        f"{', '.join(loaded.session.providers)}", data)
        self.run_probe()
        self._next_probe = self.clock.monotonic() + self.settings.probe_interval
        return self.ready

    def load_shadow(self, model_dir: str | os.PathLike[str] | None = None) -> bool:
        """Verify and load ``shadow_image`` (same signature rules as the served model) and run it
        as the shadow; on failure a ``shadow_rejected`` event, and serving goes on without it."""
        s = self.settings
        if s.shadow_image is None:
            return False
        folder = Path(model_dir or s.shadow_model_path)
        before = self.meter.rss_mb()
        try:
            loaded = load_model(folder, image=s.shadow_image, public_key=s.public_key,
                                allow_unsigned=s.allow_unsigned, providers=s.execution_providers,
                                intra_op_threads=1,
                                registry_options=s.registry_options() if s.public_key else None,
                                chain_dir=s.kept_chains)
        except EdgekitError as exc:
            self.emit_event("shadow_rejected", exc.one_line(),
                            {"error": type(exc).__name__, "path": str(folder)})
            return False
        self.prune_chains(loaded.digest, *([self.model.digest] if self.model is not None else []))
        try:
            self.use_shadow(loaded, rss_delta_mb=round(self.meter.rss_mb() - before, 2))
        except ValueError as exc:  # a MODULE:FUNCTION metric that does not import
            self.emit_event("shadow_rejected", str(exc), {"error": "ValueError", "path": str(folder)})
            return False
        return True

    def use_shadow(self, loaded: LoadedModel, *, rss_delta_mb: float | None = None,
                   rng: Any = None) -> ShadowRunner:
        """Run an already verified model as the shadow (the caller starts its thread, or drains it)."""
        s = self.settings
        old, self.shadow = self.shadow, None
        if old is not None:
            old.stop()
        runner = ShadowRunner(loaded.session.session.run, digest=loaded.digest, ratio=s.shadow_ratio,
                              cpu_budget=s.shadow_cpu_budget, metric=s.shadow_metric, queue_size=s.shadow_queue,
                              since=self.clock.time(), rss_delta_mb=rss_delta_mb, rng=rng)
        self.shadow = runner
        self.emit_event("shadow_loaded", f"shadow {loaded.name} {loaded.meta.version} ({loaded.digest}) on "
                                         f"{s.shadow_ratio:g} of requests, metric {s.shadow_metric}",
                        {"digest": loaded.digest, "metric": s.shadow_metric, "ratio": s.shadow_ratio,
                         "rss_delta_mb": rss_delta_mb})
        return runner

    def run_probe(self) -> ProbeResult | None:
        model = self.model
        if model is None:
            return None
        result = run_probe(model.probe, model.session)
        previous = self.probe_ok
        self.probe_ok = result.ok
        self.probe_ts = self.clock.time()
        self.probe_detail = result.detail
        data = {"max_abs_err": _finite(result.max_abs_err), "rtol": model.probe.rtol, "atol": model.probe.atol}
        if not result.ok and previous is not False:
            self.emit_event("probe_failed", result.detail, data)
        elif result.ok and previous is False:
            self.emit_event("probe_recovered", result.detail, data)
        self._set_ready(result.ok)
        return result

    # -- inference -----------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray[Any, Any]],
              output_names: Sequence[str] | None = None) -> list[np.ndarray[Any, Any]]:
        """Run the model; counts latency and errors for health. Raises ``ModelNotReadyError`` when
        no model is loaded or its probe fails, ``InferenceRequestError`` when onnxruntime refuses."""
        run = self._run
        if run is None or not self.ready:
            raise ModelNotReadyError(self._not_ready_reason())
        t0 = _perf()
        try:
            out: list[np.ndarray[Any, Any]] = run(output_names, feeds)
        except Exception as exc:  # onnxruntime errors have no common base class
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            self.stats.record_error(reason)
            raise InferenceRequestError(f"inference failed: {reason}") from exc
        took = _perf() - t0
        self.stats.record(took)
        shadow = self.shadow
        if shadow is not None:
            try:
                shadow.offer(feeds, out, output_names, took)
            except Exception as exc:  # the shadow must never reach the caller
                log.debug("shadow offer failed: %s", exc)
        return out

    def _not_ready_reason(self) -> str:
        if self.rejected:
            return f"model rejected: {self.rejected}"
        if self.model is None:
            return "no model loaded"
        if self.probe_ok is False:
            return f"golden probe failing: {self.probe_detail}"
        return "model not ready"

    @property
    def signature(self) -> Literal["verified", "unverified"]:
        """``verified`` when the model was (or, not loaded yet, will have to be) verified by the key."""
        model = self.model
        if model is not None:
            return "verified" if model.provenance and model.provenance.key_sha256 else "unverified"
        return self.settings.signature

    @property
    def not_ready_reason(self) -> str | None:
        return None if self.ready else self._not_ready_reason()

    # -- periodic work -------------------------------------------------------------------------
    def tick(self) -> None:
        """Fold statistics; report health and run the probe when due; report spool drops."""
        now = self.clock.monotonic()
        self.stats.fold()
        if now >= self._next_report:
            self.report_health(now)
            self._next_report += self.settings.interval
            if self._next_report <= now:  # we were stalled: don't burst to catch up
                self._next_report = now + self.settings.interval
        if self.model is not None and now >= self._next_probe:
            self.run_probe()
            self._next_probe = now + self.settings.probe_interval
        self._check_spool()

    def _check_spool(self) -> None:
        if self.outbox is None:
            return
        spool = self.outbox.spool
        spool.adopt_leftovers()
        spool.prune(self.clock.time())
        dropped = spool.take_dropped()
        if dropped.total:
            # Cumulative counts too: an overflow event is itself spooled and may be dropped later,
            # so the newest one that arrives still tells the whole loss of this run.
            self._dropped_total += dropped.total
            for kind, n in dropped.topics.items():
                self._dropped_kinds_total[kind] = self._dropped_kinds_total.get(kind, 0) + n
            count, size = spool.stats()
            self.emit_event(
                "spool_overflow",
                f"spool bound reached: dropped {dropped.total} oldest report(s) "
                f"({dropped.by_size} over {spool.max_bytes} bytes, {dropped.by_age} older than {spool.max_age:g}s)",
                {"dropped": dropped.total, "dropped_by_size": dropped.by_size, "dropped_by_age": dropped.by_age,
                 "dropped_bytes": dropped.bytes, "dropped_kinds": dropped.topics,
                 "dropped_total": self._dropped_total, "dropped_kinds_total": dict(self._dropped_kinds_total),
                 "oldest_dropped_ts": dropped.oldest_ts, "newest_dropped_ts": dropped.newest_ts,
                 "spool_messages": count, "spool_bytes": size, "max_bytes": spool.max_bytes,
                 "max_age_s": spool.max_age})

    def report_health(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock.monotonic() if now is None else now
        window_s = max(now - self._window_start, 1e-3)
        self._window_start = now
        w = self.stats.take_window()
        payload = health_payload(
            device=self.settings.device, group=self.settings.group, session=self.session,
            seq=self._next_seq("health"), ts=self.clock.time(), model=self.model_ref,
            window_s=round(window_s, 3), inferences=w.inferences, errors=w.errors,
            latency_ms={"p50": w.p50_ms, "p95": w.p95_ms, "p99": w.p99_ms, "max": w.max_ms},
            probe={"ok": self.probe_ok, "ts": self.probe_ts},
            rss_mb=self.meter.rss_mb(), cpu_pct=self.meter.cpu_pct(),
            latency_hist=w.hist.to_wire(),  # type: ignore[arg-type]
            shadow=self.shadow.report() if self.shadow is not None else None)
        self._send("health", payload)
        s = self.settings
        if w.errors >= s.error_burst_min and w.errors >= s.error_burst_ratio * max(w.inferences, 1):
            self.emit_event("error_burst", f"{w.errors} of {w.inferences} inferences failed in {window_s:.1f}s"
                                           + (f"; last: {w.last_error}" if w.last_error else ""),
                            {"errors": w.errors, "inferences": w.inferences, "window_s": round(window_s, 3)})
        return dict(payload)

    # -- stopping ------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 5.0) -> None:
        """Graceful stop: final (partial-window) health, ``agent_stopping``, offline status, disconnect."""
        self.report_health()
        self.emit_event("agent_stopping", "agent is stopping", {"reason": "shutdown"})
        if self.shadow is not None:
            self.shadow.stop()
        if self.outbox is not None:
            self.outbox.stop(timeout)
            self.outbox.spool.close()

    def crash(self) -> None:
        """Stop abruptly, as a kill or power cut would: no goodbye, the broker sends the will."""
        if self.outbox is not None:
            self.outbox.abort()
