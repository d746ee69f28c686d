"""Verified model loading: good folders serve; corrupt model, wrong digest, bad or missing signature
and probe mismatch are refused with a schema-valid event and a not-ready state."""

from __future__ import annotations

import io
import json
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgekit_agent.core import AgentCore
from edgekit_agent.errors import ModelNotReadyError
from edgekit_agent.modelmeta import file_sha256
from edgekit_agent.oci import fetch_image
from edgekit_agent.provenance import CHAIN_DIR
from edgekit_agent.serving import InferenceServer
from edgekit_agent.settings import load_settings

from edgekit.rehearsal.mosquitto import MosquittoBroker
from tests.fixtures.agent import SignedImage, TelemetryChecker, http, run_cli
from tests.fixtures.mqtt import MqttRecorder

pytestmark = pytest.mark.mqtt

GROUP = "model-tests"


class Device:
    def __init__(self, core: AgentCore, recorder: MqttRecorder, checker: TelemetryChecker) -> None:
        self.core = core
        self.recorder = recorder
        self.checker = checker

    def events(self, kind: str, timeout: float = 10) -> list[dict[str, Any]]:
        def found(msgs: list[Any]) -> bool:
            return any(m.topic.endswith("/event") and json.loads(m.payload)["kind"] == kind for m in msgs)

        msgs = self.recorder.wait_for(found, timeout)
        docs = self.checker.check_all(msgs)
        return [d for k, d in docs if k == "event" and d["kind"] == kind]


@pytest.fixture
def device(mqtt_broker: MosquittoBroker, mqtt_recorder: Callable[..., MqttRecorder], tmp_path: Path,
           telemetry_checker: TelemetryChecker) -> Iterator[Callable[..., Device]]:
    made: list[AgentCore] = []

    def make(model_dir: Path, **overrides: Any) -> Device:
        name = f"dev-{uuid.uuid4().hex[:8]}"
        rec = mqtt_recorder(mqtt_broker, f"edgekit/v1/{GROUP}/{name}/#")
        settings = load_settings(overrides={"device": name, "group": GROUP, "broker_url": mqtt_broker.url,
                                            "spool_dir": str(tmp_path / name), "model_dir": str(model_dir),
                                            "interval": 60, "allow_unsigned": "public_key" not in overrides,
                                            **overrides})
        core = AgentCore(settings)
        core.start_telemetry()
        made.append(core)
        return Device(core, rec, telemetry_checker)

    yield make
    for core in made:
        core.shutdown(timeout=2)


def _rewrite_metadata(folder: Path, **changes: Any) -> None:
    meta = json.loads((folder / "edgekit.json").read_text())
    for dotted, value in changes.items():
        target = meta
        *path, last = dotted.split("__")
        for key in path:
            target = target[key]
        target[last] = value
    (folder / "edgekit.json").write_text(json.dumps(meta, indent=2))


def test_good_folder_is_ready_and_serves(model_folder: Path, device: Callable[..., Device]) -> None:
    dev = device(model_folder)
    assert dev.core.load()
    assert dev.core.ready and dev.core.probe_ok
    (loaded,) = dev.events("model_loaded")
    assert loaded["model"]["name"] == "digits" and loaded["data"]["providers"][-1] == "CPUExecutionProvider"
    x = np.zeros((3, 1, 8, 8), np.float32)
    (logits,) = dev.core.infer({"input": x})
    assert logits.shape == (3, 10)


def test_corrupt_model_is_refused(model_folder: Path, device: Callable[..., Device]) -> None:
    data = bytearray((model_folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_folder / "model.onnx").write_bytes(bytes(data))
    dev = device(model_folder)
    assert not dev.core.load()
    assert not dev.core.ready
    (ev,) = dev.events("model_rejected")
    assert ev["data"]["error"] == "ModelIntegrityError" and ev["data"]["exit_code"] == 39
    assert "sha256" in ev["detail"]
    with pytest.raises(ModelNotReadyError, match="model rejected"):
        dev.core.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})


def test_truncated_model_with_matching_hash_is_refused_by_onnxruntime(model_folder: Path,
                                                                      device: Callable[..., Device]) -> None:
    # Someone rewrote edgekit.json to match a broken file: the hash check passes, onnxruntime refuses.
    model = model_folder / "model.onnx"
    model.write_bytes(model.read_bytes()[:5000])
    sha, size = file_sha256(model)
    _rewrite_metadata(model_folder, model__sha256=sha, model__size=size)
    dev = device(model_folder)
    assert not dev.core.load()
    (ev,) = dev.events("model_rejected")
    assert ev["data"]["error"] == "ModelRejectedError" and ev["data"]["exit_code"] == 31
    assert "onnxruntime cannot load" in ev["detail"]


def test_missing_metadata_is_refused(model_folder: Path, device: Callable[..., Device]) -> None:
    (model_folder / "edgekit.json").unlink()
    dev = device(model_folder)
    assert not dev.core.load()
    (ev,) = dev.events("model_rejected")
    assert ev["model"] is None and ev["data"]["exit_code"] == 38


def test_wrong_digest_is_refused(digits_signed_layout: SignedImage, tmp_path: Path,
                                 device: Callable[..., Device]) -> None:
    folder = tmp_path / "fetched"
    fetch_image(str(digits_signed_layout.layout), folder)
    configured = "registry.local/m/digits@sha256:" + "b" * 64
    dev = device(folder, image=configured)
    assert not dev.core.load()
    (ev,) = dev.events("model_rejected")
    assert f"holds image {digits_signed_layout.digest}" in ev["detail"]
    assert ev["model"]["digest"] == "sha256:" + "b" * 64


def _replace_probe(folder: Path, transform: Callable[[str, np.ndarray[Any, Any]], np.ndarray[Any, Any]]) -> None:
    with np.load(folder / "probe.npz") as data:
        arrays = {k: transform(k, np.array(data[k])) for k in data.files}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in arrays.items():
            b = io.BytesIO()
            np.lib.format.write_array(b, v)
            zf.writestr(f"{k}.npy", b.getvalue())
    (folder / "probe.npz").write_bytes(buf.getvalue())
    _rewrite_metadata(folder, probe__sha256=file_sha256(folder / "probe.npz")[0])


def test_probe_mismatch_is_refused(model_folder: Path, device: Callable[..., Device]) -> None:
    # The outputs this device computes differ from the packaged ones: as if the hardware computed garbage.
    _replace_probe(model_folder, lambda k, v: v + 0.5 if k.startswith("output/") else v)
    dev = device(model_folder, listen_port=0)
    assert not dev.core.load()
    assert dev.core.model is not None and dev.core.probe_ok is False and not dev.core.ready
    # what the kubelet's readiness probe sees: verified and loaded is not enough, the probe must pass
    server = InferenceServer(dev.core).start()
    try:
        status, _, body = http("GET", server.url + "/v2/health/ready")
        assert status == 503 and "golden probe failing" in json.loads(body)["reason"]
        assert http("GET", server.url + "/v2/health/live")[0] == 200
    finally:
        server.stop()
    (ev,) = dev.events("probe_failed")
    assert "differs from the golden probe" in ev["detail"] and ev["data"]["max_abs_err"] >= 0.49
    with pytest.raises(ModelNotReadyError, match="golden probe failing"):
        dev.core.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})
    health = dev.core.report_health()
    assert health["probe"]["ok"] is False


def test_probe_tolerance_is_respected(model_folder: Path, device: Callable[..., Device]) -> None:
    # A difference inside atol/rtol is normal CPU-to-CPU variation, not a failure.
    _replace_probe(model_folder, lambda k, v: v + 2e-5 if k.startswith("output/") else v)
    dev = device(model_folder)
    assert dev.core.load() and dev.core.probe_ok


def test_probe_recovery_event(model_folder: Path, device: Callable[..., Device]) -> None:
    dev = device(model_folder)
    assert dev.core.load()
    assert dev.core.model is not None
    good = dict(dev.core.model.probe.outputs)
    broken = {k: v + 1 for k, v in good.items()}
    object.__setattr__(dev.core.model.probe, "outputs", broken)
    assert dev.core.run_probe() is not None and not dev.core.ready
    object.__setattr__(dev.core.model.probe, "outputs", good)
    dev.core.run_probe()
    assert dev.core.ready
    dev.events("probe_failed")
    dev.events("probe_recovered")


def test_no_signature_record_with_public_key_is_refused(model_folder: Path, device: Callable[..., Device],
                                                         digits_signed_layout: SignedImage) -> None:
    dev = device(model_folder, public_key=str(digits_signed_layout.public_key))
    assert not dev.core.load()
    (ev,) = dev.events("model_rejected")
    assert "no verified signature record" in ev["detail"]


# --- fetching (init-container path) ------------------------------------------------------------------
def test_fetch_verifies_signature_and_serves(digits_signed_layout: SignedImage, tmp_path: Path,
                                              device: Callable[..., Device]) -> None:
    dest = tmp_path / "fetched"
    result = run_cli("fetch", str(digits_signed_layout.layout), "--to", str(dest),
                     "--public-key", str(digits_signed_layout.public_key))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["digest"] == digits_signed_layout.digest and out["signature_verified"] is True
    assert (dest / CHAIN_DIR / "signature.json").exists()
    dev = device(dest, public_key=str(digits_signed_layout.public_key))
    assert dev.core.load(), dev.core.rejected
    (ev,) = dev.events("model_loaded")
    assert ev["model"]["digest"] == digits_signed_layout.digest and ev["data"]["signature_verified"] is True


def test_fetch_with_wrong_key_fails_and_leaves_nothing(digits_signed_layout: SignedImage, tmp_path: Path) -> None:
    dest = tmp_path / "fetched"
    result = run_cli("fetch", str(digits_signed_layout.layout), "--to", str(dest),
                     "--public-key", str(digits_signed_layout.other_public_key))
    assert result.returncode == 25, result.stderr
    assert result.stderr.startswith("edgekit-agent: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "verifies with key" in result.stderr
    assert not dest.exists()


def test_folder_verified_with_another_key_is_refused(digits_signed_layout: SignedImage, tmp_path: Path,
                                                      device: Callable[..., Device]) -> None:
    dest = tmp_path / "fetched"
    assert run_cli("fetch", str(digits_signed_layout.layout), "--to", str(dest),
                   "--public-key", str(digits_signed_layout.public_key)).returncode == 0
    dev = device(dest, public_key=str(digits_signed_layout.other_public_key))
    assert not dev.core.load()
    (ev,) = dev.events("model_rejected")
    assert "verified with key" in ev["detail"]


def test_fetch_of_tampered_layer_fails(digits_signed_layout: SignedImage, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(digits_signed_layout.layout, layout)
    biggest = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[100] ^= 0x01
    biggest.write_bytes(bytes(data))
    result = run_cli("fetch", str(layout), "--to", str(tmp_path / "out"),
                     "--public-key", str(digits_signed_layout.public_key))
    assert result.returncode == 24, result.stderr  # DigestMismatchError
    assert not (tmp_path / "out").exists()


def test_fetch_requires_a_pinned_reference() -> None:
    result = run_cli("fetch", "registry.local/models/digits:1.0", "--to", "/tmp/never")
    assert result.returncode == 2 and "pinned by digest" in result.stderr
