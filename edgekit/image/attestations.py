"""Quantization attestations: the in-toto statement, its DSSE envelope and what a verifier reads back.

This is what ``cosign attest --key KEY --type https://edgekit.io/attestations/quantization/v1
--predicate report.json IMAGE`` writes, so ``cosign verify-attestation`` accepts edgekit's and
edgekit reads cosign's:

- the statement: ``{"_type": "https://in-toto.io/Statement/v0.1", "predicateType": TYPE,
  "subject": [{"name": "registry/repo", "digest": {"sha256": HEX}}], "predicate": {...}}`` (Go's
  field order, compact; the predicate's keys sorted as Go marshals a map);
- the envelope: ``{"payloadType": "application/vnd.in-toto+json", "payload": base64(statement),
  "signatures": [{"keyid": "", "sig": base64(DER ECDSA-SHA256 over PAE)}]}``, where PAE is DSSE's
  ``"DSSEv1" SP len(type) SP type SP len(body) SP body``;
- stored as a layer (media type ``application/vnd.dsse.envelope.v1+json``, annotations
  ``predicateType`` and an empty ``dev.cosignproject.cosign/signature``) of the manifest tagged
  ``sha256-<hex>.att`` beside the image.

Pure functions only: the registry side is ``edgekit.image.attesting``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from edgekit_agent import safejson
from edgekit_agent.oci.mediatypes import check_digest

from edgekit.optimize.speedup import recorded_test

__all__ = [
    "DSSE_ENVELOPE",
    "INTOTO_PAYLOAD",
    "PREDICATE_ANNOTATION",
    "QUANTIZATION_PREDICATE",
    "STATEMENT_V01",
    "AttestedClaim",
    "attestation_tag",
    "envelope_json",
    "open_envelope",
    "pae",
    "quantization_predicate",
    "sign_envelope",
    "statement_bytes",
]

QUANTIZATION_PREDICATE = "https://edgekit.io/attestations/quantization/v1"
INTOTO_PAYLOAD = "application/vnd.in-toto+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_ANNOTATION = "predicateType"
STATEMENT_V01 = "https://in-toto.io/Statement/v0.1"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"


def attestation_tag(digest: str) -> str:
    """cosign's tag for the attestations of an image digest: ``sha256-<hex>.att``."""
    algo, _, hexpart = check_digest(digest).partition(":")
    return f"{algo}-{hexpart}.att"


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed, so the type cannot be swapped."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def _go_json(obj: Any) -> Any:
    """Sorted keys at every level, as Go's encoding/json marshals a map[string]interface{}."""
    if isinstance(obj, Mapping):
        return {k: _go_json(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [_go_json(v) for v in obj]
    return obj


def statement_bytes(subject_name: str, digest: str, predicate: Mapping[str, Any],
                    predicate_type: str = QUANTIZATION_PREDICATE) -> bytes:
    """The in-toto statement cosign builds for ``--type`` URLs it does not know (v0.1, custom)."""
    _, _, hexpart = check_digest(digest).partition(":")
    doc = {"_type": STATEMENT_V01, "predicateType": predicate_type,
           "subject": [{"name": subject_name, "digest": {"sha256": hexpart}}],
           "predicate": _go_json(predicate)}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign_envelope(key: ec.EllipticCurvePrivateKey, statement: bytes) -> dict[str, Any]:
    sig = key.sign(pae(INTOTO_PAYLOAD, statement), ec.ECDSA(hashes.SHA256()))
    return {"payloadType": INTOTO_PAYLOAD, "payload": base64.b64encode(statement).decode(),
            "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}]}


def envelope_json(envelope: Mapping[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode()


@dataclass(frozen=True)
class AttestedClaim:
    """One envelope read back: whether ``key`` signed it, and what its statement says."""

    signed: bool  # a signature verifies with the key over the PAE of this payload
    statement: dict[str, Any] | None  # None when the payload is not an in-toto JSON statement
    problem: str = ""  # why it does not count, in a few words

    @property
    def predicate_type(self) -> str | None:
        return self.statement.get("predicateType") if self.statement else None

    @property
    def predicate(self) -> dict[str, Any]:
        pred = (self.statement or {}).get("predicate")
        return pred if isinstance(pred, dict) else {}

    def names(self, digest: str) -> bool:
        """The statement's subject includes the image digest (sha256)."""
        hexpart = digest.partition(":")[2]
        subjects = (self.statement or {}).get("subject")
        return isinstance(subjects, list) and any(
            isinstance(s, dict) and isinstance(s.get("digest"), dict) and s["digest"].get("sha256") == hexpart
            for s in subjects)


def open_envelope(data: bytes, pub: ec.EllipticCurvePublicKey) -> AttestedClaim:
    """Parse a DSSE envelope and check its signatures with ``pub`` (never raises on bad input)."""
    try:
        env = safejson.loads(data)
        payload_type = env["payloadType"]
        body = base64.b64decode(env["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return AttestedClaim(False, None, "not a DSSE envelope")
    if not isinstance(payload_type, str) or payload_type != INTOTO_PAYLOAD:
        return AttestedClaim(False, None, f"payload type {payload_type!r} is not in-toto")
    signed = False
    for sig in sigs:
        try:
            pub.verify(sig, pae(payload_type, body), ec.ECDSA(hashes.SHA256()))
            signed = True
            break
        except InvalidSignature:
            continue
    try:
        statement = safejson.loads(body)
    except (ValueError, UnicodeDecodeError):
        return AttestedClaim(signed, None, "payload is not JSON")
    if not isinstance(statement, dict) or statement.get("_type") not in (STATEMENT_V01, STATEMENT_V1):
        return AttestedClaim(signed, None, "payload is not an in-toto statement")
    return AttestedClaim(signed, statement, "" if signed else "no signature verifies with the key")


# --- the predicate -------------------------------------------------------------------------------
def _accuracy(fidelity: Mapping[str, Any], metric: str | None) -> dict[str, Any]:
    """The decisive score against FP32's own, and the drop in the metric's units (points for
    unit scores): FP32 minus candidate, or the other way round for max-abs (lower is better)."""
    score, fp32 = fidelity.get("score"), fidelity.get("fp32")
    name = fidelity.get("metric") or metric
    drop = None
    if isinstance(score, int | float) and isinstance(fp32, int | float):
        drop = round(float(score) - float(fp32) if name == "max-abs" else float(fp32) - float(score), 6)
    return {"metric": name, "fp32": fp32, "score": score, "drop": drop}


def _platform_latency(metadata: Mapping[str, Any], plat: str, host_platform: str) -> dict[str, Any]:
    """The latency ``metadata`` records for ``plat``: what devices of a group measured there
    (``quantize --timing-group``) when they did, else the build host's when it is ``plat`` (a
    report that does not say was timed on ``host_platform``), else "not measured". Each carries
    its paired test (interval, rounds) when the report has one."""
    q = metadata.get("quantization") or {}
    latency = q.get("latency") if isinstance(q.get("latency"), Mapping) else {}
    assert isinstance(latency, Mapping)
    devices = latency.get("devices") if isinstance(latency.get("devices"), Mapping) else None
    if devices is not None and devices.get("platform") == plat and devices.get("ratio") is not None:
        return {"ratio": devices.get("ratio"), "measured_on": "devices", "group": devices.get("group"),
                "devices": devices.get("devices"), "ratio_of_medians": devices.get("ratio_of_medians"),
                **recorded_test(devices, ratio=False)}
    timed_on = latency.get("measured_on") or host_platform
    if plat == timed_on and latency.get("ratio") is not None:
        speed = latency.get("speed") if isinstance(latency.get("speed"), Mapping) else {}
        assert isinstance(speed, Mapping)
        return {"ratio": latency.get("ratio"), "fp32_p50_ms": latency.get("fp32_p50_ms"),
                "p50_ms": latency.get("p50_ms"), "threads": latency.get("threads"), "measured_on": "build host",
                **recorded_test(speed, ratio=False)}
    return {"ratio": None, "measured_on": "not measured"}


def _claims(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What one model's metadata says about its quantization (the per-model part of the predicate)."""
    q = metadata.get("quantization") or {}
    model = metadata.get("model") or {}
    fidelity = q.get("fidelity") if isinstance(q.get("fidelity"), Mapping) else {}
    assert isinstance(fidelity, Mapping)
    return {
        "model": {"name": metadata.get("name"), "version": metadata.get("version"),
                  "sha256": model.get("sha256"), "size": model.get("size")},
        "quantized": bool(q),
        "precision": metadata.get("precision"),
        "method": q.get("method"),
        "chosen": q.get("chosen"),
        "metric": q.get("metric"),
        "metric_settings": dict(q.get("metric_settings") or {}),
        "metric_reason": q.get("metric_reason") or "",
        "budget": q.get("budget"),
        "accuracy": _accuracy(fidelity, q.get("metric")),
        "fidelity": dict(fidelity),
        "size": dict(q.get("size") or {}),
    }


def _worst(claims: list[dict[str, Any]]) -> dict[str, Any]:
    """The claims of the model with the largest accuracy drop (unknown counts as the largest):
    a policy budget on the image then holds for every platform's model."""
    def key(c: dict[str, Any]) -> float:
        drop = c["accuracy"].get("drop")
        return float("inf") if c["quantized"] and drop is None else float(drop or 0.0)
    return max(claims, key=key)


def quantization_predicate(metadata: Mapping[str, Any], *,
                           platforms: tuple[str, ...] | list[str],
                           host_platform: str, tools: Mapping[str, str],
                           per_platform: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The predicate for an image's ``edgekit.json``: what was quantized, how, and what it cost.

    Latency was measured by ``edgekit quantize`` on the machine that built the model: its report
    records which platform (``measured_on``); one that does not say is attributed to
    ``host_platform`` (the packaging host). A platform whose build was timed on devices of a group
    (``quantize --timing-group``) gets the devices' figure instead (``measured_on: devices``, the
    group and device count). Every other platform is recorded as not measured.

    ``per_platform`` (platform -> metadata) describes an image with a layer per platform: each
    platform's latency comes from its own model's report, ``platforms`` lists every model's claims,
    and the top-level accuracy is that of the model with the largest drop."""
    by_platform = dict(per_platform or {})
    models = {plat: by_platform.get(plat, metadata) for plat in platforms}
    latency = {plat: _platform_latency(meta, plat, host_platform) for plat, meta in models.items()}
    distinct = {json.dumps(dict(m), sort_keys=True, default=str): m for m in models.values()} or \
        {"": metadata}
    if len(distinct) == 1:
        return {**_claims(next(iter(distinct.values()))), "latency": latency, "tools": dict(tools)}
    each = {plat: _claims(meta) for plat, meta in models.items()}
    worst = _worst(list(each.values()))
    precisions = {c["precision"] for c in each.values()}
    return {
        **worst,
        "model": {**worst["model"], "sha256": None, "size": None},  # one model per platform: see platforms
        "quantized": any(c["quantized"] for c in each.values()),
        "precision": precisions.pop() if len(precisions) == 1 else "per-platform",
        "latency": latency,
        "platforms": each,
        "tools": dict(tools),
    }
