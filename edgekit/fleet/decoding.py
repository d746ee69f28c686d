"""Decode telemetry messages (topic + payload bytes) into typed reports, or say why not.

The decoder is the fleet tracker's first line of defence and its hottest code: it runs once per
message, so the common case (a well-formed payload) goes through one straight path of exact type
checks, and only a payload that fails it pays for a second, slower pass that names the reason.

It is tolerant where the contract allows growth (unknown extra fields and unknown event kinds are
accepted, so an agent one minor version ahead still reports) and strict where state could be
corrupted: exact JSON types (``true`` is not a number), ranges, digest format, the topic's device
and group must match the payload's, and ``v`` must be a version we understand. Nothing it is given
can raise: every failure becomes a ``Reject`` with one of ``REJECT_REASONS``.
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

import orjson
from edgekit_agent.protocol import DEFAULT_ROOT, SCHEMA_VERSION
from edgekit_agent.protocol.histograms import (
    MAX_BUCKETS,
    MAX_INDEX,
    MIN_INDEX,
    REL_ERR,
    HistogramError,
    LatencyHistogram,
)

from edgekit.fleet.reports import EventReport, HealthReport, Model, Reject, Report, StatusReport

__all__ = ["DEFAULT_MAX_PAYLOAD", "Cleared", "Decoder", "TopicRef", "split_topic"]

DEFAULT_MAX_PAYLOAD: Final = 64 * 1024
MAX_ID_LEN: Final = 253
MAX_SESSION_LEN: Final = 64
MAX_DETAIL_LEN: Final = 4096
MAX_MODEL_FIELD_LEN: Final = 256
SIGNATURES: Final = ("verified", "unverified")  # the status field "signature"
MAX_DIGESTS: Final = 10_000

_NUM: Final = (int, float)
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_KINDS: Final = frozenset(("status", "health", "event"))
_MAX_COUNT: Final = 2**53  # as LatencyHistogram.from_wire
_INT: Final = {int}


class TopicRef(NamedTuple):
    group: str
    device: str
    kind: str


class Cleared(NamedTuple):
    """An empty retained payload on a status topic: someone deleted the device's retained status."""

    group: str
    device: str


def split_topic(topic: str, prefix: str) -> TopicRef | None:
    """``{root}/{group}/{device}/{kind}`` -> parts, or ``None``; ``prefix`` is ``root + '/'``."""
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix):].split("/")
    if len(parts) != 3:
        return None
    group, device, kind = parts
    if not group or not device or kind not in _KINDS or "+" in topic or "#" in topic:
        return None
    return TopicRef(group, device, kind)


def _num(x: Any) -> bool:
    return type(x) is float or type(x) is int


class _Invalid(Exception):
    """Raised inside the slow pass; carries the reason and a short detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Decoder:
    """Decode messages under one topic root. Keeps an intern table of models (bounded)."""

    def __init__(self, root: str = DEFAULT_ROOT, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 max_models: int = MAX_DIGESTS) -> None:
        self.root = root.rstrip("/")
        self.prefix = self.root + "/"
        self.max_payload = max_payload
        self.max_models = max_models
        self._models: dict[tuple[str, str, str], Model] = {}

    # -- public -----------------------------------------------------------------------------
    def decode(self, topic: str, payload: bytes | bytearray) -> Report | Reject | Cleared:
        ref = split_topic(topic, self.prefix)
        if ref is None:
            return Reject("unknown_topic", f"not a device topic under {self.root}: {topic[:200]!r}")
        return self.decode_ref(ref, payload)

    def decode_ref(self, ref: TopicRef, payload: bytes | bytearray) -> Report | Reject | Cleared:
        """Decode a payload whose topic is already split (see ``split_topic``)."""
        if len(payload) > self.max_payload:
            return Reject("oversize", f"{len(payload)} bytes > {self.max_payload}", ref.device)
        if not payload:
            if ref.kind == "status":
                return Cleared(ref.group, ref.device)
            return Reject("malformed_json", "empty payload", ref.device)
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return Reject("malformed_json", str(exc)[:200], ref.device)
        if type(data) is not dict:
            return Reject("malformed_json", f"payload is a JSON {type(data).__name__}, not an object",
                          ref.device)
        report = self._fast(ref, data)
        if report is None:
            try:
                report = self._slow(ref, data)
            except _Invalid as exc:
                return Reject(exc.reason, exc.detail, ref.device)
        if isinstance(report, HealthReport) and "shadow" in data:
            report.shadow = _shadow_field(data["shadow"])
        return report

    def model(self, name: str, version: str, digest: str) -> Model | None:
        """The interned model, or ``None`` when the table is full (hostile digest churn)."""
        key = (name, version, digest)
        found = self._models.get(key)
        if found is None:
            if len(self._models) >= self.max_models:
                return None
            found = self._models[key] = Model(name, version, digest)
        return found

    # -- the straight path: exact types, no diagnostics ---------------------------------------
    def _fast(self, ref: TopicRef, d: Any) -> Report | None:
        if d.get("v") != SCHEMA_VERSION or type(d.get("v")) is not int:
            return None
        device = d.get("device")
        group = d.get("group")
        session = d.get("session")
        seq = d.get("seq")
        ts = d.get("ts")
        if (device != ref.device or group != ref.group or type(session) is not str
                or type(seq) is not int or not (type(ts) is float or type(ts) is int)):
            return None
        if not 0 < len(session) <= MAX_SESSION_LEN or seq < 0 or ts < 0 or device[0] == "$" \
                or group[0] == "$" or len(device) > MAX_ID_LEN or len(group) > MAX_ID_LEN:
            return None
        m = d.get("model", 0)
        model: Model | None = None
        if m is not None:
            if type(m) is not dict:
                return None
            name = m.get("name")
            version = m.get("version")
            digest = m.get("digest")
            if type(name) is not str or type(version) is not str or type(digest) is not str:
                return None
            model = self._models.get((name, version, digest))
            if model is None:
                # First sighting: validate fully on the slow path (it interns the model).
                return None
        kind = ref.kind
        if kind == "health":
            lat: Any = d.get("latency_ms")
            probe: Any = d.get("probe")
            window_s = d.get("window_s")
            inferences = d.get("inferences")
            errors = d.get("errors")
            rss = d.get("rss_mb")
            cpu = d.get("cpu_pct")
            replayed = d.get("replayed")
            if (type(lat) is not dict or type(probe) is not dict or type(inferences) is not int
                    or type(errors) is not int or type(replayed) is not bool
                    or not _num(window_s) or not _num(rss) or not _num(cpu)):
                return None
            p50: Any = lat.get("p50")
            p95: Any = lat.get("p95")
            p99: Any = lat.get("p99")
            mx: Any = lat.get("max")
            ok: Any = probe.get("ok", 0)
            pts: Any = probe.get("ts", 0)
            if not (_num(p50) and _num(p95) and _num(p99) and _num(mx)):
                return None
            if not (ok is None or type(ok) is bool) or not (pts is None or _num(pts)):
                return None
            if (window_s <= 0 or inferences < 0 or errors < 0 or rss < 0 or cpu < 0
                    or p50 < 0 or p95 < 0 or p99 < 0 or mx < 0):
                return None
            hist, hist_error = _latency_hist(d, inferences)
            return HealthReport(group, device, session, seq, float(ts), model, float(window_s), inferences,
                                errors, float(p50), float(p95), float(p99), float(mx), ok,
                                None if pts is None else float(pts), float(rss), float(cpu), replayed,
                                hist, hist_error)
        if kind == "status":
            state = d.get("state")
            agent_version = d.get("agent_version")
            ready = d.get("ready")
            signature = d.get("signature")
            if (state != "online" and state != "offline") or type(agent_version) is not str \
                    or not (ready is None or type(ready) is bool) or len(agent_version) > MAX_MODEL_FIELD_LEN \
                    or not (signature is None or signature in SIGNATURES):
                return None
            return StatusReport(group, device, session, seq, float(ts), model, state == "online",
                                agent_version, ready, signature)
        event = d.get("kind")
        detail = d.get("detail")
        replayed = d.get("replayed")
        if type(event) is not str or type(detail) is not str or type(replayed) is not bool \
                or not 0 < len(event) <= 64 or len(detail) > MAX_DETAIL_LEN:
            return None
        return EventReport(group, device, session, seq, float(ts), model, event, detail, replayed)

    # -- the diagnosing path ------------------------------------------------------------------
    def _slow(self, ref: TopicRef, d: dict[str, Any]) -> Report:
        if "v" not in d:
            raise _Invalid("missing_field", "v")
        v = d["v"]
        if type(v) is not int:
            raise _Invalid("wrong_type", f"v: expected integer, got {_jtype(v)}")
        if v != SCHEMA_VERSION:
            raise _Invalid("unknown_version", f"v={v} (this reader understands {SCHEMA_VERSION})")
        device = _field(d, "device", str)
        group = _field(d, "group", str)
        if device != ref.device or group != ref.group:
            raise _Invalid("device_mismatch", f"payload says {group[:64]}/{device[:64]}, "
                                              f"topic says {ref.group}/{ref.device}")
        for name, value in (("device", device), ("group", group)):
            if not value or len(value) > MAX_ID_LEN or value[0] == "$":
                raise _Invalid("invalid_value", f"{name}: not a valid id")
        session = _field(d, "session", str)
        if not 0 < len(session) <= MAX_SESSION_LEN:
            raise _Invalid("invalid_value", f"session: length {len(session)} not in 1..{MAX_SESSION_LEN}")
        seq = _nonneg(d, "seq", int)
        ts = float(_nonneg(d, "ts", float))
        if "model" not in d:
            raise _Invalid("missing_field", "model")
        model = self._model_field(d["model"])
        if ref.kind == "health":
            window_s = _nonneg(d, "window_s", float)
            if window_s == 0:
                raise _Invalid("invalid_value", "window_s: must be > 0")
            inferences = _nonneg(d, "inferences", int)
            errors = _nonneg(d, "errors", int)
            lat = _field(d, "latency_ms", dict)
            p50, p95, p99, mx = (float(_nonneg(lat, k, float, "latency_ms.")) for k in ("p50", "p95", "p99", "max"))
            probe = _field(d, "probe", dict)
            ok = _field(probe, "ok", (bool, type(None)), "probe.")
            pts = _field(probe, "ts", (int, float, type(None)), "probe.")
            rss = _nonneg(d, "rss_mb", float)
            cpu = _nonneg(d, "cpu_pct", float)
            replayed = _field(d, "replayed", bool)
            hist, hist_error = _latency_hist(d, inferences)
            return HealthReport(group, device, session, seq, ts, model, float(window_s), inferences, errors,
                                p50, p95, p99, mx, ok, None if pts is None else float(pts), float(rss),
                                float(cpu), replayed, hist, hist_error)
        if ref.kind == "status":
            state = _field(d, "state", str)
            if state not in ("online", "offline"):
                raise _Invalid("invalid_value", f"state: {state[:32]!r} is not online/offline")
            agent_version = _field(d, "agent_version", str)
            if len(agent_version) > MAX_MODEL_FIELD_LEN:
                raise _Invalid("invalid_value", "agent_version: too long")
            ready = d.get("ready")
            if not (ready is None or type(ready) is bool):
                raise _Invalid("wrong_type", f"ready: expected boolean, got {_jtype(ready)}")
            signature = d.get("signature")
            if not (signature is None or signature in SIGNATURES):
                raise _Invalid("invalid_value", f"signature: {str(signature)[:32]!r} is not verified/unverified")
            return StatusReport(group, device, session, seq, ts, model, state == "online", agent_version, ready,
                                signature)
        event = _field(d, "kind", str)
        if not 0 < len(event) <= 64:
            raise _Invalid("invalid_value", "kind: length not in 1..64")
        detail = _field(d, "detail", str)
        if len(detail) > MAX_DETAIL_LEN:
            raise _Invalid("invalid_value", f"detail: longer than {MAX_DETAIL_LEN}")
        replayed = _field(d, "replayed", bool)
        return EventReport(group, device, session, seq, ts, model, event, detail, replayed)

    def _model_field(self, m: Any) -> Model | None:
        if m is None:
            return None
        if type(m) is not dict:
            raise _Invalid("wrong_type", f"model: expected object or null, got {_jtype(m)}")
        name = _field(m, "name", str, "model.")
        version = _field(m, "version", str, "model.")
        digest = _field(m, "digest", str, "model.")
        if len(name) > MAX_MODEL_FIELD_LEN or len(version) > MAX_MODEL_FIELD_LEN:
            raise _Invalid("invalid_value", "model: name or version too long")
        if not _DIGEST_RE.fullmatch(digest):
            raise _Invalid("invalid_value", f"model.digest: {digest[:80]!r} is not sha256:<64 hex>")
        model = self.model(name, version, digest)
        if model is None:
            raise _Invalid("capacity", f"more than {self.max_models} distinct models seen")
        return model


def _latency_hist(d: dict[str, Any], inferences: int) -> tuple[LatencyHistogram | None, str | None]:
    """The optional histogram, bound-checked; a bad one is dropped with a reason, and the rest of
    the report still counts (its error rate matters more than its latency shape)."""
    raw = d.get("latency_hist")
    if raw is None:
        return None, None
    hist = _plain_hist(raw)
    if hist is None:  # not the common shape: the full check names what is wrong
        try:
            hist = LatencyHistogram.from_wire(raw)
        except HistogramError as exc:
            return None, str(exc)[:200]
    if hist.count > inferences:
        # the agent puts each successful inference in it once: more would outweigh honest devices
        return None, f"latency_hist holds {hist.count} latencies for {inferences} inferences"
    return hist, None


def _plain_hist(raw: Any) -> LatencyHistogram | None:
    """The checks of ``LatencyHistogram.from_wire`` with builtins doing the per-count work (this
    runs for every health report); None when any fails or the histogram is empty."""
    if type(raw) is not dict or raw.get("rel_err") != REL_ERR:
        return None
    offset, counts = raw.get("offset"), raw.get("counts")
    if type(offset) is not int or type(counts) is not list or not counts or len(counts) > MAX_BUCKETS:
        return None
    if offset < MIN_INDEX or offset + len(counts) - 1 > MAX_INDEX:
        return None
    if set(map(type, counts)) != _INT or min(counts) < 0 or max(counts) >= _MAX_COUNT or not any(counts):
        return None
    return LatencyHistogram(offset, tuple(counts))


def _jtype(x: Any) -> str:
    if x is None:
        return "null"
    if type(x) is bool:
        return "boolean"
    if type(x) is int:
        return "integer"
    if type(x) is float:
        return "number"
    if type(x) is str:
        return "string"
    if type(x) is list:
        return "array"
    return "object"


def _field(d: dict[str, Any], key: str, types: type | tuple[type, ...], where: str = "") -> Any:
    if key not in d:
        raise _Invalid("missing_field", f"{where}{key}")
    value = d[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if float in allowed and int not in allowed:
        allowed = (*allowed, int)
    if type(value) not in allowed:
        want = "/".join(_NAMES.get(t, t.__name__) for t in allowed)
        raise _Invalid("wrong_type", f"{where}{key}: expected {want}, got {_jtype(value)}")
    return value


def _nonneg(d: dict[str, Any], key: str, tp: type, where: str = "") -> Any:
    value = _field(d, key, tp, where)
    if value < 0:
        raise _Invalid("invalid_value", f"{where}{key}: must be >= 0, got {value}")
    return value


_NAMES: Final = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object",
                 type(None): "null"}


def _shadow_field(d: Any) -> dict[str, Any] | None:
    """The health report's optional ``shadow`` object, kept when its core fields are well typed
    (a malformed one is dropped: the rest of the report still counts)."""
    if type(d) is not dict or type(d.get("digest")) is not str or type(d.get("metric")) is not str:
        return None
    agreement = d.get("agreement")
    if type(agreement) is not dict:
        return None
    for key in ("samples", "errors"):
        if type(d.get(key)) is not int or d[key] < 0:
            return None
    return d
