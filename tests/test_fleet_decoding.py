"""The telemetry decoder: real agent payloads decode; every kind of bad input is refused with its reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from edgekit_agent.protocol import event_payload, health_payload, status_payload

from edgekit.fleet.decoding import Cleared, Decoder, split_topic
from edgekit.fleet.reports import EventReport, HealthReport, Reject, StatusReport

DIGEST = "sha256:" + "ab" * 32
MODEL = {"name": "digits", "version": "1.0.0", "digest": DIGEST}
TOPIC = "edgekit/v1/g1/dev-1/health"


def health(**overrides: Any) -> dict[str, Any]:
    p: dict[str, Any] = dict(health_payload(
        device="dev-1", group="g1", session="s-1", seq=3, ts=1_700_000_000.5, model=MODEL,  # type: ignore[arg-type]
        window_s=10.0, inferences=100, errors=2, latency_ms={"p50": 1.5, "p95": 3.0, "p99": 4.0, "max": 9.0},
        probe={"ok": True, "ts": 1_700_000_000.0}, rss_mb=80.0, cpu_pct=12.5))
    p.update(overrides)
    return p


def enc(p: Any) -> bytes:
    return orjson.dumps(p)


def reason(result: object) -> str:
    assert isinstance(result, Reject), result
    return result.reason


def test_real_payloads_decode() -> None:
    d = Decoder()
    h = d.decode(TOPIC, enc(health()))
    assert isinstance(h, HealthReport)
    assert (h.device, h.group, h.session, h.seq, h.inferences, h.errors) == ("dev-1", "g1", "s-1", 3, 100, 2)
    assert (h.p50_ms, h.p95_ms, h.p99_ms, h.max_ms, h.probe_ok) == (1.5, 3.0, 4.0, 9.0, True)
    assert h.model is not None and h.model.digest == DIGEST
    s = d.decode("edgekit/v1/g1/dev-1/status", enc(status_payload(
        device="dev-1", group="g1", session="s-1", seq=0, ts=1.0, model=None, state="offline",
        agent_version="0.1.0")))
    assert isinstance(s, StatusReport) and not s.online and s.model is None and s.ready is None
    e = d.decode("edgekit/v1/g1/dev-1/event", enc(event_payload(
        device="dev-1", group="g1", session="s-1", seq=4, ts=2.0, model=MODEL,  # type: ignore[arg-type]
        kind="probe_failed", detail="out of tolerance", data={"max_abs": 0.5})))
    assert isinstance(e, EventReport) and e.event == "probe_failed"


def test_status_signature_decodes_and_nothing_else_does() -> None:
    topic = "edgekit/v1/g1/dev-1/status"
    for signature in ("verified", "unverified", None):
        s = Decoder().decode(topic, enc(status_payload(
            device="dev-1", group="g1", session="s-1", seq=0, ts=1.0, model=None, state="online",
            agent_version="0.1.0", ready=True, signature=signature)))  # type: ignore[arg-type]
        assert isinstance(s, StatusReport) and s.signature == signature
    for bad in ("maybe", True, ["verified"]):
        payload = dict(status_payload(device="dev-1", group="g1", session="s-1", seq=0, ts=1.0, model=None,
                                      state="online", agent_version="0.1.0"), signature=bad)
        assert reason(Decoder().decode(topic, enc(payload))) == "invalid_value"


def test_models_are_interned() -> None:
    d = Decoder()
    a = d.decode(TOPIC, enc(health()))
    b = d.decode(TOPIC, enc(health(seq=4)))
    assert isinstance(a, HealthReport) and isinstance(b, HealthReport)
    assert a.model is b.model


@pytest.mark.parametrize(("payload", "expected"), [
    (b"{not json", "malformed_json"),
    (b"[1, 2]", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b"", "malformed_json"),
    (enc(health(seq="3")), "wrong_type"),
    (enc(health(seq=True)), "wrong_type"),
    (enc(health(ts="now")), "wrong_type"),
    (enc(health(inferences=1.5)), "wrong_type"),
    (enc(health(latency_ms=[1, 2])), "wrong_type"),
    (enc(health(probe={"ok": "yes", "ts": None})), "wrong_type"),
    (enc(health(model="digits")), "wrong_type"),
    (enc(health(v=True)), "wrong_type"),
    (enc({k: v for k, v in health().items() if k != "errors"}), "missing_field"),
    (enc(health(latency_ms={"p50": 1, "p95": 2, "p99": 3})), "missing_field"),
    (enc({k: v for k, v in health().items() if k != "v"}), "missing_field"),
    (enc(health(v=2)), "unknown_version"),
    (enc(health(v=0)), "unknown_version"),
    (enc(health(seq=-1)), "invalid_value"),
    (enc(health(window_s=0)), "invalid_value"),
    (enc(health(model={**MODEL, "digest": "sha256:xyz"})), "invalid_value"),
    (enc(health(session="")), "invalid_value"),
    (enc(health(device="dev-2")), "device_mismatch"),
    (enc(health(group="other")), "device_mismatch"),
])
def test_bad_payloads_are_refused_with_their_reason(payload: bytes, expected: str) -> None:
    assert reason(Decoder().decode(TOPIC, payload)) == expected


def test_oversize_is_refused_before_decoding() -> None:
    d = Decoder(max_payload=1024)
    big = enc(health(padding="x" * 2000))
    assert reason(d.decode(TOPIC, big)) == "oversize"


def test_topics() -> None:
    d = Decoder()
    assert reason(d.decode("edgekit/v1/g1/dev-1", enc(health()))) == "unknown_topic"
    assert reason(d.decode("edgekit/v1/g1/dev-1/metrics", enc(health()))) == "unknown_topic"
    assert reason(d.decode("other/v1/g1/dev-1/health", enc(health()))) == "unknown_topic"
    assert split_topic("edgekit/v1/g/d/status", "edgekit/v1/") == ("g", "d", "status")
    assert split_topic("edgekit/v1//d/status", "edgekit/v1/") is None
    assert d.decode("edgekit/v1/g1/dev-1/status", b"") == Cleared("g1", "dev-1")


def test_tolerant_of_growth() -> None:
    """Extra fields and unknown event kinds (a newer agent of the same schema version) decode."""
    d = Decoder()
    assert isinstance(d.decode(TOPIC, enc(health(gpu_pct=3.0))), HealthReport)
    e = event_payload(device="dev-1", group="g1", session="s", seq=1, ts=1.0, model=None,
                      kind="model_loaded", detail="")
    e["kind"] = "thermal_throttle"  # type: ignore[typeddict-item]
    assert isinstance(d.decode("edgekit/v1/g1/dev-1/event", enc(e)), EventReport)


def test_model_table_is_bounded() -> None:
    d = Decoder(max_models=2)
    for i in range(2):
        assert isinstance(d.decode(TOPIC, enc(health(model={**MODEL, "version": str(i)}))), HealthReport)
    assert reason(d.decode(TOPIC, enc(health(model={**MODEL, "version": "x"})))) == "capacity"
