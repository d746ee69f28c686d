"""The EdgeRollout model: JSON round trips and names."""

from __future__ import annotations

import json

from edgekit.rollout.gating import Baseline, TelemetryFigures, Verdict
from edgekit.rollout.resource import (
    API_VERSION,
    EdgeRollout,
    HistoryEntry,
    ImageRef,
    Owner,
    RolloutSpec,
    RolloutStatus,
    WaveStatus,
    label_safe,
    revision_for,
    rollout_name,
)
from edgekit.rollout.strategy import build_strategy

DIGEST = "sha256:" + "ab" * 32


def sample() -> EdgeRollout:
    spec = RolloutSpec(app="detector", group="cameras", target=ImageRef("reg/detector@" + DIGEST, DIGEST,
                                                                         revision_for(DIGEST)),
                       strategy=build_strategy(waves="1,50%,100%", bake="5s", max_p95_regression="20%"),
                       previous=ImageRef("reg/detector@sha256:" + "cd" * 32, "sha256:" + "cd" * 32, "cdcdcdcdcdcd"))
    status = RolloutStatus(
        phase="Progressing", current_wave=1, message="baking",
        waves=[WaveStatus(0, "1", ["n1"], {"n1": "cdcdcdcdcdcd"}, phase="Passed", moved_at=1700000000.25,
                          ready_at=1700000001.5, ready=1, baseline=Baseline(9.0, 0.0, 1),
                          telemetry=TelemetryFigures(expected=1, reported=1, on_digest=1),
                          verdict=Verdict("advance", "all gates pass"), verdict_at=1700000007.0),
               WaveStatus(1, "100%", ["n2", "n3"], {"n2": "cdcdcdcdcdcd", "n3": None}, phase="Moving")],
        owner=Owner("host/1/abc", 1700000008.0, 15.0), started_at=1699999999.0,
        history=[HistoryEntry(1700000000.0, "wave-started", "moving 1 node", 0)],
    )
    return EdgeRollout("detector-cameras-1", "edgekit-system", spec, status, resource_version="42")


def test_round_trip_through_json() -> None:
    ro = sample()
    obj = json.loads(json.dumps(ro.to_json()))
    assert obj["apiVersion"] == API_VERSION and obj["kind"] == "EdgeRollout"
    assert obj["metadata"]["labels"] == {"edgekit.io/app": "detector", "edgekit.io/group": "cameras",
                                         "edgekit.io/active": "true"}
    assert obj["status"]["waves"][1]["from"] == {"cdcdcdcdcdcd": ["n2"], "": ["n3"]}
    assert obj["status"]["waves"][0]["movedAt"] == "2023-11-14T22:13:20.250000Z"
    back = EdgeRollout.from_json(obj)
    assert back == ro
    assert back.status.moved_nodes == ["n1", "n2", "n3"]


def test_no_nulls_in_applied_json() -> None:
    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                assert v is not None
                walk(v)
    obj = EdgeRollout("x", "ns", sample().spec).to_json()
    walk({k: v for k, v in obj.items() if k != "status"} | {"status": {}})
    assert "status" in obj and obj["status"]["phase"] == "Pending"


def test_names() -> None:
    assert revision_for(DIGEST) == "abababababab"
    assert rollout_name("detector", "cameras", 3) == "detector-cameras-3"
    assert label_safe("zone=a,tier=edge").startswith("zone-a-tier-edge-")
    assert label_safe("zone=a,tier=edge") != label_safe("zone=a;tier=edge")
    assert len(label_safe("x" * 100)) <= 63
