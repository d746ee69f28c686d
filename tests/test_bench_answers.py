"""A device's bench answer is hostile input: decoded with bounds before the fleet side reads it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from edgekit.fleet.bench_answers import MAX_ANSWER_BYTES, MAX_CANDIDATES, decode_answer
from edgekit.fleet.timing import BenchDevice, summarize

IMAGE = f"registry.example:5000/models/digits@sha256:{'1' * 64}"


def _answer(**kw: Any) -> dict[str, Any]:
    entry = {"image": IMAGE, "digest": "sha256:" + "1" * 64, "status": "ok", "n": 10, "median_ms": 2.0,
             "p90_ms": 2.5, "min_ms": 1.9, "max_ms": 3.0, "ratio": 0.8, "samples_ms": [2.0] * 10}
    return {"v": 1, "device": "d1", "group": "g", "app": "det", "session": "s", "ts": 1.0, "model": None,
            "platform": "linux/amd64", "id": "r1", "state": "done", "runs": 10, "future_field": {"x": 1},
            "running": {"n": 10, "median_ms": 2.5, "p90_ms": 3.0, "samples_ms": [2.5] * 10},
            "candidates": [entry], **kw}


def test_a_well_formed_answer_keeps_what_is_read_and_drops_the_unknown() -> None:
    got, why = decode_answer(json.dumps(_answer()).encode())
    assert why == "" and got is not None
    assert "future_field" not in got and got["candidates"][0]["median_ms"] == 2.0
    # and the decoded answer folds as the raw one would
    summary = summarize([BenchDevice("d1", "linux/amd64")], {"d1": got}, [IMAGE])
    assert [f.ratio for f in summary.figures] == [0.8]


def _candidate(**kw: Any) -> dict[str, Any]:
    return {**_answer()["candidates"][0], **kw}


@pytest.mark.parametrize(("payload", "words"), [
    (b"[" * 100_000, "not JSON"),                                      # deeper than the parser goes
    (b"{" + b'"a":1,' * (MAX_ANSWER_BYTES // 6) + b'"b":1}', "over the limit"),
    (b'"done"', "not a JSON object"),
    (json.dumps(_answer(state="finished")).encode(), "state"),
    (json.dumps(_answer(id=["r1"])).encode(), "id"),
    (json.dumps(_answer(truncated="no")).encode(), "truncated"),
    (json.dumps(_answer(runs=-1)).encode(), "runs"),
    (json.dumps(_answer(running=[1, 2])).encode(), "running"),
    (json.dumps(_answer(running={"median_ms": "fast"})).encode(), "running.median_ms"),
    (json.dumps(_answer(candidates={"a": 1})).encode(), "candidates"),
    (json.dumps(_answer(candidates=[_candidate()] * (MAX_CANDIDATES + 1))).encode(), "candidates"),
    (json.dumps(_answer(candidates=["x"])).encode(), "candidates[0]: not an object"),
    (json.dumps(_answer(candidates=[_candidate(median_ms="fast")])).encode(), "candidates[0].median_ms"),
    (json.dumps(_answer(candidates=[_candidate(median_ms=True)])).encode(), "candidates[0].median_ms"),
    (json.dumps(_answer(candidates=[_candidate(p90_ms=-1)])).encode(), "candidates[0].p90_ms"),
    (json.dumps(_answer(candidates=[_candidate(p90_ms=None)])).encode(), "without median_ms and p90_ms"),
    (json.dumps(_answer(candidates=[_candidate(ratio=[0.5])])).encode(), "candidates[0].ratio"),
    (json.dumps(_answer(candidates=[_candidate(n=2.5)])).encode(), "candidates[0].n"),
    (json.dumps(_answer(candidates=[_candidate(image=None)])).encode(), "candidates[0].image"),
    (json.dumps(_answer(candidates=[_candidate(image="x" * 5000)])).encode(), "candidates[0].image"),
    (json.dumps(_answer(candidates=[_candidate(status="great")])).encode(), "candidates[0].status"),
    (json.dumps(_answer(candidates=[_candidate(exit_code=1000)])).encode(), "candidates[0].exit_code"),
    (json.dumps(_answer(detail={"a": 1})).encode(), "detail"),
    (b'{"state": "done", "seconds": 1e999}', "not JSON"),               # orjson refuses the infinity
])
def test_a_hostile_answer_is_refused_with_its_reason(payload: bytes, words: str) -> None:
    got, why = decode_answer(payload)
    assert got is None and words in why, why
    assert "\n" not in why and len(why) < 300


@pytest.mark.mqtt
def test_the_bench_survives_hostile_answers_and_takes_the_good_one(mqtt_broker: Any) -> None:
    """A device (played here by the test) answers the request three times: too deep for a parser,
    then with a number that is a string, then well formed. The command ignores the first two, says
    so, and reports the third."""
    import paho.mqtt.client as mqtt
    from edgekit_agent.protocol import status_payload

    status = status_payload(device="odd-1", group="odd", session="s", seq=0, ts=1.0, model=None,
                            state="online", agent_version="0", ready=True, platform="linux/amd64", bench="det")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    asked = threading.Event()

    def answer(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        request = json.loads(msg.payload)
        good = _answer(id=request["id"], device="odd-1", group="odd")
        good["candidates"][0]["image"] = request["candidates"][0]
        result = "edgekit/v1/odd/odd-1/bench/det/result"
        client.publish(result, b"[" * 100_000, qos=1)
        client.publish(result, json.dumps({**good, "running": {"median_ms": "fast"}}), qos=1)
        client.publish(result, json.dumps(good), qos=1)
        asked.set()

    client.on_message = answer
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.subscribe("edgekit/v1/odd/odd-1/bench/det/request", qos=1)
    client.loop_start()
    try:
        client.publish("edgekit/v1/odd/odd-1/status", json.dumps(status), qos=1, retain=True).wait_for_publish(10)
        edgekit = str(Path(sys.executable).with_name("edgekit"))
        result = subprocess.run([edgekit, "bench", "--group", "odd", "--app", "det", "--platform", "linux/amd64",
                                 "--broker", mqtt_broker.url, "--timeout", "30", IMAGE],
                                capture_output=True, text=True, timeout=90)
        assert asked.is_set()
        assert result.returncode == 0, result.stderr
        assert "answer ignored: not JSON" in result.stderr
        assert "answer ignored: running.median_ms: not a finite number" in result.stderr
        assert "Traceback" not in result.stderr
        assert "0.80x" in result.stdout
    finally:
        client.publish("edgekit/v1/odd/odd-1/status", b"", qos=1, retain=True).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
