"""The agent and a real registry: fetching a pinned, signed image at start, tying an image-volume
folder to its signed digest, and refusing images signed by someone else or not at all."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from edgekit_agent.core import AgentCore
from edgekit_agent.oci import parse_reference
from edgekit_agent.provenance import CHAIN_DIR, read_chain
from edgekit_agent.settings import load_settings

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
                                              "spool_dir": None, **over}))


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
