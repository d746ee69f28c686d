"""The pure parts of device benchmarks: what an agent accepts, its duty cycle, which devices are
asked, how answers add up, and how quantize --timing-group picks by them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from edgekit_agent.benching import BenchRequestError, idle_after, parse_bench_request, timing_summary
from edgekit_agent.protocol import load_schema
from edgekit_agent.settings import AgentSettings

from edgekit.errors import BenchInputError
from edgekit.fleet.benching import check_candidates
from edgekit.fleet.timing import pick_devices, relative_to, summarize
from edgekit.optimize.recipes import Recipe
from edgekit.optimize.results import CandidateResult
from edgekit.rollout.devicetiming import choose_by_devices

REG = "registry.example:5000"
SERVED = f"{REG}/models/digits@sha256:{'a' * 64}"


def _img(n: int, registry: str = REG) -> str:
    return f"{registry}/models/digits@sha256:{str(n) * 64}"


def _settings(**kw: Any) -> AgentSettings:
    return AgentSettings(device="d1", group="g", app="det", image=SERVED, public_key="k.pub", **kw)


def _req(**kw: Any) -> bytes:
    return json.dumps({"v": 1, "id": "r1", "candidates": [_img(1)], **kw}).encode()


def test_a_request_within_the_bounds_is_taken_and_matches_its_schema() -> None:
    payload = _req(candidates=[_img(1), _img(2)], runs=20, warmup=0, max_seconds=30)
    jsonschema.validate(json.loads(payload), load_schema("bench_request"))
    req = parse_bench_request(payload, _settings())
    assert req.candidates == (_img(1), _img(2)) and req.runs == 20 and req.warmup == 0 and req.max_seconds == 30
    # a longer deadline than the agent allows is cut to its own bound
    assert parse_bench_request(_req(max_seconds=10_000), _settings()).max_seconds == 120


@pytest.mark.parametrize(("payload", "words"), [
    (b"[1]", "not a JSON object"),
    (b"{", "not JSON"),
    (_req(v=2), "schema version"),
    (_req(id="../x"), "id:"),
    (_req(candidates=[]), "non-empty list"),
    (_req(candidates=[_img(n) for n in range(1, 6)]), "at most 4"),
    (_req(candidates=[_img(1), _img(1)]), "named twice"),
    (_req(candidates=[f"{REG}/models/digits:latest"]), "not pinned by digest"),
    (_req(candidates=[_img(1, "evil.example")]), "not on registry.example:5000"),
    (_req(runs=10_000), "runs:"),
    (_req(runs=True), "runs:"),
    (_req(warmup=-1), "warmup:"),
    (_req(max_seconds=-1), "max_seconds:"),
    (_req(max_seconds="soon"), "max_seconds:"),
    (_req(reply_to="x/y"), "unknown field"),
    (b"{" + b" " * 20000 + b"}", "at most 16384"),
])
def test_a_hostile_or_broken_request_is_refused_in_one_line(payload: bytes, words: str) -> None:
    with pytest.raises(BenchRequestError, match=words.replace("(", r"\(")) as exc:
        parse_bench_request(payload, _settings())
    assert "\n" not in str(exc.value)


def test_an_agent_serving_a_local_folder_fetches_no_candidates() -> None:
    settings = AgentSettings(device="d1", group="g", app="det", public_key="k.pub")
    with pytest.raises(BenchRequestError, match="local model folder"):
        parse_bench_request(_req(), settings)


def test_the_duty_cycle_keeps_busy_time_within_the_budget() -> None:
    for budget in (0.1, 0.25, 0.5, 1.0):
        busy = 0.004
        assert busy / (busy + idle_after(busy, budget)) == pytest.approx(budget)


def test_timing_summary_is_nearest_rank() -> None:
    s = timing_summary([float(x) for x in range(10, 0, -1)])
    assert s == {"n": 10, "median_ms": 5.5, "p90_ms": 9.0, "min_ms": 1.0, "max_ms": 10.0}
    assert timing_summary([])["n"] == 0


def _status(platform: str | None, *, bench: str | None = "det", state: str = "online", ready: bool = True
            ) -> dict[str, Any]:
    out: dict[str, Any] = {"state": state, "ready": ready}
    if platform:
        out["platform"] = platform
    if bench:
        out["bench"] = bench
    return out


def test_devices_are_picked_per_class_among_those_that_bench_the_app() -> None:
    statuses = {"a3": _status("linux/amd64"), "a1": _status("linux/amd64"), "a2": _status("linux/amd64"),
                "r1": _status("linux/arm64"), "r0": _status("linux/arm64", state="offline"),
                "r2": _status("linux/arm64", ready=False), "o1": _status("linux/arm64", bench="other"),
                "old": _status(None, bench=None)}
    chosen = pick_devices(statuses, "det", 2)
    assert {p: [d.device for d in ds] for p, ds in chosen.items()} == {"linux/amd64": ["a1", "a2"],
                                                                        "linux/arm64": ["r1"]}


def _done(platform: str, running_ms: float, cands: dict[str, float], refused: dict[str, str] | None = None
          ) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [{"image": i, "digest": i.rsplit("@", 1)[1], "status": "ok", "n": 10,
                                      "median_ms": ms, "p90_ms": ms * 1.2, "ratio": ms / running_ms}
                                     for i, ms in cands.items()]
    entries += [{"image": i, "digest": i.rsplit("@", 1)[1], "status": "refused", "error": e, "detail": "no"}
                for i, e in (refused or {}).items()]
    return {"state": "done", "platform": platform, "running": {"n": 10, "median_ms": running_ms},
            "candidates": entries}


def test_answers_fold_per_class_and_a_class_without_devices_is_named() -> None:
    statuses = {"a1": _status("linux/amd64"), "a2": _status("linux/amd64"), "a3": _status("linux/amd64")}
    asked = [d for ds in pick_devices(statuses, "det", 3).values() for d in ds]
    answers = {"a1": _done("linux/amd64", 2.0, {_img(1): 1.0, _img(2): 3.0}),
               "a2": _done("linux/amd64", 4.0, {_img(1): 3.0, _img(2): 4.0}, {_img(3): "SignatureMissingError"}),
               "a3": {"state": "busy"}}
    s = summarize(asked, answers, [_img(1), _img(2), _img(3)], expected_platforms=["linux/amd64", "linux/arm64"])
    one = s.figure("linux/amd64", _img(1))
    assert one is not None and one.ratio == pytest.approx(0.625) and one.n == 20 and one.devices == ["a1", "a2"]
    assert one.ratio_spread == (0.5, 0.75) and one.median_ms == 2.0
    assert s.busy == ["a3"] and s.without_devices == ["linux/arm64"]
    assert [r.image for r in s.refusals] == [_img(3)] and s.refused_everywhere([_img(1), _img(3)]) == [_img(3)]


def test_candidates_go_against_the_fp32_build_of_the_same_rounds() -> None:
    fp32 = _img(9)
    answers = {"r1": _done("linux/arm64", 5.0, {fp32: 2.0, _img(1): 1.0, _img(2): 2.4}),
               "r2": _done("linux/arm64", 9.0, {fp32: 4.0, _img(1): 3.0, _img(2): 4.4})}
    rel = relative_to(answers, fp32)
    one = rel[_img(1)]
    assert one.ratio == pytest.approx(0.625) and (one.ratio_min, one.ratio_max) == (0.5, 0.75)
    assert rel[_img(2)].ratio == pytest.approx(1.15) and fp32 not in rel


def _cand(recipe: Recipe, host_ratio: float | None) -> CandidateResult:
    return CandidateResult(recipe, verdict="in budget", latency_ratio=host_ratio, path=Path("/x/c.onnx"))


def test_quantize_takes_the_fastest_on_the_devices_not_on_the_host() -> None:
    a = _cand(Recipe(method="static", calibration="minmax"), 0.6)
    b = _cand(Recipe(method="static", calibration="entropy"), 0.9)
    c = _cand(Recipe(method="dynamic"), None)
    images = {a.recipe.name: _img(1), b.recipe.name: _img(2), c.recipe.name: _img(3)}
    answers = {"r1": _done("linux/arm64", 5.0, {_img(9): 2.0, _img(1): 2.2, _img(2): 1.2, _img(3): 1.6})}
    winner, reason = choose_by_devices([a, b, c], relative_to(answers, _img(9)), images)
    assert winner is b and "0.60x FP32 there" in reason
    slow = {"r1": _done("linux/arm64", 5.0, {_img(9): 2.0, _img(1): 2.2, _img(2): 2.0})}
    winner, reason = choose_by_devices([a, b], relative_to(slow, _img(9)), images)
    assert winner is None and "at least as slow as FP32" in reason


def test_the_cli_side_refuses_unpinned_or_too_many_candidates() -> None:
    with pytest.raises(BenchInputError, match="not pinned"):
        check_candidates([f"{REG}/models/digits:1.0"])
    with pytest.raises(BenchInputError, match="at most 4"):
        check_candidates([_img(n) for n in range(1, 6)])
    assert BenchInputError.exit_code == 99


def test_candidates_are_fetched_under_the_spool_not_the_small_tmp() -> None:
    s = AgentSettings(device="d1", spool_dir="/var/lib/edgekit-agent/spool")
    assert s.bench_path == "/var/lib/edgekit-agent/spool/bench"
    assert AgentSettings(device="d1", bench_dir="/data/bench").bench_path == "/data/bench"


@pytest.mark.mqtt
@pytest.mark.registry
def test_the_agent_process_times_a_candidate_under_its_spool(mqtt_broker: Any, agent_process: Any,
                                                             model_images: dict[str, str], release_key: Any,
                                                             tmp_path: Path) -> None:
    """``edgekit-agent serve`` itself (not the simulator): fetches the signed image it serves, answers a
    bench over the broker, fetches the candidate under its spool and leaves nothing there."""
    from edgekit.fleet.benching import bench_group
    from edgekit.fleet.settings import load_fleet_settings

    spool = tmp_path / "spool"
    agent_process({"device": "bench-dev-1", "group": "benchproc", "app": "digits", "image": model_images["1.0"],
                   "model_dir": str(tmp_path / "model"), "public_key": str(release_key.public),
                   "registry_insecure": True, "broker_url": mqtt_broker.url, "spool_dir": str(spool)},
                  wait="ready")
    settings = load_fleet_settings(None, overrides={"brokers": (mqtt_broker.url,)})
    bench = bench_group(settings, group="benchproc", app="digits", candidates=[model_images["2.0"]], runs=8,
                        timeout=90)
    (answer,) = bench.answers.values()
    jsonschema.validate(answer, load_schema("bench_result"))
    (cand,) = answer["candidates"]
    assert answer["state"] == "done" and cand["status"] == "ok" and cand["version"] == "2.0" and cand["n"] == 8
    assert answer["running"]["version"] == "1.0" and answer["running"]["n"] == 8
    assert (spool / "bench").is_dir() and not any((spool / "bench").iterdir())


def test_a_flood_of_bad_requests_gets_a_bounded_number_of_answers() -> None:
    from edgekit_agent.benching import DeviceBench

    sent: list[dict[str, Any]] = []
    bench = DeviceBench(_settings(), served=lambda: None, publish=sent.append)
    states = [bench.submit(b"not json") for _ in range(50)]
    assert states.count("rejected") == 10 and states.count("ignored") == 40
    assert len(sent) == 10 and bench.unanswered == 40


@pytest.mark.mqtt
def test_a_device_that_never_answers_is_a_timeout(mqtt_broker: Any) -> None:
    """A retained online status that outlived its agent (the will not delivered yet): the device is
    asked, nothing answers, and the command ends at its deadline with its own exit code."""
    import subprocess
    import sys

    import paho.mqtt.client as mqtt
    from edgekit_agent.protocol import status_payload

    status = status_payload(device="ghost-1", group="ghosts", session="s", seq=0, ts=1.0, model=None,
                            state="online", agent_version="0", ready=True, platform="linux/amd64", bench="det")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.loop_start()
    client.publish("edgekit/v1/ghosts/ghost-1/status", json.dumps(status), qos=1, retain=True).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    edgekit = str(Path(sys.executable).with_name("edgekit"))
    result = subprocess.run([edgekit, "bench", "--group", "ghosts", "--app", "det", "--platform", "linux/amd64",
                             "--broker", mqtt_broker.url, "--timeout", "5", _img(1)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 97, result.stderr
    assert "answered within 5s" in result.stderr and len(result.stderr.strip().splitlines()) <= 3
