"""A build per device class: ``package --platform OS/ARCH=FILE`` writes one layer per platform, and
``edgekit-agent fetch --platform`` takes that platform's. The two models are real int8 builds of
the digits CNN (U8S8 with reduce_range, as x86 without VNNI wants; S8S8, as arm64 wants)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from edgekit_agent.modelmeta import METADATA_FILE, MODEL_FILE, PROBE_FILE
from edgekit_agent.oci import OciLayout

from edgekit.rehearsal.registry import DockerRegistry
from tests import test_images_signing
from tests.fixtures.agent import run_cli
from tests.fixtures.models import DIGITS
from tests.fixtures.registry import FIXED_CREATED
from tests.test_images_build import assert_error, invoke, read_blob
from tests.test_images_signing import ENV

keys = test_images_signing.keys  # the same key pairs ("release", "other")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quantize(dest: Path, *, activation: str, reduce_range: bool, ratio: float, score: float) -> Path:
    """Static QDQ int8 of the digits CNN calibrated on its calibration split, with a quantize-style
    report beside it (timed on this host, which is amd64 in CI)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    with np.load(DIGITS / "calib.npz") as data:
        calib = np.asarray(data[data.files[0]], dtype=np.float32)[:64]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(calib[i:i + 16] for i in range(0, len(calib), 16))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.rows, None)
            return None if batch is None else {"input": batch}

    quantize_static(str(DIGITS / "digits.onnx"), str(dest), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8 if activation == "s8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range)
    report = {"schema": 1, "chosen": f"static-qdq-{activation}s8", "precision": "int8", "method": "static",
              "metric": "top1", "metric_settings": {}, "metric_reason": "classifier output", "budget": "1 point",
              "threads": 1, "timed_on": "linux/amd64",
              "baseline": {"latency_p50_ms": 1.0, "size_bytes": 4000, "score": 1.0},
              "result": {"latency_p50_ms": ratio, "latency_ratio": ratio, "size_bytes": 1200,
                         "fidelity": {"metric": "top1", "score": score, "fp32": 1.0}}}
    dest.with_name(dest.name + ".report.json").write_text(json.dumps(report))
    return dest


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("builds")
    return {"linux/amd64": _quantize(folder / "digits.linux-amd64.onnx", activation="u8", reduce_range=True,
                                     ratio=0.7, score=0.995),
            "linux/arm64": _quantize(folder / "digits.linux-arm64.onnx", activation="s8", reduce_range=False,
                                     ratio=1.3, score=0.99)}


def _platform_flag(builds: dict[str, Path]) -> str:
    return ",".join(f"{plat}={path}" for plat, path in builds.items())


def _layer_files(layout: Path, digest: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(read_blob(layout, digest)))) as tar:
        return {m.name.removeprefix("model/"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


# --- the layout ------------------------------------------------------------------------------------
def test_each_platform_gets_its_own_layer_report_and_probe(builds: dict[str, Path], tmp_path: Path) -> None:
    args = ("package", "--name", "digits", "--version", "2.0", "--created", FIXED_CREATED,
            "--platform", _platform_flag(builds), "--output", "json")
    first = invoke(*args, "-o", tmp_path / "a")
    again = invoke(*args, "-o", tmp_path / "b")
    assert first.exit_code == 0 and again.exit_code == 0, first.stderr + again.stderr
    assert json.loads(first.stdout)["digest"] == json.loads(again.stdout)["digest"]  # reproducible
    layout = tmp_path / "a"
    index = json.loads(read_blob(layout, OciLayout(layout).find("2.0")["digest"]))
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    layers = {}
    for entry in index["manifests"]:
        plat = f"{entry['platform']['os']}/{entry['platform']['architecture']}"
        manifest = json.loads(read_blob(layout, entry["digest"]))
        config = json.loads(read_blob(layout, manifest["config"]["digest"]))
        (layer,) = manifest["layers"]
        layers[plat] = layer["digest"]
        files = _layer_files(layout, layer["digest"])
        meta = json.loads(files[METADATA_FILE])
        # the platform's own model, its own report, and the config records the same metadata
        assert hashlib.sha256(files[MODEL_FILE]).hexdigest() == meta["model"]["sha256"] == _sha256(builds[plat])
        assert json.loads(config["config"]["Labels"]["io.edgekit.metadata"]) == meta
        assert config["architecture"] == entry["platform"]["architecture"]
        assert meta["quantization"]["chosen"] == json.loads(
            builds[plat].with_name(builds[plat].name + ".report.json").read_text())["chosen"]
        assert meta["quantization"]["latency"]["measured_on"] == "linux/amd64"
        # the probe is this model's outputs on the probe inputs, as onnxruntime computes them
        with np.load(io.BytesIO(files[PROBE_FILE])) as probe:
            sess = ort.InferenceSession(str(builds[plat]), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"input": probe["input/input"]})[0]
            np.testing.assert_allclose(got, probe["output/logits"], rtol=1e-6, atol=1e-6)
    assert len(set(layers.values())) == 2
    # show, per platform, reads that platform's metadata from its config
    for plat, model in builds.items():
        shown = json.loads(invoke("show", layout, "--platform", plat, "--output", "json").stdout)
        assert shown["platform"] == plat and shown["layer_digest"] == layers[plat]
        assert shown["metadata"]["model"]["sha256"] == _sha256(model)
    assert_error(invoke("show", layout, "--platform", "arm64"), 2, "os/arch")


def test_one_model_keeps_the_shared_layer(builds: dict[str, Path], tmp_path: Path) -> None:
    """MODEL fills the platforms without their own file; one model for all still shares one layer."""
    mixed = invoke("package", DIGITS / "digits.onnx", "--name", "digits", "--version", "2.0",
                   "--created", FIXED_CREATED, "--platform", "linux/amd64",
                   "--platform", f"linux/arm64={builds['linux/arm64']}", "-o", tmp_path / "m", "--output", "json")
    assert mixed.exit_code == 0, mixed.stderr
    layers = json.loads(mixed.stdout)["layers"]
    assert layers["linux/amd64"]["model_sha256"] == _sha256(DIGITS / "digits.onnx")
    assert layers["linux/arm64"]["model_sha256"] == _sha256(builds["linux/arm64"])
    shared = invoke("package", builds["linux/amd64"], "--name", "digits", "--version", "2.0",
                    "--created", FIXED_CREATED, "-o", tmp_path / "s", "--output", "json")
    assert shared.exit_code == 0, shared.stderr
    assert len({layer["digest"] for layer in json.loads(shared.stdout)["layers"].values()}) == 1


def test_bad_platform_arguments(builds: dict[str, Path], tmp_path: Path) -> None:
    base = ("--name", "digits", "--version", "2.0", "-o", tmp_path / "x")
    assert_error(invoke("package", *base), 2, "MODEL")
    assert_error(invoke("package", *base, "--platform", f"linux/amd64,linux/arm64={builds['linux/arm64']}"), 2,
                 "no model for linux/amd64")
    assert_error(invoke("package", DIGITS / "digits.onnx", *base, "--platform", _platform_flag(builds)), 2,
                 "is not used")
    assert_error(invoke("package", *base, "--platform", "linux/arm64="), 2, "OS/ARCH=FILE")
    assert_error(invoke("package", DIGITS / "digits.onnx", *base, "--platform", "linux/arm64,linux/arm64"), 2,
                 "listed twice")
    assert_error(invoke("package", DIGITS / "digits.onnx", *base, "--platform",
                        f"linux/arm64={tmp_path / 'missing.onnx'}"), 11, "missing.onnx")
    assert not (tmp_path / "x").exists()


# --- through a registry: skopeo, the agent, the attestation ----------------------------------------
@pytest.mark.registry
def test_pushed_index_has_a_layer_per_platform_and_the_agent_fetches_its_own(
        registry: DockerRegistry, builds: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    repo = f"{registry.host}/platforms/digits-{uuid.uuid4().hex[:6]}"
    pushed = invoke("package", "--name", "digits", "--version", "2.0", "--platform", _platform_flag(builds),
                    "--push", repo, "--sign-key", keys["release"], "--output", "json", env=ENV)
    assert pushed.exit_code == 0, pushed.stderr
    digest = json.loads(pushed.stdout)["push"]["digest"]
    image = f"{repo}@{digest}"

    def raw(ref: str) -> dict:
        out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                             capture_output=True, check=True)
        return json.loads(out.stdout)

    index = raw(image)
    layers = {f"{m['platform']['os']}/{m['platform']['architecture']}": raw(f"{repo}@{m['digest']}")["layers"]
              for m in index["manifests"]}
    assert sorted(layers) == ["linux/amd64", "linux/arm64"]
    assert layers["linux/amd64"][0]["digest"] != layers["linux/arm64"][0]["digest"]
    # each platform's device gets its own model, under the one signature on the index
    for plat, model in builds.items():
        dest = tmp_path / plat.replace("/", "-")
        fetched = run_cli("fetch", image, "--to", str(dest), "--public-key", str(keys["release.pub"]),
                          "--insecure", "--platform", plat)
        assert fetched.returncode == 0, fetched.stderr
        out = json.loads(fetched.stdout)
        assert out["platform"] == plat and out["signature_verified"] and out["digest"] == digest
        assert out["layer_digest"] == layers[plat][0]["digest"]
        assert _sha256(dest / MODEL_FILE) == _sha256(model)
        verified = run_cli("verify", str(dest), "--public-key", str(keys["release.pub"]), "--image", image)
        assert verified.returncode == 0, verified.stderr
    pulled = invoke("pull", image, "-o", tmp_path / "pulled-arm", "--model-folder", "--platform", "linux/arm64",
                    "--key", keys["release.pub"], "--insecure", "--output", "json")
    assert pulled.exit_code == 0, pulled.stderr
    assert json.loads(pulled.stdout)["platform"] == "linux/arm64"
    assert _sha256(tmp_path / "pulled-arm" / MODEL_FILE) == _sha256(builds["linux/arm64"])
    assert_error(invoke("pull", image, "-o", tmp_path / "p", "--platform", "linux/arm64", "--insecure"), 2,
                 "--model-folder")
    wrong = run_cli("fetch", image, "--to", str(tmp_path / "s390x"), "--allow-unsigned", "--insecure",
                    "--platform", "linux/s390x")
    assert wrong.returncode == 23 and "linux/arm64" in wrong.stderr and "Traceback" not in wrong.stderr
    bad = run_cli("fetch", image, "--to", str(tmp_path / "bad"), "--allow-unsigned", "--platform", "arm64")
    assert bad.returncode == 2 and "os/arch" in bad.stderr
    # the attestation covers the index and says, per platform, which model and where it was timed
    verify = invoke("verify", image, "--key", keys["release.pub"], "--insecure", "--output", "json")
    assert verify.exit_code == 0, verify.stderr
    predicate = json.loads(verify.stdout)["attestation"]["predicate"]
    assert {plat: c["model"]["sha256"] for plat, c in predicate["platforms"].items()} == \
        {plat: _sha256(path) for plat, path in builds.items()}
    assert predicate["latency"]["linux/amd64"]["ratio"] == 0.7
    assert predicate["latency"]["linux/arm64"] == {"ratio": None, "measured_on": "not measured"}
    assert predicate["accuracy"]["drop"] == pytest.approx(0.01)  # the larger of the two drops
