"""The pure parts of device benchmarks: what an agent accepts, its duty cycle, which devices are
asked, how answers add up, and how quantize --timing-group picks by them."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from edgekit_agent.benching import (
    MAX_SAMPLES,
    BenchRequestError,
    idle_after,
    paired_samples,
    parse_bench_request,
    timing_summary,
)
from edgekit_agent.protocol import load_schema
from edgekit_agent.settings import AgentSettings

from edgekit.errors import BenchInputError
from edgekit.fleet.benching import check_candidates
from edgekit.fleet.timing import decode_samples, pick_devices, relative_to, summarize
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


def test_per_round_times_keep_only_the_rounds_every_model_finished() -> None:
    # a deadline inside round 3: the running model and candidate a ran in it, b did not
    cut = paired_samples({"running": [1.0, 1.1, 1.2, 1.3], "a": [0.5, 0.6, 0.7, 0.8], "b": [2.0, 2.1, 2.2]}, 50)
    assert cut == {"running": [1.0, 1.1, 1.2], "a": [0.5, 0.6, 0.7], "b": [2.0, 2.1, 2.2]}
    assert paired_samples({"running": [1.23456789] * 10}, 4) == {"running": [1.2346] * 4}
    assert len(paired_samples({"running": [1.0] * 5000}, 10_000)["running"]) == MAX_SAMPLES
    assert paired_samples({}, 5) == {}


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


def _rounds(base: float, factor: float, n: int, wobble: float = 0.0) -> list[float]:
    """``n`` per-round times: a drifting reference (heat, load) times ``factor``, with a per-round
    ratio that wobbles by ``wobble`` (alternately over and under)."""
    return [round(base * (1 + 0.3 * math.sin(i)) * (factor + (wobble if i % 2 else -wobble) * (i % 5) / 4), 4)
            for i in range(n)]


def _with_samples(answer: dict[str, Any], samples: dict[str, list[float]], running: list[float] | None = None
                  ) -> dict[str, Any]:
    for e in answer["candidates"]:
        if e["image"] in samples:
            e["samples_ms"] = samples[e["image"]]
    if running is not None:
        answer["running"]["samples_ms"] = running
    return answer


def _sign_test(ratios: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """The test's own reading of the sign-test interval: the largest k with P(Bin(n, 1/2) < k) <=
    (1 - confidence) / 2, then the k-th smallest and k-th largest ratio, and the median."""
    r, n = sorted(ratios), len(ratios)
    k = max(j for j in range(n // 2 + 1) if sum(math.comb(n, i) for i in range(j)) / 2 ** n <= (1 - confidence) / 2)
    return statistics.median(r), r[k - 1], r[n - k]


def test_device_rounds_pair_within_each_device_and_pool_over_the_class() -> None:
    fp32 = _img(9)
    ref1, ref2 = _rounds(2.0, 1.0, 12), _rounds(4.0, 1.0, 9)
    c1, c2 = _rounds(2.0, 0.6, 12, 0.05), _rounds(4.0, 0.7, 9, 0.05)
    answers = {"r1": _with_samples(_done("linux/arm64", 5.0, {fp32: 2.0, _img(1): 1.2}), {fp32: ref1, _img(1): c1}),
               "r2": _with_samples(_done("linux/arm64", 9.0, {fp32: 4.0, _img(1): 2.8}), {fp32: ref2, _img(1): c2})}
    fig = relative_to(answers, fp32)[_img(1)]
    ratios = [c / r for r, c in zip(ref1, c1, strict=True)] + [c / r for r, c in zip(ref2, c2, strict=True)]
    median, low, high = _sign_test(ratios)
    assert fig.speed is not None and fig.speed.rounds == 21 and fig.paired_devices == ["r1", "r2"]
    assert (fig.speed.ratio, fig.speed.low, fig.speed.high) == pytest.approx((median, low, high), abs=1e-4)
    assert fig.faster() and high < 1.0
    d = fig.to_dict()["speed"]
    assert d["test"].startswith("sign test") and d["rounds"] == 21 and d["ci_high"] == pytest.approx(high, abs=1e-4)


def test_the_running_model_is_the_reference_of_a_class_figure() -> None:
    statuses = {"a1": _status("linux/amd64"), "a2": _status("linux/amd64")}
    asked = [d for ds in pick_devices(statuses, "det", 2).values() for d in ds]
    run1, run2 = _rounds(3.0, 1.0, 10), _rounds(5.0, 1.0, 10)
    c1, c2 = _rounds(3.0, 1.1, 10, 0.2), _rounds(5.0, 0.9, 10, 0.2)
    answers = {"a1": _with_samples(_done("linux/amd64", 3.0, {_img(1): 3.3}), {_img(1): c1}, run1),
               "a2": _with_samples(_done("linux/amd64", 5.0, {_img(1): 4.5}), {_img(1): c2}, run2)}
    fig = summarize(asked, answers, [_img(1)]).figure("linux/amd64", _img(1))
    ratios = [c / r for r, c in zip(run1 + run2, c1 + c2, strict=True)]
    median, low, high = _sign_test(ratios)
    assert fig is not None and fig.speed is not None and fig.speed.rounds == 20
    assert (fig.speed.low, fig.speed.high) == pytest.approx((low, high), abs=1e-4) and low < 1.0 < high
    assert fig.speed.ratio == pytest.approx(median, abs=1e-4)
    assert fig.to_dict()["speed"]["ci_low"] == pytest.approx(low, abs=1e-4)


@pytest.mark.parametrize("hostile", [
    [1.0] * 1001, [1.0, float("nan"), 1.0], [1.0, -2.0], [1.0, 0.0], ["1.0", "2.0"], [[1.0], [2.0]],
    [1.0, True], [1.0, float("inf")], [], "1,2,3", {"0": 1.0}, None, 7,
])
def test_hostile_per_round_times_are_ignored_and_the_medians_still_count(hostile: Any) -> None:
    assert decode_samples(hostile) is None
    fp32 = _img(9)
    answers = {"r1": _with_samples(_done("linux/arm64", 5.0, {fp32: 2.0, _img(1): 1.0}),
                                   {fp32: _rounds(2.0, 1.0, 10), _img(1): hostile}, hostile)}
    fig = relative_to(answers, fp32)[_img(1)]
    assert fig.ratio == pytest.approx(0.5) and fig.speed is None and not fig.faster()
    assert "interval unknown" in fig.describe_speed() and fig.to_dict()["speed"]["ci_high"] is None
    asked = [d for ds in pick_devices({"r1": _status("linux/arm64")}, "det", 1).values() for d in ds]
    cls = summarize(asked, answers, [fp32, _img(1)]).figure("linux/arm64", _img(1))
    assert cls is not None and cls.ratio == pytest.approx(0.2) and cls.speed is None


def test_rounds_of_unequal_length_do_not_pair() -> None:
    fp32 = _img(9)
    answers = {"r1": _with_samples(_done("linux/arm64", 5.0, {fp32: 2.0, _img(1): 1.0}),
                                   {fp32: _rounds(2.0, 1.0, 10), _img(1): _rounds(2.0, 0.5, 9)})}
    assert relative_to(answers, fp32)[_img(1)].speed is None


def _cand(recipe: Recipe, host_ratio: float | None) -> CandidateResult:
    return CandidateResult(recipe, verdict="in budget", latency_ratio=host_ratio, path=Path("/x/c.onnx"))


def test_quantize_takes_the_fastest_shown_faster_on_the_devices_not_on_the_host() -> None:
    a = _cand(Recipe(method="static", calibration="minmax"), 0.6)
    b = _cand(Recipe(method="static", calibration="entropy"), 0.9)
    c = _cand(Recipe(method="dynamic"), None)
    images = {a.recipe.name: _img(1), b.recipe.name: _img(2), c.recipe.name: _img(3)}
    fp32 = _rounds(2.0, 1.0, 20)
    samples = {_img(9): fp32, _img(1): _rounds(2.0, 1.1, 20, 0.02), _img(2): _rounds(2.0, 0.6, 20, 0.02),
               _img(3): _rounds(2.0, 0.8, 20, 0.02)}
    answers = {"r1": _with_samples(_done("linux/arm64", 5.0, {_img(9): 2.0, _img(1): 2.2, _img(2): 1.2,
                                                              _img(3): 1.6}), samples)}
    winner, reason = choose_by_devices([a, b, c], relative_to(answers, _img(9)), images)
    assert winner is b and "shown faster than FP32" in reason and "sign test, 20 paired rounds" in reason
    assert "0.60x (95% CI" in reason

    # slower, or not shown faster (the interval straddles 1.0): FP32 is kept, the reason says why
    slow = {"r1": _with_samples(_done("linux/arm64", 5.0, {_img(9): 2.0, _img(1): 2.2, _img(2): 1.9}),
                                {_img(9): fp32, _img(1): _rounds(2.0, 1.1, 20, 0.02),
                                 _img(2): _rounds(2.0, 0.97, 20, 0.2)})}
    figures = relative_to(slow, _img(9))
    speed = figures[_img(2)].speed
    assert speed is not None and speed.low is not None and speed.low < 1.0 <= speed.high  # type: ignore[operator]
    winner, reason = choose_by_devices([a, b], figures, images)
    assert winner is None and "no candidate is shown faster" in reason and "20 paired rounds" in reason
    assert f"{speed.low:.2f}-{speed.high:.2f}x" in reason and "FP32 kept" in reason

    # an older agent: medians only; however low, nothing is shown faster
    old = {"r1": _done("linux/arm64", 5.0, {_img(9): 2.0, _img(1): 1.0})}
    winner, reason = choose_by_devices([a], relative_to(old, _img(9)), images)
    assert winner is None and "can be shown faster" in reason and "interval unknown" in reason and "0.50x" in reason


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
    # per-round times, paired by round: as many as timed rounds, for the running model and the candidate
    assert len(answer["running"]["samples_ms"]) == len(cand["samples_ms"]) == 8
    assert all(x > 0 for x in answer["running"]["samples_ms"] + cand["samples_ms"])
    assert decode_samples(cand["samples_ms"]) is not None
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
