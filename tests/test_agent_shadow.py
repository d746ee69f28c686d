"""Shadow evaluation on the device: sampling, the CPU budget, isolation from the caller, and
agreement figures checked against ones computed here with onnxruntime and numpy."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
from edgekit_agent.core import AgentCore
from edgekit_agent.errors import ConfigError
from edgekit_agent.loading import load_model
from edgekit_agent.protocol import load_schema
from edgekit_agent.settings import load_settings
from edgekit_agent.shadowing import ShadowRunner

from tests.fixtures.agent import build_model_folder, wait_until
from tests.fixtures.models import DIGITS, degrade_weights, digits_inputs


def _echo(names: Any, feeds: Any) -> list[np.ndarray]:
    return [np.ones((1, 10), dtype=np.float32)]


def _out() -> list[np.ndarray]:
    return [np.ones((1, 10), dtype=np.float32)]


@pytest.fixture(scope="module")
def degraded_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("degraded")
    bad, _ = degrade_weights(DIGITS / "digits.onnx", work / "bad.onnx", target=0.9)
    return build_model_folder(bad, work / "model", version="2.0.0-bad")


def _core(**overrides: Any) -> AgentCore:
    return AgentCore(load_settings(overrides={"device": "d1", "group": "g", "spool_dir": None,
                                              "allow_unsigned": True, **overrides}))


def test_sampling_follows_the_ratio() -> None:
    runner = ShadowRunner(_echo, digest="sha256:x", ratio=0.25, cpu_budget=1.0, queue_size=10_000,
                          rng=random.Random(7))
    n = 4000
    for _ in range(n):
        runner.offer({}, _out(), None, 0.001)
    sd = (n * 0.25 * 0.75) ** 0.5
    assert abs(runner.sampled - n * 0.25) < 4 * sd
    assert runner.drain() == runner.sampled and runner.samples == runner.sampled
    none = ShadowRunner(_echo, digest="sha256:x", ratio=0.0, cpu_budget=1.0)
    for _ in range(100):
        none.offer({}, _out(), None, 0.001)
    assert none.sampled == 0 and none.drain() == 0


def test_cpu_budget_skips_samples_until_it_refills() -> None:
    now = [100.0]
    ticks = iter(range(1_000_000))

    def timer() -> float:  # every shadow run takes 0.5 s of its timer
        return next(ticks) * 0.5

    runner = ShadowRunner(_echo, digest="sha256:x", ratio=1.0, cpu_budget=0.25, rng=random.Random(1),
                          clock=lambda: now[0], timer=timer)
    assert runner.offer({}, _out(), None, 0.001)
    runner.drain()
    for _ in range(20):  # no time passes: the spent budget is not back
        assert not runner.offer({}, _out(), None, 0.001)
    assert runner.skipped_budget == 20 and runner.sampled == 1
    now[0] += 4.0  # 4 s at a quarter of a core refill the bucket (at most one second's worth)
    assert runner.offer({}, _out(), None, 0.001)
    assert runner.report()["skipped_budget"] == 20


def test_a_full_queue_drops_instead_of_blocking() -> None:
    runner = ShadowRunner(_echo, digest="sha256:x", ratio=1.0, cpu_budget=1.0, queue_size=3)
    results = [runner.offer({}, _out(), None, 0.001) for _ in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert runner.dropped == 7 and runner.drain() == 3


def test_a_failing_shadow_never_reaches_the_caller(digits_folder: Path) -> None:
    core = _core(shadow_ratio=1.0, shadow_cpu_budget=1.0, shadow_queue=1000)
    model = load_model(digits_folder, allow_unsigned=True)
    core.use_model(model)
    x = digits_inputs()[:1]
    expected = model.session.session.run(None, {"input": x})[0]

    def explode(names: Any, feeds: Any) -> list[np.ndarray]:
        raise RuntimeError("candidate blew up")

    core.shadow = ShadowRunner(explode, digest="sha256:bad", ratio=1.0, cpu_budget=1.0, queue_size=1000).start()
    try:
        for _ in range(50):
            out = core.infer({"input": x})
            np.testing.assert_array_equal(out[0], expected)
        wait_until(lambda: core.shadow is not None and core.shadow.errors == 50, timeout=30)
    finally:
        core.shadow.stop()
    health = core.report_health()
    assert health["inferences"] == 50 and health["errors"] == 0
    assert health["shadow"]["errors"] == 50 and health["shadow"]["samples"] == 0
    assert "candidate blew up" in health["shadow"]["last_error"]
    jsonschema.validate(health, load_schema("health"))


def test_offer_errors_do_not_reach_the_caller(digits_folder: Path) -> None:
    core = _core()
    core.use_model(load_model(digits_folder, allow_unsigned=True))

    class Broken(ShadowRunner):
        def offer(self, *args: Any, **kwargs: Any) -> bool:
            raise RuntimeError("offer failed")

    core.shadow = Broken(_echo, digest="sha256:x", ratio=1.0, cpu_budget=1.0)
    assert core.infer({"input": digits_inputs()[:1]})[0].shape == (1, 10)
    assert core.stats.take_window().errors == 0


@pytest.mark.parametrize("metric", ["top1", "cosine"])
def test_agreement_matches_an_independent_measurement(digits_folder: Path, degraded_folder: Path,
                                                      metric: str) -> None:
    core = _core(shadow_ratio=1.0, shadow_cpu_budget=1.0, shadow_queue=1000, shadow_metric=metric)
    core.use_model(load_model(digits_folder, allow_unsigned=True))
    candidate = load_model(degraded_folder, allow_unsigned=True)
    runner = core.use_shadow(candidate)
    inputs = digits_inputs()
    for i in range(len(inputs)):
        core.infer({"input": inputs[i:i + 1]})
        runner.drain()
    report = core.report_health()["shadow"]
    assert report["digest"] == candidate.digest and report["metric"] == metric
    assert report["skipped_budget"] == 0 and report["dropped"] == 0 and report["errors"] == 0
    assert report["samples"] == len(inputs)
    # independently: both ONNX files run here with onnxruntime over the whole split
    ref = ort.InferenceSession(str(digits_folder / "model.onnx")).run(None, {"input": inputs})[0]
    cand = ort.InferenceSession(str(degraded_folder / "model.onnx")).run(None, {"input": inputs})[0]
    if metric == "top1":
        want = float(np.mean(ref.argmax(1) == cand.argmax(1)))
        assert report["agreement"]["agree"] == int(np.sum(ref.argmax(1) == cand.argmax(1)))
        assert 0.85 <= want <= 0.95
    else:
        cos = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1))
        want = float(cos.mean())
    assert report["agreement"]["value"] == pytest.approx(want, abs=1e-5)
    assert report["latency_ms"]["shadow_p95"] > 0 and report["latency_ms"]["ratio"] > 0


def test_shadow_image_is_verified_like_the_model(digits_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shadow_image"):
        _core(shadow_image="registry.local/m:latest")
    with pytest.raises(ConfigError, match="shadow_metric"):
        _core(shadow_metric="accuracy")
    # a keyed agent refuses an unsigned candidate folder: an event, and serving goes on
    key = tmp_path / "cosign.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n")
    core = AgentCore(load_settings(overrides={
        "device": "d1", "group": "g", "spool_dir": None, "allow_unsigned": True,
        "public_key": str(key), "shadow_image": "registry.local/m@sha256:" + "0" * 64}))
    core.use_model(load_model(digits_folder, allow_unsigned=True))
    sent: list[str] = []
    core.emit_event = lambda kind, detail, data=None: sent.append(kind)  # type: ignore[method-assign]
    assert core.load_shadow(digits_folder) is False
    assert sent == ["shadow_rejected"] and core.shadow is None
    assert core.infer({"input": digits_inputs()[:1]})[0].shape == (1, 10)


def test_health_without_a_shadow_has_no_shadow_field(digits_folder: Path) -> None:
    core = _core()
    core.use_model(load_model(digits_folder, allow_unsigned=True))
    started = time.monotonic()
    assert "shadow" not in core.report_health(started)


def test_big_requests_are_not_held_for_the_shadow() -> None:
    runner = ShadowRunner(_echo, digest="sha256:x", ratio=1.0, cpu_budget=1.0, max_sample_bytes=1000)
    assert not runner.offer({"input": np.zeros(1000, dtype=np.float32)}, _out(), None, 0.001)
    assert runner.offer({"input": np.zeros(10, dtype=np.float32)}, _out(), None, 0.001)
    assert runner.report()["skipped_size"] == 1 and runner.sampled == 1


@pytest.mark.mqtt
def test_the_agent_process_reports_its_shadow(mqtt_broker: Any, mqtt_recorder: Any, agent_process: Any,
                                              digits_folder: Path, degraded_folder: Path,
                                              telemetry_checker: Any) -> None:
    """``edgekit-agent serve`` with a shadow candidate: answers are the served model's, and its
    health reports count agreement as computed here on the very rows that were sent."""
    import json as _json

    from tests.fixtures.agent import http

    dev = f"dev-{random.randrange(1 << 30):08x}"
    rec = mqtt_recorder(mqtt_broker, f"edgekit/v1/shadow/{dev}/#")
    agent = agent_process({"device": dev, "group": "shadow", "model_dir": str(digits_folder),
                           "broker_url": mqtt_broker.url, "interval": 0.2, "probe_interval": 30,
                           "allow_unsigned": True, "shadow_image": "reg.local/digits@sha256:" + "7" * 64,
                           "shadow_model_dir": str(degraded_folder), "shadow_ratio": 1.0,
                           "shadow_cpu_budget": 1.0, "shadow_queue": 256}, wait="ready")
    rows = digits_inputs()[:40]
    ref = ort.InferenceSession(str(digits_folder / "model.onnx")).run(None, {"input": rows})[0]
    cand = ort.InferenceSession(str(degraded_folder / "model.onnx")).run(None, {"input": rows})[0]
    for i, row in enumerate(rows):
        body = _json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                        "data": row.reshape(-1).tolist()}]}).encode()
        status, _, answer = http("POST", agent.url + "/v2/models/digits/infer", body)
        assert status == 200
        got = np.asarray(_json.loads(answer)["outputs"][0]["data"])
        np.testing.assert_allclose(got, ref[i], rtol=1e-4, atol=1e-5)

    def shadows(msgs: list[Any]) -> list[dict[str, Any]]:
        return [d["shadow"] for k, d in telemetry_checker.check_all(msgs) if k == "health" and "shadow" in d]

    msgs = rec.wait_for(lambda m: any(s["samples"] == len(rows) for s in shadows(m)), timeout=60)
    final = next(s for s in shadows(msgs) if s["samples"] == len(rows))
    assert final["digest"] == "sha256:" + "7" * 64 and final["errors"] == 0
    assert final["agreement"]["agree"] == int(np.sum(ref.argmax(1) == cand.argmax(1)))
    events = [d["kind"] for k, d in telemetry_checker.check_all(msgs) if k == "event"]
    assert "shadow_loaded" in events
    assert agent.terminate() == 0
