"""Prometheus text exposition (format 0.0.4) of the agent's state, written by hand: the device
needs no client library for a dozen series."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from edgekit_agent import __version__

if TYPE_CHECKING:
    from edgekit_agent.core import AgentCore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float]] | float) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        if not isinstance(samples, list):
            samples = [({}, samples)]
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(core: AgentCore) -> str:
    s = core.settings
    w = _Writer()
    w.metric("edgekit_agent_info", "gauge", "Agent identity.",
             [({"version": __version__, "device": s.device, "group": s.group, "session": core.session}, 1)])
    w.metric("edgekit_agent_ready", "gauge", "1 when a model is loaded and its golden probe passes.",
             1 if core.ready else 0)
    if core.model is not None:
        m = core.model
        w.metric("edgekit_agent_model_info", "gauge", "The model being served.",
                 [({"name": m.name, "version": m.meta.version, "digest": m.digest, "precision": m.meta.precision,
                    "providers": ",".join(m.session.providers)}, 1)])
    st = core.stats
    buckets = st.cumulative_buckets()
    w.metric("edgekit_agent_inferences_total", "counter", "Inferences run (including failed ones).",
             st.total + st.total_errors)
    w.metric("edgekit_agent_inference_errors_total", "counter", "Inferences that onnxruntime failed.",
             st.total_errors)
    name = "edgekit_agent_inference_latency_seconds"
    w.lines.append(f"# HELP {name} Latency of successful inferences (session.run).")
    w.lines.append(f"# TYPE {name} histogram")
    for le, count in buckets:
        w.lines.append(f'{name}_bucket{{le="{_num(le) if math.isinf(le) else repr(le)}"}} {count}')
    w.lines.append(f"{name}_sum {_num(st.sum_seconds)}")
    w.lines.append(f"{name}_count {st.total}")
    w.metric("edgekit_agent_requests_rejected_total", "counter", "Inference requests refused as malformed.",
             core.requests_rejected)
    w.metric("edgekit_agent_connections_refused_total", "counter",
             "Connections refused because max_connections were open.", core.connections_refused)
    w.metric("edgekit_agent_connections_timed_out_total", "counter",
             "Connections closed because headers or a body did not arrive in time, by phase.",
             [({"phase": k}, v) for k, v in sorted(core.connections_timed_out.items())])
    w.metric("edgekit_agent_requests_busy_total", "counter",
             "Requests answered 503 because the bodies in flight already filled the memory budget.",
             core.requests_busy)
    w.metric("edgekit_agent_probe_ok", "gauge", "1 when the last golden probe passed, 0 when it failed.",
             float("nan") if core.probe_ok is None else (1 if core.probe_ok else 0))
    if core.probe_ts is not None:
        w.metric("edgekit_agent_probe_last_timestamp_seconds", "gauge", "When the golden probe last ran.",
                 core.probe_ts)
    w.metric("edgekit_agent_events_total", "counter", "Telemetry events emitted, by kind.",
             [({"kind": k}, v) for k, v in sorted(core.events_sent.items())] or [({"kind": "model_loaded"}, 0)])
    out = core.outbox
    if out is not None:
        from edgekit_agent.publishing import MqttPublisher

        w.metric("edgekit_agent_mqtt_connected", "gauge", "1 while connected to the broker.",
                 1 if out.connected else 0)
        if isinstance(out, MqttPublisher):
            c = out.counters
            w.metric("edgekit_agent_mqtt_connects_total", "counter", "Successful broker connections.", c.connects)
            w.metric("edgekit_agent_mqtt_connect_failures_total", "counter", "Failed connection attempts.",
                     c.connect_failures)
            w.metric("edgekit_agent_mqtt_auth_failures", "gauge", "Consecutive refused logins.", c.auth_failures)
            w.metric("edgekit_agent_mqtt_published_total", "counter", "Telemetry messages published.",
                     c.published)
            w.metric("edgekit_agent_mqtt_replayed_total", "counter", "Messages sent late from the spool.",
                     c.replayed)
            w.metric("edgekit_agent_mqtt_publish_denied_total", "counter", "Publishes the broker denied (ACL).",
                     c.denied)
        count, size = out.spool.stats()
        w.metric("edgekit_agent_spool_messages", "gauge", "Messages waiting in the spool.", count)
        w.metric("edgekit_agent_spool_bytes", "gauge", "Bytes waiting in the spool.", size)
        dropped = getattr(out.spool, "dropped_total", {})
        w.metric("edgekit_agent_spool_dropped_total", "counter", "Messages dropped at the spool bound.",
                 [({"reason": k}, v) for k, v in sorted(dropped.items())] or [({"reason": "size"}, 0)])
    w.metric("process_resident_memory_bytes", "gauge", "Resident memory of the agent process.",
             int(core.meter.rss_mb() * 1048576))
    return w.text()
