"""Prometheus exporter of fleet telemetry (``edgekit fleet export``), with bounded label cardinality.

Series (``group`` label on all fleet series):

- per group, gauges: ``edgekit_fleet_devices``, ``..._devices_online``, ``..._devices_offline``,
  ``..._devices_reporting``, ``..._devices_silent``, ``..._devices_healthy``, ``..._error_ratio``,
  ``..._inference_rate`` (inferences/s over each device's latest window), ``..._latency_ms``
  (``quantile`` 0.5/0.95/0.99 of every latency of the devices' latest windows, from their merged
  histograms), ``..._latency_exact`` (1 when every such device sent a histogram; 0: the
  quantiles are the devices' own figures' quantiles, see ``..._devices_without_histogram``),
  ``..._device_p95_ms`` (``quantile`` 0.5 and 0.95 of the devices' p95 latencies),
  ``..._model_devices`` (``digest`` label; the ``max_digests`` most common per group, the rest
  summed under ``digest="other"``);
- per group, counters: ``edgekit_fleet_reports_total``, ``..._inferences_total``,
  ``..._errors_total`` (use ``rate()``; with a shared subscription, ``sum`` them over exporters),
  and the classic histogram ``edgekit_fleet_inference_latency_ms`` (``_bucket`` with fixed ``le``
  bounds in ms, ``_sum``, ``_count``) of every latency reported in a histogram: use
  ``histogram_quantile(0.95, sum by (le) (rate(..._bucket[5m])))`` for a fleet p95 over time and
  over exporters (each log bucket is folded into the first bound at or above its value, so a
  bound is exact to 1%);
- the exporter itself: messages received/rejected (``reason``)/duplicate/stale, latency
  histograms ignored (``..._histograms_rejected_total``), seq gaps,
  lag and report-age quantiles, broker connection, queue; ``edgekit_fleet_snapshot_complete``
  (0 when the broker or the exporter dropped messages, so device counts may be short: alert on
  it), ``..._snapshot_verified`` (the broker's drop counter confirmed it) and
  ``..._snapshot_statuses`` (retained statuses received at the latest subscribe);
- with ``per_device``: ``edgekit_fleet_device_up``, ``..._device_reporting``,
  ``..._device_healthy``, ``..._device_latency_ms`` (``quantile`` 0.5/0.95/0.99),
  ``..._device_error_ratio``, ``..._device_inference_rate``, ``..._device_info`` (model, version,
  digest, agent version), for at most ``max_device_series`` devices (sorted by name; the number
  left out is exported as ``edgekit_fleet_device_series_dropped``).

With ``shared_group`` several exporters split the health and event stream (each exports its
share: sum the counters across them); status is seen by all of them, so device-count gauges are
whole in each (use ``max``, not ``sum``, across exporters).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from edgekit_agent.signalling import setting_on
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from edgekit.errors import ExporterBindError
from edgekit.fleet.completeness import Completeness
from edgekit.fleet.latency import LE_BOUNDS_MS
from edgekit.fleet.settings import FleetSettings
from edgekit.fleet.watching import FleetWatcher

__all__ = ["Exporter", "FleetCollector", "run_exporter", "start_exporter"]

PREFIX = "edgekit_fleet"


class FleetCollector(Collector):
    """Turns a watcher's snapshot into metric families at every scrape."""

    def __init__(self, watcher: FleetWatcher, *, per_device: bool = False, max_device_series: int = 10_000,
                 max_digests: int = 20) -> None:
        self.watcher = watcher
        self.per_device = per_device
        self.max_device_series = max_device_series
        self.max_digests = max_digests

    def collect(self) -> Iterator[Metric]:
        w = self.watcher
        snap = w.snapshot(group=w.settings.group, with_devices=self.per_device)
        yield from self._groups(snap.groups)
        yield from self._self(snap.counters, snap.watcher)
        yield from self._completeness(snap.completeness)
        if snap.devices is not None:
            yield from self._devices(snap.devices)

    def _groups(self, groups: Iterable[Any]) -> Iterator[Metric]:
        gauges = {
            "devices": ("devices", "Devices known in the group."),
            "online": ("devices_online", "Devices whose status is online."),
            "offline": ("devices_offline", "Devices whose status is offline (last will or clean stop)."),
            "reporting": ("devices_reporting", "Devices that reported health within silent_after intervals."),
            "silent": ("devices_silent", "Devices without health within silent_after intervals."),
            "healthy": ("devices_healthy", "Reporting, not offline, latest report healthy."),
            "error_rate": ("error_ratio", "Errors / inferences over each device's latest window."),
            "inference_rate": ("inference_rate", "Inferences per second over each device's latest window."),
        }
        families = {k: GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["group"])
                    for k, (name, doc) in gauges.items()}
        p95 = GaugeMetricFamily(f"{PREFIX}_device_p95_ms", "Quantiles of the devices' latest p95 latency (ms).",
                                labels=["group", "quantile"])
        latency = GaugeMetricFamily(f"{PREFIX}_latency_ms", "Quantiles of every latency of the devices' latest "
                                    "windows (ms), from their merged histograms when latency_exact.",
                                    labels=["group", "quantile"])
        exact = GaugeMetricFamily(f"{PREFIX}_latency_exact", "1 when the latency quantiles come from every "
                                  "device's histogram (1% relative error), 0 when approximated.", labels=["group"])
        no_hist = GaugeMetricFamily(f"{PREFIX}_devices_without_histogram", "Devices whose latest window had "
                                    "inferences but no latency histogram (agents before issue 14).", labels=["group"])
        hist = HistogramMetricFamily(f"{PREFIX}_inference_latency_ms", "Latencies reported in histograms (ms).",
                                     labels=["group"])
        models = GaugeMetricFamily(f"{PREFIX}_model_devices", "Devices per model digest.", labels=["group", "digest"])
        counters = {
            "reports_total": CounterMetricFamily(f"{PREFIX}_reports", "Health reports received.", labels=["group"]),
            "inferences_total": CounterMetricFamily(f"{PREFIX}_inferences", "Inferences reported.", labels=["group"]),
            "errors_total": CounterMetricFamily(f"{PREFIX}_errors", "Inference errors reported.", labels=["group"]),
        }
        for g in groups:
            for key, fam in families.items():
                value = getattr(g, key)
                if value is not None:
                    fam.add_metric([g.group], float(value))
            for q, value in (("0.5", g.p50_of_p95_ms), ("0.95", g.p95_of_p95_ms)):
                if value is not None:
                    p95.add_metric([g.group, q], value)
            for q, value in (("0.5", g.p50_ms), ("0.95", g.p95_ms), ("0.99", g.p99_ms)):
                if value is not None:
                    latency.add_metric([g.group, q], value)
            exact.add_metric([g.group], 1.0 if g.latency_exact else 0.0)
            no_hist.add_metric([g.group], g.no_hist)
            if g.latency_le_total:
                hist.add_metric([g.group], _cumulative(g.latency_le_total), g.latency_sum_ms_total)
            digests = list(g.digests.items())
            for digest, count in digests[:self.max_digests]:
                models.add_metric([g.group, digest], count)
            rest = sum(count for _, count in digests[self.max_digests:])
            if rest:
                models.add_metric([g.group, "other"], rest)
            for key, cfam in counters.items():
                cfam.add_metric([g.group], getattr(g, key))
        yield from families.values()
        yield from (latency, exact, no_hist, p95, hist)
        yield models
        yield from counters.values()

    def _self(self, c: Any, info: dict[str, Any]) -> Iterator[Metric]:
        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        yield counter("messages_received", "Messages the exporter received.", c.received)
        yield counter("messages_accepted", "Messages decoded and applied.", c.accepted)
        rejected = CounterMetricFamily(f"{PREFIX}_messages_rejected", "Messages refused, by reason.",
                                       labels=["reason"])
        for reason, count in sorted(c.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield counter("messages_duplicate", "Messages seen before (redelivered), dropped.", c.duplicates)
        yield counter("messages_stale", "Reports older than the device's latest (kept as history).", c.stale)
        yield counter("histograms_rejected", "Latency histograms ignored (malformed, inconsistent or too wide); "
                      "their reports still count.", c.hist_rejected)
        yield counter("seq_gaps", "Messages missing from devices' live sessions (seq gaps).", c.seq_gaps)
        yield counter("messages_dropped", "Messages dropped because the apply queue was full.",
                      info.get("dropped", 0))
        yield GaugeMetricFamily(f"{PREFIX}_broker_connected", "1 when connected to a broker.",
                                value=1.0 if info.get("connected") else 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_queue", "Messages received, not yet applied.", value=info.get("queued", 0))
        for key, name, doc in (("lag_s", "lag_seconds", "Arrival to applied, recent samples."),
                               ("report_age_s", "report_age_seconds",
                                "Applied time minus the report's ts, recent live reports.")):
            fam = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["quantile"])
            for q, label in (("p50", "0.5"), ("p99", "0.99"), ("max", "1")):
                value = (info.get(key) or {}).get(q)
                if value is not None:
                    fam.add_metric([label], value)
            yield fam

    def _completeness(self, found: Completeness | None) -> Iterator[Metric]:
        if found is None:
            return
        yield GaugeMetricFamily(f"{PREFIX}_snapshot_complete",
                                "1 when the fleet picture holds every device (no retained status dropped); "
                                "0: do not trust device counts.", value=1.0 if found.complete else 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_snapshot_verified",
                                "1 when the broker's drop counter confirmed the picture complete.",
                                value=1.0 if found.verified else 0.0)
        yield GaugeMetricFamily(f"{PREFIX}_snapshot_statuses", "Retained statuses received at the latest subscribe.",
                                value=found.statuses)

    def _devices(self, rows: list[Any]) -> Iterator[Metric]:
        rows = sorted(rows, key=lambda r: (r.group, r.device))
        dropped = max(0, len(rows) - self.max_device_series)
        rows = rows[:self.max_device_series]
        labels = ["group", "device"]
        up = GaugeMetricFamily(f"{PREFIX}_device_up", "1 online, 0 offline or unknown.", labels=labels)
        reporting = GaugeMetricFamily(f"{PREFIX}_device_reporting", "1 when health arrived recently.", labels=labels)
        healthy = GaugeMetricFamily(f"{PREFIX}_device_healthy", "1 when reporting and healthy.", labels=labels)
        latency = GaugeMetricFamily(f"{PREFIX}_device_latency_ms", "Latest window's latency quantiles (ms).",
                                    labels=[*labels, "quantile"])
        errors = GaugeMetricFamily(f"{PREFIX}_device_error_ratio", "Latest window's errors / inferences.",
                                   labels=labels)
        rate = GaugeMetricFamily(f"{PREFIX}_device_inferences", "Latest window's inferences.", labels=labels)
        info = GaugeMetricFamily(f"{PREFIX}_device_info", "Model and agent of the device (value 1).",
                                 labels=[*labels, "model", "version", "digest", "agent_version"])
        for r in rows:
            key = [r.group, r.device]
            up.add_metric(key, 1.0 if r.status == "online" else 0.0)
            reporting.add_metric(key, 1.0 if r.reporting else 0.0)
            healthy.add_metric(key, 1.0 if r.healthy else 0.0)
            for q, value in (("0.5", r.p50_ms), ("0.95", r.p95_ms), ("0.99", r.p99_ms)):
                if value is not None:
                    latency.add_metric([*key, q], value)
            if r.error_rate is not None:
                errors.add_metric(key, r.error_rate)
            if r.inferences is not None:
                rate.add_metric(key, r.inferences)
            info.add_metric([*key, r.model or "", r.version or "", r.digest or "", r.agent_version or ""], 1.0)
        yield from (up, reporting, healthy, latency, errors, rate, info)
        yield GaugeMetricFamily(f"{PREFIX}_device_series_dropped",
                                "Devices left out of per-device series (max_device_series).", value=dropped)


def _cumulative(slots: Iterable[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*(floatToGoString(b) for b in LE_BOUNDS_MS), "+Inf"), slots, strict=True):
        total += count
        out.append((bound, float(total)))
    return out


class Exporter:
    """A running exporter: a watcher plus an HTTP server on ``host:port``."""

    def __init__(self, watcher: FleetWatcher, server: Any, thread: threading.Thread) -> None:
        self.watcher = watcher
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host, self.port = str(host), int(port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.watcher.stop()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_exporter(settings: FleetSettings, host: str, port: int, *, per_device: bool = False,
                   max_device_series: int = 10_000) -> Exporter:
    """Start the watcher and serve ``/metrics`` on ``host:port`` (port 0: any free port)."""
    watcher = FleetWatcher(settings).start()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(watcher, per_device=per_device, max_device_series=max_device_series))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        watcher.stop()
        raise ExporterBindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                hint="pick another --listen address or stop what uses it") from exc
    return Exporter(watcher, server, thread)


def run_exporter(settings: FleetSettings, host: str, port: int, *, per_device: bool = False,
                 max_device_series: int = 10_000, ready: Any = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    done = threading.Event()
    with setting_on(done, signal.SIGTERM), start_exporter(
            settings, host, port, per_device=per_device, max_device_series=max_device_series) as exporter:
        if ready is not None:
            ready(exporter)
        while not done.wait(0.5):
            pass
