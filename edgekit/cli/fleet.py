"""``edgekit fleet status|watch|export``: the fleet as its agents report it over MQTT."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edgekit.cli._output import console, emit_json, output_option
from edgekit.errors import ConfigError, IncompleteTelemetryError
from edgekit.fleet.aggregating import GroupStats
from edgekit.fleet.settings import FleetSettings, load_fleet_settings
from edgekit.fleet.snapshotting import Rates, iter_snapshots, take_snapshot
from edgekit.fleet.views import DeviceRow, FleetSnapshot

F = TypeVar("F", bound=Callable[..., Any])

SORTS = ("name", "status", "error-rate", "p95", "age")
_STATUS_ORDER = {"offline": 0, "unknown": 1, "online": 2}


def broker_options(func: F) -> F:
    """Where the telemetry is and how to read it; every option also has an ``EDGEKIT_FLEET_*``
    environment variable (e.g. ``EDGEKIT_FLEET_MQTT_PASSWORD``) and a ``--config`` file field."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="Fleet settings file (JSON/YAML; fields as in EDGEKIT_FLEET_* without prefix)."),
        click.option("--broker", "brokers", multiple=True, metavar="URL",
                     help="mqtt://host[:port] or mqtts://host[:port]; repeat for failover brokers "
                          "[default: mqtt://127.0.0.1:1883]."),
        click.option("--topic-root", default=None, help="Topic root [default: edgekit/v1]."),
        click.option("--group", "-g", default=None, help="Only this device group."),
        click.option("--username", default=None, help="MQTT user name (read-only user recommended)."),
        click.option("--password-file", type=click.Path(dir_okay=False), default=None,
                     help="File holding the MQTT password (or set EDGEKIT_FLEET_MQTT_PASSWORD)."),
        click.option("--ca-file", type=click.Path(dir_okay=False), default=None, help="CA bundle for mqtts://."),
        click.option("--cert-file", type=click.Path(dir_okay=False), default=None, help="Client certificate."),
        click.option("--key-file", type=click.Path(dir_okay=False), default=None, help="Client certificate key."),
        click.option("--mqtt-protocol", type=click.Choice(["auto", "5", "3.1.1"]), default=None,
                     help="MQTT version [default: auto = 5, else 3.1.1]."),
        click.option("--interval", type=float, default=None,
                     help="The agents' health interval in seconds [default: 10]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(kw: dict[str, Any], **extra: Any) -> FleetSettings:
    config_file = kw.pop("config_file", None)
    overrides = {
        "brokers": tuple(kw.pop("brokers", ())) or None, "topic_root": kw.pop("topic_root", None),
        "group": kw.pop("group", None), "mqtt_username": kw.pop("username", None),
        "mqtt_password_file": kw.pop("password_file", None), "mqtt_ca_file": kw.pop("ca_file", None),
        "mqtt_cert_file": kw.pop("cert_file", None), "mqtt_key_file": kw.pop("key_file", None),
        "mqtt_protocol": kw.pop("mqtt_protocol", None), "interval": kw.pop("interval", None), **extra,
    }
    return load_fleet_settings(config_file, overrides=overrides)


# --- rendering -------------------------------------------------------------------------------
def _plain(con: Console) -> bool:
    return not con.is_terminal


def _table(con: Console, title: str | None = None) -> Table:
    if _plain(con):
        return Table(title=None, box=None, show_edge=False, pad_edge=False, header_style="", title_style="")
    return Table(title=title, box=box.SIMPLE_HEAVY, header_style="bold", title_justify="left")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _short(digest: str | None) -> str:
    if not digest:
        return "-"
    return digest.split(":", 1)[-1][:12]


def _models(g: GroupStats) -> str:
    parts = [f"{_short(d) if d != 'none' else 'none'}×{n}" for d, n in list(g.digests.items())[:3]]
    if len(g.digests) > 3:
        parts.append(f"+{len(g.digests) - 3}")
    return " ".join(parts) or "-"


def _latency(g: GroupStats) -> str:
    """The group's percentiles over every latency of the devices' latest windows; ``~`` marks
    figures approximated from the devices' own percentiles (some agents send no histogram)."""
    if g.p95_ms is None:
        return "-"
    figures = f"{_ms(g.p50_ms)}/{_ms(g.p95_ms)}/{_ms(g.p99_ms)}"
    return figures if g.latency_exact else f"~{figures}"


def group_table(con: Console, groups: list[GroupStats], rates: Rates | None = None) -> Table:
    t = _table(con, "Groups")
    for name in ("GROUP", "DEVICES", "ONLINE", "OFFLINE", "REPORTING", "SILENT", "HEALTHY", "ERRORS",
                 "LATENCY p50/p95/p99 ms", "INF/S", "MODELS"):
        t.add_column(name, justify="left" if name in ("GROUP", "MODELS") else "right", no_wrap=True)
    for g in groups:
        share = "-" if g.healthy_share is None else f"{g.healthy} ({g.healthy_share * 100:.0f}%)"
        inf_rate = rates.inferences.get(g.group, g.inference_rate) if rates else g.inference_rate
        bad = g.offline or g.silent or g.healthy < g.devices or g.unverified
        models = _models(g) + (f" ({g.unverified} unverified)" if g.unverified else "")
        t.add_row(escape(g.group), str(g.devices), str(g.online), str(g.offline), str(g.reporting), str(g.silent),
                  share, _pct(g.error_rate), _latency(g), f"{inf_rate:.1f}",
                  models, style="yellow" if bad and not _plain(con) else None)
    return t


def _sort_key(sort: str) -> Callable[[DeviceRow], Any]:
    if sort == "status":
        return lambda r: (_STATUS_ORDER.get(r.status, 1), r.reporting, r.healthy, r.group, r.device)
    if sort == "error-rate":
        return lambda r: (-(r.error_rate or 0.0), r.group, r.device)
    if sort == "p95":
        return lambda r: (-(r.p95_ms or 0.0), r.group, r.device)
    if sort == "age":
        return lambda r: (-(r.age_s if r.age_s is not None else float("inf")), r.group, r.device)
    return lambda r: (r.group, r.device)


def device_table(con: Console, rows: list[DeviceRow], sort: str = "name", limit: int | None = None) -> Table:
    t = _table(con, "Devices")
    for name in ("DEVICE", "GROUP", "STATUS", "MODEL", "DIGEST", "AGE", "INF", "ERRORS", "P50", "P95", "P99",
                 "PROBE", "CPU%", "RSS MB", "GAPS", "LAST EVENT"):
        t.add_column(name, justify="right" if name in ("AGE", "INF", "ERRORS", "P50", "P95", "P99", "CPU%",
                                                        "RSS MB", "GAPS") else "left", no_wrap=True)
    ordered = sorted(rows, key=_sort_key(sort))
    for r in ordered[:limit] if limit else ordered:
        state = r.status if r.reporting or r.status == "offline" else f"{r.status},silent"
        if r.reporting and not r.healthy:
            state += ",unhealthy"
        if r.signature == "unverified":  # runs unsigned images (allow_unsigned)
            state += ",unverified"
        style = None
        if not _plain(con):
            style = "dim" if r.status == "offline" else "yellow" if not r.reporting else None if r.healthy else "red"
        model = f"{r.model}@{r.version}" if r.model else "-"
        probe = "-" if r.probe_ok is None else "ok" if r.probe_ok else "FAILED"
        t.add_row(escape(r.device), escape(r.group), state, escape(model), _short(r.digest),
                  "-" if r.age_s is None else f"{r.age_s:.0f}s", "-" if r.inferences is None else str(r.inferences),
                  _pct(r.error_rate), _ms(r.p50_ms), _ms(r.p95_ms), _ms(r.p99_ms), probe,
                  "-" if r.cpu_pct is None else f"{r.cpu_pct:.0f}", "-" if r.rss_mb is None else f"{r.rss_mb:.0f}",
                  str(r.gaps_open), escape(r.last_event or "-"), style=style)
    return t


def summary_line(snap: FleetSnapshot, rates: Rates | None = None) -> Text:
    c = snap.counters
    devices = sum(g.devices for g in snap.groups)
    parts = [f"{devices} devices in {len(snap.groups)} group(s)"]
    rejected = {k: v for k, v in c.rejected.items() if v}
    if rejected:
        parts.append("rejected " + ", ".join(f"{k} {v}" for k, v in rejected.items()))
    if c.seq_gaps:
        parts.append(f"seq gaps {c.seq_gaps}")
    if c.hist_rejected:
        parts.append(f"latency histograms ignored {c.hist_rejected}")
    approx = sum(g.no_hist for g in snap.groups)
    if approx:
        parts.append(f"~ latency approximate: {approx} device(s) without a usable latency histogram")
    lag = (snap.watcher.get("lag_s") or {}).get("p99")
    if lag is not None:
        parts.append(f"lag p99 {lag * 1000:.0f} ms")
    if rates is not None:
        parts.append(f"{rates.received:.0f} msg/s, {sum(rates.reports.values()):.0f} reports/s")
        if rates.rejected:
            parts.append(f"{rates.rejected:.0f} rejects/s")
    if snap.watcher and not snap.watcher.get("connected", True):
        parts.append(f"DISCONNECTED ({snap.watcher.get('last_error') or 'reconnecting'})")
    if not snap.complete and snap.completeness is not None:
        parts.append(f"INCOMPLETE: {snap.completeness.reason}")
    return Text("; ".join(parts))


def incomplete_warning(snap: FleetSnapshot) -> str | None:
    """The line that says the picture may lack devices (None when it is complete)."""
    if snap.complete or snap.completeness is None:
        return None
    return f"warning: the fleet picture is INCOMPLETE, devices may be missing: {snap.completeness.reason}"


def _render(con: Console, snap: FleetSnapshot, rates: Rates | None, *, devices: bool, sort: str,
            limit: int | None = None) -> Group:
    parts: list[Any] = [group_table(con, snap.groups, rates)]
    if devices and snap.devices is not None:
        parts.append(device_table(con, snap.devices, sort, limit))
    parts.append(summary_line(snap, rates))
    return Group(*parts)


# --- commands --------------------------------------------------------------------------------
@click.group("fleet")
def fleet() -> None:
    """The fleet as its agents report it over MQTT: status, live view, Prometheus exporter.

    \b
    Examples:
      edgekit fleet status --broker mqtt://broker:1883
      edgekit fleet status --group cameras --devices --sort status
      edgekit fleet watch --group cameras
      edgekit fleet export --listen 127.0.0.1:9108 --per-device
    """


@fleet.command("status")
@broker_options
@click.option("--devices", "with_devices", is_flag=True, help="Also list every device.")
@click.option("--sort", type=click.Choice(SORTS), default="name", show_default=True,
              help="Order of the device list (status: offline, silent and unhealthy first).")
@click.option("--wait", type=float, default=None,
              help="Seconds to wait for health reports after the retained status [default: one interval; "
                   "stops early once every device that is not offline has reported and the broker's drop "
                   "counter confirms the picture complete].")
@output_option
def status_cmd(with_devices: bool, sort: str, wait: float | None, output: str, **kw: Any) -> None:
    """A snapshot of the fleet: every device's retained status plus one interval of health reports,
    per group (and per device with --devices). Unhealthy and silent devices are highlighted.
    A group's latency is p50/p95/p99 over every inference of its devices' latest windows (from
    their merged histograms, 1% relative error); "~" marks an approximation where some agents
    send no histogram.
    When the picture may lack devices (the broker dropped part of the retained status, as stock
    mosquitto's queue limits can), it says so, in JSON as "complete": false, and exits 58.

    \b
    Examples:
      edgekit fleet status
      edgekit fleet status --broker mqtts://broker:8883 --ca-file ca.pem --username fleet \\
          --password-file fleet.pw --group cameras --devices --sort status
      edgekit fleet status --output json | jq '.groups[].healthy_share'
    """
    if wait is not None and wait < 0:
        raise ConfigError("must be >= 0", field="wait")
    settings = _settings(kw)
    snap = take_snapshot(settings, wait=wait, with_devices=with_devices)
    if output == "json":
        emit_json(snap.to_dict())
    else:
        con = console()
        con.print(_render(con, snap, None, devices=with_devices, sort=sort))
        warning = incomplete_warning(snap)
        if warning is not None:
            con.print(Text(warning, style="" if _plain(con) else "bold yellow"))
    if not snap.complete and snap.completeness is not None:
        # Shown above, and an exit status of its own, so that scripts do not act on a partial fleet.
        raise IncompleteTelemetryError(f"the fleet picture is incomplete: {snap.completeness.reason}",
                                       hint="raise the broker's max_queued_bytes / max_queued_messages "
                                            "(fleet-manifests/base/mosquitto/telemetry.conf)")


@fleet.command("watch")
@broker_options
@click.option("--devices", "with_devices", is_flag=True, help="Also list devices (the --top first by --sort).")
@click.option("--sort", type=click.Choice(SORTS), default="status", show_default=True, help="Device order.")
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="Devices to show.")
@click.option("--refresh", type=click.FloatRange(0.1), default=1.0, show_default=True,
              help="Seconds between updates.")
@click.option("--duration", type=click.FloatRange(0), default=None, help="Stop after this many seconds.")
@output_option
def watch_cmd(with_devices: bool, sort: str, top: int, refresh: float, duration: float | None, output: str,
              **kw: Any) -> None:
    """A live view of the fleet, updated every --refresh seconds, with message, report and
    inference rates. On a terminal it redraws in place; piped, it prints one frame per update
    (one JSON object per line with --output json).

    \b
    Examples:
      edgekit fleet watch
      edgekit fleet watch --group cameras --devices --sort error-rate --top 30
      edgekit fleet watch --output json --duration 60 > frames.jsonl
    """
    settings = _settings(kw)
    con = console()
    end = None if duration is None else time.monotonic() + duration
    frames = iter_snapshots(settings, refresh=refresh, with_devices=with_devices)
    live: Live | None = None
    if output == "table" and con.is_terminal:
        live = Live(console=con, auto_refresh=False, transient=False)
        live.start()
    try:
        for snap, rates in frames:
            if output == "json":
                data = snap.to_dict()
                if rates is not None:
                    data["rates"] = {"received": rates.received, "applied": rates.applied,
                                     "rejected": rates.rejected, "reports": rates.reports,
                                     "inferences": rates.inferences, "errors": rates.errors}
                click.echo(json.dumps(data, default=str))
            elif live is not None:
                live.update(_render(con, snap, rates, devices=with_devices, sort=sort, limit=top), refresh=True)
            else:
                con.print(_render(con, snap, rates, devices=with_devices, sort=sort, limit=top))
                con.print()
            sys.stdout.flush()
            if end is not None and time.monotonic() >= end:
                break
    finally:
        if live is not None:
            live.stop()
        frames.close()


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT, got {value!r}", field="listen")
    return host.strip("[]"), int(port)


@fleet.command("export")
@broker_options
@click.option("--listen", default="127.0.0.1:9108", show_default=True, metavar="HOST:PORT",
              help="Where to serve /metrics.")
@click.option("--per-device", is_flag=True, help="Also export per-device series (bounded by --max-device-series).")
@click.option("--max-device-series", type=click.IntRange(1), default=10_000, show_default=True,
              help="At most this many devices get per-device series.")
@click.option("--shared-group", default=None, metavar="NAME",
              help="Split health/events with other exporters through the MQTT shared subscription $share/NAME/...")
@click.option("--client-id", default=None, help="Fixed MQTT client id (needed with --session-expiry).")
@click.option("--session-expiry", type=click.IntRange(0), default=None,
              help="Keep a persistent MQTT session this many seconds, so the broker queues while we restart.")
def export_cmd(listen: str, per_device: bool, max_device_series: int, shared_group: str | None,
               client_id: str | None, session_expiry: int | None, **kw: Any) -> None:
    """Serve fleet telemetry to Prometheus on /metrics: per-group gauges and counters, the
    exporter's own lag, rejects and seq gaps, and optionally per-device series. With
    --shared-group several exporters split the load and each exports its share.

    \b
    Examples:
      edgekit fleet export --listen 127.0.0.1:9108
      edgekit fleet export --listen 0.0.0.0:9108 --per-device --max-device-series 5000
      edgekit fleet export --listen 127.0.0.1:9109 --shared-group exporters \\
          --client-id exporter-b --session-expiry 600
    """
    from edgekit.fleet.exporting import run_exporter

    host, port = _listen(listen)
    settings = _settings(kw, shared_group=shared_group, client_id=client_id, session_expiry=session_expiry)

    def ready(exporter: Any) -> None:
        click.echo(f"edgekit: serving {exporter.url} (broker {exporter.watcher.info()['broker']})", err=True)

    run_exporter(settings, host, port, per_device=per_device, max_device_series=max_device_series, ready=ready)


COMMANDS: list[click.Command] = [fleet]
