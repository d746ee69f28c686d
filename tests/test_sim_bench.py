"""Candidates timed on the devices, on the rehearsal fleet: the simulator's devices run the real
agent core (real onnxruntime), answer bench requests over the real broker and fetch the
candidates from the real registry, verified with the release key like a model they would serve."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from edgekit_agent.oci.reference import parse_reference
from edgekit_agent.oci.registry import RegistryOptions
from edgekit_agent.protocol import load_schema

from edgekit.fleet.benching import bench_group
from edgekit.fleet.settings import load_fleet_settings
from edgekit.image.attestations import quantization_predicate
from edgekit.image.building import PackageSettings, package, summarize_report
from edgekit.image.pushing import push_layout
from edgekit.image.signing import load_private_key, sign_image, write_keypair
from edgekit.kube import names
from edgekit.rehearsal.nodes import FleetSpec
from tests.fixtures.rollout import FIXED_CREATED, RELEASE_PASSWORD, Fleet, ReleaseKey, RolloutEnv
from tests.test_device_timing import _sign_test
from tests.test_images_platforms import _quantize

pytestmark = [pytest.mark.kube, pytest.mark.mqtt, pytest.mark.registry, pytest.mark.slow]
INSECURE = RegistryOptions(insecure=True)


def _push(env: RolloutEnv, layout: Path, name: str, tag: str, key: Any = None) -> str:
    pushed = push_layout(layout, parse_reference(f"{env.registry.host}/models/{name}:{tag}"), options=INSECURE)
    image = f"{env.registry.host}/models/{name}@{pushed.digest}"
    if key is not None:
        sign_image(parse_reference(image), key, options=INSECURE)
    return image


def _replay_signature(env: RolloutEnv, repo: str, signed: str, unsigned: str) -> None:
    """Tamper: put the release-key signature of ``signed`` where the signature of ``unsigned`` goes."""
    def tag(image: str) -> str:
        return image.rsplit("@", 1)[1].replace(":", "-") + ".sig"

    base = f"http://{env.registry.host}/v2/{repo}/manifests/"
    accept = "application/vnd.oci.image.manifest.v1+json"
    with urllib.request.urlopen(urllib.request.Request(base + tag(signed), headers={"Accept": accept})) as got:
        manifest, media_type = got.read(), got.headers["Content-Type"]
    put = urllib.request.Request(base + tag(unsigned), data=manifest, method="PUT",
                                 headers={"Content-Type": media_type})
    with urllib.request.urlopen(put) as answer:
        assert answer.status == 201


@pytest.fixture(scope="module")
def candidates(rollout_env: RolloutEnv, release_key: ReleaseKey, digits_model: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """int8: a build per class (signed); fp32: the served network again (signed); unsigned; replayed:
    unsigned but given fp32's signature (tampered); other_key: signed by a key the devices do not trust."""
    env, tmp = rollout_env, tmp_path_factory.mktemp("bench-candidates")
    release = load_private_key(release_key.private, RELEASE_PASSWORD)
    builds = {"linux/amd64": _quantize(tmp / "d.linux-amd64.onnx", activation="u8", reduce_range=True,
                                       ratio=0.7, score=0.995),
              "linux/arm64": _quantize(tmp / "d.linux-arm64.onnx", activation="s8", reduce_range=False,
                                       ratio=1.3, score=0.99)}
    out = {}
    built = package(None, PackageSettings(name="digits", version="8.0-int8", created=FIXED_CREATED,
                                          platform_models=builds), tmp / "int8")
    out["int8"] = _push(env, built.path, "digits-bench", "int8", release)
    package(digits_model, PackageSettings(name="digits", version="8.0-fp32", created=FIXED_CREATED), tmp / "fp32")
    out["fp32"] = _push(env, tmp / "fp32", "digits-bench", "fp32", release)
    package(digits_model, PackageSettings(name="digits", version="8.0-unsigned", created=FIXED_CREATED),
            tmp / "unsigned")
    out["unsigned"] = _push(env, tmp / "unsigned", "digits-bench", "unsigned")
    package(digits_model, PackageSettings(name="digits", version="8.0-replayed", created=FIXED_CREATED),
            tmp / "replayed")
    out["replayed"] = _push(env, tmp / "replayed", "digits-bench", "replayed")
    _replay_signature(env, "models/digits-bench", out["fp32"], out["replayed"])
    other, _ = write_keypair(tmp / "other", b"other")
    package(digits_model, PackageSettings(name="digits", version="8.0-other", created=FIXED_CREATED), tmp / "other")
    out["other_key"] = _push(env, tmp / "other", "digits-bench", "other", load_private_key(other, b"other"))
    return out


@pytest.fixture(scope="module")
def mixed(rollout_env: RolloutEnv) -> Any:
    """Two amd64 and two arm64 devices serving digits 1.0."""
    env = rollout_env
    group, app = env.kube.unique("benchmix"), env.kube.unique("bench")
    created = env.kube.add_nodes(FleetSpec(pools={group: 4}, arch={"amd64": 1.0, "arm64": 1.0}))
    fleet = Fleet(env, group, app, sorted(created))
    try:
        nodes = env.client.list("/api/v1/nodes", label_selector=f"{names.GROUP_LABEL}={group}")
        assert sorted({n["metadata"]["labels"][names.ARCH_LABEL] for n in nodes}) == ["amd64", "arm64"]
        fleet.deploy(env.images["1.0"])
        yield fleet
    finally:
        fleet.cleanup()


def _json(result: Any) -> dict[str, Any]:
    assert result.stdout.strip(), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_two_candidates_are_timed_on_each_device_class(rollout_env: RolloutEnv, mixed: Fleet,
                                                        candidates: dict[str, str]) -> None:
    env = rollout_env
    result = env.cli("bench", "--group", mixed.group, "--app", mixed.app, "--devices", "1", "--runs", "15",
                     "--timeout", "90", "--output", "json", candidates["int8"], candidates["fp32"])
    assert result.returncode == 0, result.stderr
    data = _json(result)
    assert sorted(d["platform"] for d in data["asked"]) == ["linux/amd64", "linux/arm64"]
    figures = {(f["platform"], f["image"]): f for f in data["figures"]}
    for plat in ("linux/amd64", "linux/arm64"):
        for image in (candidates["int8"], candidates["fp32"]):
            f = figures[(plat, image)]
            assert f["n"] == 15 and f["median_ms"] > 0 and f["p90_ms"] >= f["median_ms"]
            assert len(f["devices"]) == 1
        # the same FP32 network as the one served, timed in the same rounds: about as fast
        assert 0.4 < figures[(plat, candidates["fp32"])]["ratio"] < 2.5
    assert data["without_devices"] == [] and data["refusals"] == []
    # each device sent its per-round times; the interval is the sign test over the rounds paired
    # within each device, computed here from the answers themselves
    for answer in data["answers"].values():
        running = answer["running"]["samples_ms"]
        assert len(running) == 15
        for entry in answer["candidates"]:
            ratios = [c / r for r, c in zip(running, entry["samples_ms"], strict=True)]
            speed = figures[(answer["platform"], entry["image"])]["speed"]
            median, low, high = _sign_test(ratios)
            assert speed["rounds"] == 15 and speed["devices"] == [answer["device"]]
            assert (speed["ratio"], speed["ci_low"], speed["ci_high"]) == pytest.approx((median, low, high), abs=1e-3)

    # a device class the result must cover but the group lacks is named, the others are timed
    table = env.cli("bench", "--group", mixed.group, "--app", mixed.app, "--devices", "1", "--runs", "5",
                    "--timeout", "90", "--platform", "linux/amd64,linux/arm64,linux/riscv64", candidates["fp32"])
    assert table.returncode == 0, table.stderr
    assert "linux/amd64" in table.stdout and "linux/arm64" in table.stdout and "ratio" in table.stdout
    assert "95% CI" in table.stdout and "rounds" in table.stdout
    assert "no device of linux/riscv64" in table.stderr and "linux/amd64 in group" not in table.stderr


def test_the_agents_refuse_unsigned_and_foreign_signed_candidates(rollout_env: RolloutEnv, mixed: Fleet,
                                                                  candidates: dict[str, str]) -> None:
    env = rollout_env
    settings = load_fleet_settings(None, overrides={"brokers": (env.broker.url,)})
    bench = bench_group(settings, group=mixed.group, app=mixed.app, per_class=2, runs=5, timeout=90,
                        candidates=[candidates["unsigned"], candidates["other_key"], candidates["replayed"],
                                    candidates["fp32"]])
    assert len(bench.asked) == 4
    schema = load_schema("bench_result")
    for answer in bench.answers.values():
        jsonschema.validate(answer, schema)
        assert answer["state"] == "done"
        status = {c["image"]: c for c in answer["candidates"]}
        assert status[candidates["unsigned"]]["status"] == "refused"
        assert status[candidates["unsigned"]]["error"] == "SignatureMissingError"
        assert status[candidates["other_key"]]["status"] == "refused"
        assert status[candidates["other_key"]]["error"] == "SignatureInvalidError"
        assert "n" not in status[candidates["other_key"]]  # never timed
        assert status[candidates["replayed"]]["status"] == "refused"
        assert status[candidates["replayed"]]["error"] == "SignatureInvalidError"
        assert status[candidates["fp32"]]["status"] == "ok"
    # the refused ones were never loaded beside the served model: every device still serves 1.0
    assert all(env.sim.slots[n].device.core.model.meta.version == "1.0" for n in mixed.nodes)

    result = env.cli("bench", "--group", mixed.group, "--app", mixed.app, "--devices", "1", "--runs", "5",
                     "--timeout", "90", candidates["unsigned"])
    assert result.returncode == 98, result.stderr
    assert "SignatureMissingError" in result.stderr and "Traceback" not in result.stderr


def test_bad_input_and_no_device_have_their_own_exit_codes(rollout_env: RolloutEnv, mixed: Fleet,
                                                           candidates: dict[str, str]) -> None:
    env = rollout_env
    unpinned = candidates["fp32"].split("@")[0] + ":fp32"
    result = env.cli("bench", "--group", mixed.group, "--app", mixed.app, unpinned)
    assert result.returncode == 99 and "not pinned by digest" in result.stderr
    result = env.cli("bench", "--group", mixed.group, "--app", "no-such-app", "--timeout", "10", candidates["fp32"])
    assert result.returncode == 96 and "no device" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_quantize_ranks_by_the_devices_and_flags_a_class_without_them(rollout_env: RolloutEnv,
                                                                      release_key: ReleaseKey, digits_dir: Path,
                                                                      tmp_path: Path) -> None:
    """An arm64-only group: arm64's candidates are ranked by its devices; amd64 has no device there,
    so its report says its latency is the build host's."""
    env = rollout_env
    group, app = env.kube.unique("benchArm").lower(), env.kube.unique("qz")
    created = env.kube.add_nodes(FleetSpec(pools={group: 2}, arch={"arm64": 1.0}))
    fleet = Fleet(env, group, app, sorted(created))
    try:
        fleet.deploy(env.images["1.0"])
        out = tmp_path / "digits.onnx"
        result = env.cli(
            "quantize", str(digits_dir / "digits.onnx"), "-o", str(out),
            "--calibration", str(digits_dir / "calib.npz"), "--eval", str(digits_dir / "eval.npz"),
            "--labels", str(digits_dir / "eval_labels.txt"), "--max-drop", "1%", "--method", "static",
            "--budget-time", "20s", "--platform", "linux/amd64,linux/arm64",
            "--timing-group", group, "--app", app, "--timing-repo", f"{env.registry.host}/models/digits-timing",
            "--sign-key", str(release_key.private), "--timing-runs", "10", "--timing-timeout", "120",
            "--output", "json", env=env.env(EDGEKIT_KEY_PASSWORD=RELEASE_PASSWORD.decode()))
        assert result.returncode == 0, result.stderr
        reports = json.loads(result.stdout)
        arm, amd = reports["linux/arm64"], reports["linux/amd64"]

        assert arm["latency_source"]["source"] == "devices"
        assert sorted(arm["latency_source"]["devices"]) == sorted(fleet.nodes)
        timed = [c for c in arm["candidates"] if c["latency_source"] == "devices"]
        assert timed, arm["candidates"]
        for c in timed:
            d = c["device_latency"]
            assert d["platform"] == "linux/arm64" and d["n"] == 10 * len(d["devices"]) and d["ratio"] > 0
            # paired against the FP32 build round by round on each device, pooled over both
            assert d["speed"]["rounds"] == 10 * len(d["devices"]) and d["speed"]["test"].startswith("sign test")
        # the build is the timed candidate fastest on the devices among those shown faster than FP32
        shown = [c for c in timed if c["device_latency"]["speed"]["ci_high"] is not None
                 and c["device_latency"]["speed"]["ci_high"] < 1]
        if shown:
            best = min(shown, key=lambda c: c["device_latency"]["speed"]["ratio"])
            assert arm["chosen"] == best["name"] and "device(s) of the group" in arm["reason"]
            assert "sign test" in arm["reason"]
            # package carries the devices' figure into edgekit.json, and the attestation credits arm64 with it
            meta = {"quantization": summarize_report(arm)}
            pred = quantization_predicate(meta, platforms=("linux/amd64", "linux/arm64"),
                                          host_platform="linux/amd64", tools={})
            att = pred["latency"]["linux/arm64"]
            assert att["measured_on"] == "devices" and att["group"] == group and att["devices"] == 2
            assert att["ratio"] == best["device_latency"]["speed"]["ratio"] and att["rounds"] == 20
        else:
            assert arm["chosen"] == "fp32" and "no candidate is shown faster" in arm["reason"]
            assert "paired rounds" in arm["reason"]
        on_disk = json.loads(out.with_name("digits.linux-arm64.onnx.report.json").read_text())
        assert on_disk["chosen"] == arm["chosen"] and on_disk["latency_source"]["source"] == "devices"

        assert amd["latency_source"]["source"] == "build host"
        assert "no device of linux/amd64" in amd["latency_source"]["why"]
        assert all(c["latency_source"] != "devices" for c in amd["candidates"])
        # nothing was pushed for the class without devices
        with urllib.request.urlopen(f"http://{env.registry.host}/v2/models/digits-timing/tags/list") as answer:
            tags = [t for t in json.load(answer)["tags"] if not t.endswith(".sig")]  # cosign's signature tags
        assert tags and all(t.startswith("timing-linux-arm64-") for t in tags), tags
    finally:
        fleet.cleanup()
