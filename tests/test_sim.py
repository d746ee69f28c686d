"""The fleet simulator's parts: fault knobs, what runs where, and one virtual device running the real
agent core on a real onnxruntime session (no broker: the health payload is read directly). The
simulator following Kubernetes is exercised by tests/test_rollout_e2e.py; 300 devices at once by
``test_three_hundred_devices`` below."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from edgekit_agent.loading import LoadedModel, fetch_model, load_model
from edgekit_agent.probing import run_probe
from edgekit_agent.protocol import load_schema

from edgekit.errors import ConfigError, PublicKeyRequiredError, SignatureInvalidError
from edgekit.rehearsal.sim.devices import Placement, VirtualDevice
from edgekit.rehearsal.sim.faults import Fault, FaultBook, parse_fault
from edgekit.rehearsal.sim.fleet import placements_from_pods
from edgekit.rehearsal.sim.models import ModelStore
from tests.fixtures.agent import SignedImage


def test_parse_faults() -> None:
    key, fault = parse_fault("3f2a9c1b7d0e:error_rate=20%,latency_ms=30,probe_fail,silent,offline=0.1")
    assert key == "3f2a9c1b7d0e"
    assert fault == Fault(error_rate=0.2, latency_ms=30, probe_fail=True, silent=True, offline=0.1)
    key, fault = parse_fault("sha256:" + "a" * 64 + ":crash_loop,crash_every=2")
    assert key == "sha256:" + "a" * 64 and fault.crash_loop and fault.crash_every == 2
    assert parse_fault("*:error-rate=0.5")[1].error_rate == 0.5
    _, fault = parse_fault("rev1:error_rate=1%,noisy,latency_factor=1.5,rate=30")
    assert fault == Fault(error_rate=0.01, noisy=True, latency_factor=1.5, rate=30)
    for bad in ("nokey", ":error_rate=1", "x:error_rate=2", "x:bogus=1", "x:latency_ms=fast"):
        with pytest.raises(ConfigError) as info:
            parse_fault(bad)
        assert info.value.one_line().startswith("--fault")


def test_fault_book_precedence_and_offline_share() -> None:
    book = FaultBook.parse(["*:latency_ms=1", "1.0:error_rate=0.1", "rev1:error_rate=0.2",
                            "sha256:" + "b" * 64 + ":error_rate=0.3"])
    assert book.for_model(revision="rev1", digest="sha256:" + "b" * 64, version="1.0").error_rate == 0.3
    assert book.for_model(revision="rev1", version="1.0").error_rate == 0.2
    assert book.for_model(revision="other", version="1.0").error_rate == 0.1
    assert book.for_model(revision="other").latency_ms == 1
    book.set("rev1")
    assert book.for_model(revision="rev1", version="1.0").error_rate == 0.1
    share = Fault(offline=0.1)
    picked = [n for n in (f"edge-{i}" for i in range(2000)) if share.offline_for(n, "rev")]
    assert 140 < len(picked) < 260                       # about 10%, and always the same ones
    assert picked == [n for n in (f"edge-{i}" for i in range(2000)) if share.offline_for(n, "rev")]


def _pod(node: str, rev: str, *, created: str = "2026-01-01T00:00:00Z", deleting: bool = False,
         app: str = "det") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{app}-{rev}-{node}", "creationTimestamp": created,
                            "labels": {"edgekit.io/app": app, "edgekit.io/revision": rev},
                            "annotations": {"edgekit.io/image": f"reg/m@sha256:{rev * 8}"}}
    if deleting:
        meta["deletionTimestamp"] = created
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [
        {"name": "agent", "env": [{"name": "EDGEKIT_AGENT_GROUP", "value": "cams"}]}]}, "status": {"phase": "Running"}}


def test_placements_follow_the_newest_live_pod() -> None:
    pods = [_pod("n1", "aaaaaaaa"), _pod("n1", "bbbbbbbb", created="2026-01-01T00:00:05Z"),
            _pod("n2", "aaaaaaaa"), _pod("n2", "bbbbbbbb", created="2026-01-01T00:00:05Z", deleting=True),
            _pod("n3", "aaaaaaaa", app="other"), {"metadata": {"name": "unscheduled"}, "spec": {}}]
    placed = placements_from_pods(pods, app="det")
    assert {n: p.revision for n, p in placed.items()} == {"n1": "bbbbbbbb", "n2": "aaaaaaaa"}
    assert placed["n1"].group == "cams" and placed["n1"].image.endswith("bbbbbbbb" * 8)
    assert set(placements_from_pods(pods)) == {"n1", "n2", "n3"}


@pytest.fixture(scope="module")
def digits_loaded(digits_signed_layout: SignedImage, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The simulator's devices run signed images, verified as the agent verifies them."""
    folder = tmp_path_factory.mktemp("sim-model") / "model"
    key = str(digits_signed_layout.public_key)
    fetch_model(f"oci:{digits_signed_layout.layout}", folder, public_key=key)
    return load_model(folder, public_key=key, intra_op_threads=1)


def _device(loaded: LoadedModel, fault: Fault, rate: float = 50.0) -> VirtualDevice:
    placement = Placement("edge-1", "det", "rev", f"reg/digits@{loaded.digest}", "cams", "pod")
    device = VirtualDevice(placement, loaded, fault, broker_url=None, interval=1.0, topic_root="edgekit/v1",
                           rate=rate, rng=random.Random(1))
    device.start()
    return device


def _health(device: VirtualDevice, n: int) -> dict[str, Any]:
    for _ in range(n):
        device.infer()
    payload = device.core.report_health()
    jsonschema.validate(payload, load_schema("health"))
    return payload


def test_device_runs_the_real_model(digits_loaded: LoadedModel) -> None:
    device = _device(digits_loaded, Fault())
    assert device.core.ready and device.core.probe_ok
    _, birth = device.core.status_message("online")
    status = json.loads(birth)
    jsonschema.validate(status, load_schema("status"))
    assert status["signature"] == "verified" and status["ready"] is True
    payload = _health(device, 40)
    assert payload["inferences"] == 40 and payload["errors"] == 0
    assert payload["model"]["digest"] == digits_loaded.digest
    assert payload["latency_ms"]["p95"] > 0


def test_device_error_rate_is_real_onnxruntime_errors(digits_loaded: LoadedModel) -> None:
    device = _device(digits_loaded, Fault(error_rate=0.2))
    payload = _health(device, 100)
    assert payload["inferences"] == 100 and payload["errors"] == 20
    assert device.core.stats.total_errors == 20


def test_device_extra_latency(digits_loaded: LoadedModel) -> None:
    fast = _health(_device(digits_loaded, Fault()), 30)["latency_ms"]["p50"]
    slow = _health(_device(digits_loaded, Fault(latency_ms=25)), 30)["latency_ms"]["p50"]
    assert slow >= 25 > fast


def test_noisy_errors_are_independent_draws(digits_loaded: LoadedModel) -> None:
    steady = _device(digits_loaded, Fault(error_rate=0.2))
    noisy = _device(digits_loaded, Fault(error_rate=0.2, noisy=True))
    per_window: dict[str, list[int]] = {"steady": [], "noisy": []}
    for _ in range(10):
        for name, device in (("steady", steady), ("noisy", noisy)):
            before = device.errors
            for _ in range(100):
                device.infer()
            per_window[name].append(device.errors - before)
    assert set(per_window["steady"]) == {20}               # evenly spread: every window shows the rate
    assert len(set(per_window["noisy"])) > 3                # drawn: windows scatter around it
    assert 140 <= sum(per_window["noisy"]) <= 260           # ... at the rate (binomial, > 4 sd)
    assert _health(noisy, 0)["errors"] == noisy.errors     # real onnxruntime errors, reported by the core


def test_latency_factor_and_traffic_per_model(digits_loaded: LoadedModel) -> None:
    fast = _health(_device(digits_loaded, Fault()), 30)["latency_ms"]["p50"]
    slow = _health(_device(digits_loaded, Fault(latency_factor=200)), 30)["latency_ms"]["p50"]
    assert slow > 20 * fast
    device = _device(digits_loaded, Fault(rate=40), rate=1.0)
    t = device.started
    while t < device.started + 2.0:                        # two seconds of scheduler time
        t = max(device.step(t), t + 0.001)
    assert 60 <= device.inferences <= 100                   # 40/s, not the simulator's 1/s
    device.fault = Fault()                                  # the fault book changed: back to 1/s
    assert device.rate == 1.0


def test_failing_probe_makes_the_device_not_ready(digits_loaded: LoadedModel, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    variant = store.with_failing_probe(digits_loaded)
    assert variant.session is digits_loaded.session            # the same shared session
    assert not run_probe(variant.probe, variant.session).ok
    device = _device(variant, Fault(probe_fail=True))
    assert not device.core.ready and device.core.probe_ok is False
    payload = _health(device, 10)
    assert payload["probe"]["ok"] is False and payload["inferences"] == 0
    assert device.core.events_sent.get("probe_failed") == 1
    store.close()


@pytest.mark.registry
def test_model_store_verifies_with_the_key_and_refuses_unsigned_by_default(digits_signed_layout: SignedImage,
                                                                         registry: Any, tmp_path: Path) -> None:
    from edgekit_agent.oci.reference import parse_reference
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.image.pushing import push_layout

    options = RegistryOptions(insecure=True)
    repo = f"{registry.host}/sim-tests/digits"
    push_layout(digits_signed_layout.layout, parse_reference(f"{repo}:1.0.0"), options=options)
    image = f"{repo}@{digits_signed_layout.digest}"
    keyed = ModelStore(tmp_path / "keyed", public_key=str(digits_signed_layout.public_key), registry_options=options)
    unkeyed = ModelStore(tmp_path / "unkeyed", registry_options=options)
    other = ModelStore(tmp_path / "other", public_key=str(digits_signed_layout.other_public_key),
                       registry_options=options)
    unsigned = ModelStore(tmp_path / "unsigned", allow_unsigned=True, registry_options=options)
    try:
        loaded = keyed.get(image).result(timeout=60)
        assert loaded.provenance is not None and loaded.provenance.key_sha256
        with pytest.raises(PublicKeyRequiredError):
            unkeyed.get(image).result(timeout=60)
        with pytest.raises(SignatureInvalidError):
            other.get(image).result(timeout=60)
        assert not (tmp_path / "unkeyed").exists() or not any((tmp_path / "unkeyed").iterdir())
        run_unsigned = unsigned.get(image).result(timeout=60)
        device = _device(run_unsigned, Fault())
        assert device.core.signature == "unverified"
    finally:
        for store in (keyed, unkeyed, other, unsigned):
            store.close()


def test_silent_device_never_reports(digits_loaded: LoadedModel) -> None:
    device = _device(digits_loaded, Fault(silent=True), rate=10)
    reported = device.core._seq["health"]
    now = time.monotonic()
    for i in range(30):
        device.step(now + i * 0.5)
    assert device.core._seq["health"] == reported and device.inferences > 0


@pytest.mark.slow
@pytest.mark.kube
@pytest.mark.mqtt
@pytest.mark.registry
def test_three_hundred_devices(rollout_env: Any, new_fleet: Any) -> None:
    """300 KWOK nodes with an edgekit pod -> 300 virtual devices, each with its own MQTT connection,
    all reporting the model Kubernetes put on their node. CPU use is printed, not asserted."""
    import resource

    from edgekit.fleet.settings import FleetSettings
    from edgekit.fleet.watching import FleetWatcher

    env = rollout_env
    fleet = new_fleet(300)
    image = env.images["1.0"]
    digest = image.rsplit("@", 1)[1]
    with FleetWatcher(FleetSettings(brokers=(env.broker.url,), interval=1.0)) as watcher:
        fleet.deploy(image, timeout=180)
        assert watcher.wait_for(lambda view: view.window(fleet.nodes, time.time() - 3, digest).on_digest == 300,
                                timeout=60)
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(10)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (time.monotonic() - wall)
        stats = watcher.view().window(fleet.nodes, time.time() - 5, digest)
        assert stats.reported == 300 and not stats.silent and stats.error_rate == 0
        # every device verified the image with the key (their birth statuses say so)
        rows = [r for r in watcher.view().devices() if r.device in set(fleet.nodes)]
        assert len(rows) == 300 and {r.signature for r in rows} == {"verified"}
        print(f"\n300 virtual devices: {cpu:.2f} CPU cores for the simulator, the fleet watcher and the "
              f"test process together; p95 {stats.p95_ms} ms")


def test_sim_requires_a_key_or_allow_unsigned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Refused before the cluster is contacted (the kubeconfig does not even exist)."""
    from click.testing import CliRunner

    from edgekit.cli import cli

    monkeypatch.delenv("EDGEKIT_ROLLOUT_PUBLIC_KEY", raising=False)
    result = CliRunner().invoke(cli, ["sim", "--kubeconfig", str(tmp_path / "none"), "--duration", "0"])
    assert result.exit_code == 85 and "edgekit sim requires a public key" in result.output, result.output
