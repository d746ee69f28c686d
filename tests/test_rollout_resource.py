"""The EdgeRollout model: JSON round trips, the CRD's schema, and names."""

from __future__ import annotations

import json

import pytest

from edgekit.rollout.gating import Baseline, TelemetryFigures, Verdict
from edgekit.rollout.resource import (
    API_VERSION,
    EdgeRollout,
    HistoryEntry,
    ImageRef,
    RolloutSpec,
    RolloutStatus,
    WaveStatus,
    label_safe,
    revision_for,
    rollout_name,
)
from edgekit.rollout.strategy import build_strategy

DIGEST = "sha256:" + "ab" * 32
OLD = "sha256:" + "cd" * 32


def sample() -> EdgeRollout:
    spec = RolloutSpec(app="detector", group="cameras",
                       target=ImageRef("reg/detector@" + DIGEST, DIGEST, revision_for(DIGEST)),
                       strategy=build_strategy(waves="1,50%,100%", bake="5s", max_p95_regression="20%",
                                               offline_policy="skip", silence_deadline="20s",
                                               auto_promote=False),
                       previous=ImageRef("reg/detector@" + OLD, OLD, revision_for(OLD)),
                       promote=1, abort="operator said so", undo_of="detector-cameras-1")
    status = RolloutStatus(
        phase="Progressing", current_wave=1, message="baking", revision=revision_for(DIGEST),
        previous_revision=revision_for(OLD),
        waves=[WaveStatus(0, "1", ["n1"], {"n1": "cdcdcdcdcdcd"}, phase="Passed", moved_at=1700000000.25,
                          ready_at=1700000001.5, ready=1, baseline=Baseline(9.0, 0.0, 1),
                          telemetry=TelemetryFigures(expected=1, reported=1, on_digest=1),
                          verdict=Verdict("advance", "all gates pass"), verdict_at=1700000007.0),
               WaveStatus(1, "100%", ["n2", "n3"], {"n2": "cdcdcdcdcdcd", "n3": None}, phase="Moving")],
        started_at=1699999999.0, updated_at=1700000008.0,
        history=[HistoryEntry(1700000000.0, "wave-started", "moving 1 node", 0)],
    )
    status.set_condition("RolledBack", False, "Healthy", "", 1700000000.0)
    return EdgeRollout("detector-cameras-2", "edgekit", spec, status, resource_version="42")


def test_round_trip_through_json() -> None:
    ro = sample()
    obj = json.loads(json.dumps(ro.to_json()))
    assert obj["apiVersion"] == API_VERSION and obj["kind"] == "EdgeRollout"
    assert obj["metadata"]["labels"] == {"edgekit.io/app": "detector", "edgekit.io/group": "cameras"}
    assert obj["metadata"]["annotations"]["edgekit.io/promote"] == "1"
    assert obj["spec"]["waves"] == [1, "50%", "100%"]
    assert obj["spec"]["bakeTime"] == "5s"
    assert obj["spec"]["gates"]["manualPromotion"] is True
    wave = obj["status"]["waves"][0]
    assert wave["verdict"] == "advance" and wave["verdictDetail"]["reason"] == "all gates pass"
    assert wave["startedAt"] == "2023-11-14T22:13:20.250000Z"
    assert obj["status"]["waves"][1]["from"] == {"cdcdcdcdcdcd": ["n2"], "": ["n3"]}
    back = EdgeRollout.from_json(obj)
    assert back == ro
    assert back.status.moved_nodes == ["n1", "n2", "n3"]


def test_json_fits_the_crd_schema() -> None:
    """Validate against the CRD's structural schema: typed fields typed right, and nothing outside
    the places that keep unknown fields (the API server would prune it)."""
    jsonschema = pytest.importorskip("jsonschema")
    from edgekit.kube.install import edgerollout_crd

    schema = edgerollout_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def close(node: dict) -> dict:  # unknown fields are errors, except where the CRD keeps them
        node = dict(node)
        if node.get("x-kubernetes-int-or-string"):
            return {"type": ["integer", "string"]}
        node.pop("format", None)
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        if "properties" in node:
            node["properties"] = {k: close(v) for k, v in node["properties"].items()}
        if "items" in node:
            node["items"] = close(node["items"])
        return {k: v for k, v in node.items() if not k.startswith("x-kubernetes")}

    obj = json.loads(json.dumps(sample().to_json()))
    closed = close(schema)
    closed["properties"]["metadata"] = {"type": "object"}
    closed["properties"]["apiVersion"] = closed["properties"]["kind"] = {"type": "string"}
    jsonschema.validate(obj, closed)


def test_no_nulls_in_applied_json() -> None:
    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                assert v is not None
                walk(v)
        if isinstance(value, list):
            for v in value:
                walk(v)
    walk(sample().to_json())
    obj = EdgeRollout("x", "ns", sample().spec).to_json()
    assert obj["status"]["phase"] == "Pending"


def test_names() -> None:
    assert revision_for(DIGEST) == "abababababab"
    assert rollout_name("detector", "cameras", 3) == "detector-cameras-3"
    assert label_safe("selector:zone=a,tier=edge").startswith("selector-zone-a-tier-edge-")
    assert label_safe("zone=a,tier=edge") != label_safe("zone=a;tier=edge")
    assert len(label_safe("x" * 100)) <= 63
