"""The agent and a real registry: fetching a pinned, signed image at start, tying an image-volume
folder to its signed digest, and refusing images signed by someone else or not at all."""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from edgekit_agent.core import AgentCore
from edgekit_agent.errors import ModelIntegrityError, ProvenanceError, SignatureInvalidError
from edgekit_agent.loading import load_model
from edgekit_agent.oci import parse_reference
from edgekit_agent.provenance import CHAIN_DIR, read_chain
from edgekit_agent.settings import load_settings

from edgekit.rehearsal.faultproxy import Fault, FaultProxy
from edgekit.rehearsal.mosquitto import MosquittoBroker
from edgekit.rehearsal.registry import DockerRegistry
from tests.fixtures.agent import AgentProcess, SignedImage, TelemetryChecker, build_model_folder, run_cli
from tests.fixtures.mqtt import MqttRecorder

pytestmark = [pytest.mark.registry, pytest.mark.mqtt]


@dataclass(frozen=True)
class Pushed:
    signed: str  # repo@digest, signed with SignedImage.public_key
    unsigned: str
    image: SignedImage


@pytest.fixture(scope="module")
def pushed(registry: DockerRegistry, digits_signed_layout: SignedImage) -> Pushed:
    from edgekit.image.pushing import push_layout

    repo = f"{registry.host}/agent-tests/digits-{uuid.uuid4().hex[:6]}"
    push_layout(digits_signed_layout.layout, parse_reference(f"{repo}:1.0.0"))
    bare = f"{registry.host}/agent-tests/unsigned-{uuid.uuid4().hex[:6]}"
    push_layout(digits_signed_layout.layout, parse_reference(f"{bare}:1.0.0"), include_signatures=False)
    digest = digits_signed_layout.digest
    return Pushed(f"{repo}@{digest}", f"{bare}@{digest}", digits_signed_layout)


def _core(tmp_path: Path, **over: object) -> AgentCore:
    return AgentCore(load_settings(overrides={"device": f"reg-{uuid.uuid4().hex[:6]}", "group": "reg",
                                              "spool_dir": "", **over}))  # "": none (None is "not given")


def test_serve_fetches_the_pinned_signed_image(pushed: Pushed, mqtt_broker: MosquittoBroker,
                                               mqtt_recorder: Callable[..., MqttRecorder],
                                               agent_process: Callable[..., AgentProcess], tmp_path: Path,
                                               telemetry_checker: TelemetryChecker) -> None:
    dev = f"reg-{uuid.uuid4().hex[:6]}"
    rec = mqtt_recorder(mqtt_broker, f"edgekit/v1/reg/{dev}/#")
    agent = agent_process({"device": dev, "group": "reg", "model_dir": str(tmp_path / "model"),
                           "image": pushed.signed, "public_key": str(pushed.image.public_key),
                           "broker_url": mqtt_broker.url, "interval": 0.2}, wait="ready")
    msgs = rec.wait_for(lambda m: any(json.loads(x.payload).get("kind") == "model_loaded" for x in m))
    checked = telemetry_checker.check_all(msgs)
    loaded = next(d for k, d in checked if k == "event")
    assert loaded["model"]["digest"] == pushed.image.digest and loaded["data"]["signature_verified"]
    births = [d for k, d in checked if k == "status" and d["state"] == "online"]
    assert births and {d["signature"] for d in births} == {"verified"}
    kept = read_chain(tmp_path / "model")
    assert kept is not None and kept.digest == pushed.image.digest and kept.signature
    assert agent.terminate() == 0


def test_serve_refuses_an_image_signed_with_another_key(pushed: Pushed, mqtt_broker: MosquittoBroker,
                                                        mqtt_recorder: Callable[..., MqttRecorder],
                                                        agent_process: Callable[..., AgentProcess], tmp_path: Path,
                                                        telemetry_checker: TelemetryChecker) -> None:
    dev = f"reg-{uuid.uuid4().hex[:6]}"
    rec = mqtt_recorder(mqtt_broker, f"edgekit/v1/reg/{dev}/#")
    agent = agent_process({"device": dev, "group": "reg", "model_dir": str(tmp_path / "model"),
                           "image": pushed.signed, "public_key": str(pushed.image.other_public_key),
                           "broker_url": mqtt_broker.url, "interval": 0.2})
    msgs = rec.wait_for(lambda m: any(json.loads(x.payload).get("kind") == "model_rejected" for x in m))
    rejected = next(d for k, d in telemetry_checker.check_all(msgs) if k == "event")
    assert rejected["data"]["error"] == "SignatureInvalidError" and rejected["data"]["exit_code"] == 25
    status, body = agent.get("/v2/health/ready")
    assert status == 503 and "verifies with key" in str(body)
    assert agent.get("/v2/health/live")[0] == 200
    assert not (tmp_path / "model").exists()
    assert agent.terminate() == 0


# --- signed by default --------------------------------------------------------------------------
def test_fetch_without_a_key_is_refused_unless_unsigned_is_allowed(pushed: Pushed, tmp_path: Path) -> None:
    for image in (pushed.unsigned, pushed.signed):
        result = run_cli("fetch", image, "--to", str(tmp_path / "m"))
        assert result.returncode == 85, result.stderr
        assert result.stderr.count("\n") == 1 and "unsigned models are refused" in result.stderr
        assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []
    ok = run_cli("fetch", pushed.unsigned, "--to", str(tmp_path / "flag"), "--allow-unsigned")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signature_verified"] is False
    by_env = run_cli("fetch", pushed.unsigned, "--to", str(tmp_path / "env"), env={"EDGEKIT_AGENT_ALLOW_UNSIGNED": "1"})
    assert by_env.returncode == 0, by_env.stderr
    off = run_cli("fetch", pushed.unsigned, "--to", str(tmp_path / "off"), env={"EDGEKIT_AGENT_ALLOW_UNSIGNED": "no"})
    assert off.returncode == 85, off.stderr
    # a key always wins: an unsigned image stays refused even when unsigned images are allowed
    keyed = run_cli("fetch", pushed.unsigned, "--to", str(tmp_path / "keyed"), "--allow-unsigned",
                    "--public-key", str(pushed.image.public_key))
    assert keyed.returncode == 26, keyed.stderr


def test_fetch_into_a_folder_it_cannot_write_is_one_line(pushed: Pushed, tmp_path: Path) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    # root writes anywhere; /proc refuses even root, as a read-only root filesystem does
    target = readonly / "m" if os.geteuid() != 0 else Path("/proc/edgekit-test-model")
    result = run_cli("fetch", pushed.signed, "--to", str(target), "--public-key", str(pushed.image.public_key))
    assert result.returncode == 87, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(target.parent) in result.stderr or str(target) in result.stderr


def test_serve_without_a_key_refuses_the_image(pushed: Pushed, mqtt_broker: MosquittoBroker,
                                               mqtt_recorder: Callable[..., MqttRecorder],
                                               agent_process: Callable[..., AgentProcess], tmp_path: Path,
                                               telemetry_checker: TelemetryChecker) -> None:
    dev = f"reg-{uuid.uuid4().hex[:6]}"
    rec = mqtt_recorder(mqtt_broker, f"edgekit/v1/reg/{dev}/#")
    agent = agent_process({"device": dev, "group": "reg", "model_dir": str(tmp_path / "model"),
                           "image": pushed.unsigned, "allow_unsigned": False,
                           "broker_url": mqtt_broker.url, "interval": 0.2})
    msgs = rec.wait_for(lambda m: any(json.loads(x.payload).get("kind") == "model_rejected" for x in m))
    rejected = next(d for k, d in telemetry_checker.check_all(msgs) if k == "event")
    assert rejected["data"]["error"] == "PublicKeyRequiredError" and rejected["data"]["exit_code"] == 85
    status, body = agent.get("/v2/health/ready")
    assert status == 503 and "unsigned models are refused" in str(body)
    assert not (tmp_path / "model").exists()  # refused before fetching
    assert agent.terminate() == 0


def test_serve_with_allow_unsigned_says_so_in_its_birth(pushed: Pushed, mqtt_broker: MosquittoBroker,
                                                        mqtt_recorder: Callable[..., MqttRecorder],
                                                        agent_process: Callable[..., AgentProcess], tmp_path: Path,
                                                        telemetry_checker: TelemetryChecker) -> None:
    dev = f"reg-{uuid.uuid4().hex[:6]}"
    rec = mqtt_recorder(mqtt_broker, f"edgekit/v1/reg/{dev}/#")
    agent = agent_process({"device": dev, "group": "reg", "model_dir": str(tmp_path / "model"),
                           "image": pushed.unsigned, "allow_unsigned": True,
                           "broker_url": mqtt_broker.url, "interval": 0.2}, wait="ready")
    msgs = rec.wait_for(lambda m: any(json.loads(x.payload).get("ready") is True for x in m
                                      if x.topic.endswith("/status")))
    checked = telemetry_checker.check_all(msgs)  # every message against the shipped JSON Schemas
    births = [d for k, d in checked if k == "status" and d["state"] == "online"]
    assert births and {d["signature"] for d in births} == {"unverified"}
    loaded = next(d for k, d in checked if k == "event" and d["kind"] == "model_loaded")
    assert loaded["data"]["signature_verified"] is False
    assert agent.terminate() == 0


def test_unsigned_image_with_a_key_is_refused(pushed: Pushed, tmp_path: Path) -> None:
    result = run_cli("fetch", pushed.unsigned, "--to", str(tmp_path / "m"),
                     "--public-key", str(pushed.image.public_key))
    assert result.returncode == 26 and "is not signed" in result.stderr, result.stderr


def _image_volume(pushed: Pushed, tmp_path: Path) -> Path:
    """What an image volume mounts: the model folder, without a fetch record."""
    dest = tmp_path / "fetched"
    key = str(pushed.image.public_key)
    assert run_cli("fetch", pushed.signed, "--to", str(dest), "--public-key", key).returncode == 0
    shutil.rmtree(dest / CHAIN_DIR)
    return dest


def test_image_volume_folder_is_tied_to_its_signed_digest(pushed: Pushed, tmp_path: Path) -> None:
    folder = _image_volume(pushed, tmp_path)
    core = _core(tmp_path, model_dir=str(folder), image=pushed.signed, public_key=str(pushed.image.public_key))
    assert core.load(), core.rejected
    assert core.model_ref is not None and core.model_ref["digest"] == pushed.image.digest
    # without the image setting, a keyed agent cannot know what the folder should be
    core = _core(tmp_path, model_dir=str(folder), public_key=str(pushed.image.public_key))
    assert not core.load() and core.rejected is not None and "no verified signature record" in core.rejected


def test_image_volume_folder_of_another_model_is_refused(pushed: Pushed, tmp_path: Path, conv320_model: Path) -> None:
    other = build_model_folder(conv320_model, tmp_path / "other", name="digits", version="1.0.0")
    core = _core(tmp_path, model_dir=str(other), image=pushed.signed, public_key=str(pushed.image.public_key))
    assert not core.load()
    assert core.rejected is not None and "does not hold the signed image" in core.rejected


def test_image_volume_with_the_wrong_key_is_refused(pushed: Pushed, tmp_path: Path) -> None:
    folder = _image_volume(pushed, tmp_path)
    core = _core(tmp_path, model_dir=str(folder), image=pushed.signed,
                 public_key=str(pushed.image.other_public_key))
    assert not core.load() and core.rejected is not None and "verifies with key" in core.rejected


# --- image volumes keep their chain -------------------------------------------------------------
def _through(proxy: FaultProxy, pushed: Pushed) -> str:
    """``pushed.signed`` reached through the fault proxy, which counts (and can refuse) requests."""
    return f"{proxy.host}/{pushed.signed.split('/', 1)[1]}"


def _down(proxy: FaultProxy) -> None:
    proxy.add_fault(Fault(status=503, times=1_000_000))


def test_image_volume_chain_is_fetched_once_and_kept(pushed: Pushed, tmp_path: Path,
                                                     registry_proxy: FaultProxy) -> None:
    folder, chains = _image_volume(pushed, tmp_path), tmp_path / "chains"
    image, key = _through(registry_proxy, pushed), str(pushed.image.public_key)
    first = load_model(folder, image=image, public_key=key, chain_dir=chains)
    assert first.provenance is not None and first.provenance.key_sha256 and first.digest == pushed.image.digest
    assert registry_proxy.count() > 0
    kept = chains / pushed.image.digest.split(":")[1]
    chain = read_chain(kept)
    assert chain is not None and chain.digest == pushed.image.digest and chain.signature
    assert stat.S_IMODE(chains.stat().st_mode) == 0o700 and stat.S_IMODE(kept.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (kept / CHAIN_DIR).iterdir()} == {0o600}
    assert [p.name for p in chains.iterdir()] == [kept.name]  # no temporary folder left behind
    _down(registry_proxy)
    asked = registry_proxy.count()
    second = load_model(folder, image=image, public_key=key, chain_dir=chains)
    assert second.provenance == first.provenance and second.digest == first.digest
    assert registry_proxy.count() == asked


def test_a_tampered_kept_chain_is_refused_without_the_registry(pushed: Pushed, tmp_path: Path,
                                                               registry_proxy: FaultProxy) -> None:
    folder, chains = _image_volume(pushed, tmp_path), tmp_path / "chains"
    image, key = _through(registry_proxy, pushed), str(pushed.image.public_key)
    load_model(folder, image=image, public_key=key, chain_dir=chains)
    kept = chains / pushed.image.digest.split(":")[1]
    config = kept / CHAIN_DIR / "config.json"
    config.write_bytes(config.read_bytes().replace(b'"rootfs"', b'"rootfs" ', 1))
    _down(registry_proxy)
    asked = registry_proxy.count()
    with pytest.raises(ProvenanceError) as refused:
        load_model(folder, image=image, public_key=key, chain_dir=chains)
    assert refused.value.exit_code == 80 and "another config" in refused.value.message
    assert refused.value.hint is not None and f"delete {kept}" in refused.value.hint
    assert registry_proxy.count() == asked  # refused, not fetched again
    # the way out the hint names: deleted, the next load fetches it once more
    shutil.rmtree(kept)
    registry_proxy.clear()
    assert load_model(folder, image=image, public_key=key, chain_dir=chains).digest == pushed.image.digest
    assert read_chain(kept) is not None


def test_a_kept_chain_does_not_vouch_for_a_tampered_folder(pushed: Pushed, tmp_path: Path,
                                                           registry_proxy: FaultProxy) -> None:
    folder, chains = _image_volume(pushed, tmp_path), tmp_path / "chains"
    image, key = _through(registry_proxy, pushed), str(pushed.image.public_key)
    load_model(folder, image=image, public_key=key, chain_dir=chains)
    _down(registry_proxy)
    model = folder / "model.onnx"
    intact = model.read_bytes()
    model.write_bytes(intact[:-1] + bytes([intact[-1] ^ 1]))
    with pytest.raises(ModelIntegrityError):
        load_model(folder, image=image, public_key=key, chain_dir=chains)
    model.write_bytes(intact)
    meta = folder / "edgekit.json"
    doc = json.loads(meta.read_text())
    doc["version"] = "9.9.9"
    meta.write_text(json.dumps(doc))
    with pytest.raises(ProvenanceError, match="differs from the metadata"):
        load_model(folder, image=image, public_key=key, chain_dir=chains)


def test_a_kept_chain_needs_the_configured_key(pushed: Pushed, tmp_path: Path, registry_proxy: FaultProxy) -> None:
    folder, chains = _image_volume(pushed, tmp_path), tmp_path / "chains"
    image = _through(registry_proxy, pushed)
    other = str(pushed.image.other_public_key)
    with pytest.raises(SignatureInvalidError):  # at the registry: nothing is kept
        load_model(folder, image=image, public_key=other, chain_dir=chains)
    assert not chains.exists() or list(chains.iterdir()) == []
    load_model(folder, image=image, public_key=str(pushed.image.public_key), chain_dir=chains)
    _down(registry_proxy)
    with pytest.raises(ProvenanceError, match="not verified with key"):
        load_model(folder, image=image, public_key=other, chain_dir=chains)


def test_the_agent_keeps_image_volume_chains_in_its_spool_volume(pushed: Pushed, tmp_path: Path,
                                                                 registry_proxy: FaultProxy) -> None:
    folder, spool = _image_volume(pushed, tmp_path), tmp_path / "spool"
    hexpart = pushed.image.digest.split(":")[1]
    over = {"model_dir": str(folder), "image": _through(registry_proxy, pushed),
            "public_key": str(pushed.image.public_key), "spool_dir": str(spool)}
    # chain_dir, when set, is where they go
    elsewhere = _core(tmp_path, chain_dir=str(tmp_path / "elsewhere"), **over)
    assert elsewhere.load(), elsewhere.rejected
    assert read_chain(tmp_path / "elsewhere" / hexpart) is not None and not (spool / "chains").exists()
    # by default: in the spool volume, the one the DaemonSet lets the agent write; without that
    # volume the model still loads, verified at the registry, and nothing is kept
    core = _core(tmp_path, **over)
    assert core.load(), core.rejected
    assert not spool.exists()
    spool.mkdir()
    core = _core(tmp_path, **over)
    assert core.load(), core.rejected
    assert read_chain(spool / "chains" / hexpart) is not None
    _down(registry_proxy)
    asked = registry_proxy.count()
    again = _core(tmp_path, **over)
    assert again.load(), again.rejected
    assert again.model_ref is not None and again.model_ref["digest"] == pushed.image.digest
    assert registry_proxy.count() == asked
