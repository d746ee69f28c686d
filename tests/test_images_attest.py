"""Quantization attestations: package --push --sign-key attaches one, cosign and edgekit verify it."""

from __future__ import annotations

import base64
import json
import math
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pytest
from edgekit_agent.oci import parse_reference
from edgekit_agent.oci.registry import RegistryClient

from edgekit.fleet.timing import relative_to
from edgekit.image.attestations import (
    DSSE_ENVELOPE,
    QUANTIZATION_PREDICATE,
    attestation_tag,
    pae,
    quantization_predicate,
)
from edgekit.image.building import summarize_report
from edgekit.optimize.speedup import paired_ratio
from edgekit.rehearsal.registry import DockerRegistry
from tests import test_images_signing
from tests.test_device_timing import _img, _rounds, _sign_test
from tests.test_images_build import assert_error, invoke
from tests.test_images_signing import ENV, _cosign

keys = test_images_signing.keys  # the same key pairs ("release", "other")



def _verify_attestation(cosign: Path, tmp_path: Path, key: Path, image: str) -> subprocess.CompletedProcess[str]:
    """``cosign verify-attestation`` for a plain-HTTP registry without Rekor (the empty trusted root
    that ``_cosign`` writes keeps it offline)."""
    return _cosign(cosign, tmp_path, "verify-attestation", "--key", key, "--type", QUANTIZATION_PREDICATE,
                   "--insecure-ignore-tlog=true", "--allow-http-registry", "--trusted-root",
                   tmp_path / "trusted_root.json", image)


def write_report(path: Path, *, score: float = 0.99, fp32: float = 1.0, ratio: float = 0.6,
                 devices: dict[str, Any] | None = None) -> Path:
    """A quantize report as ``edgekit quantize`` writes it (the fields ``package`` reads);
    ``devices``: what ``device_timing`` adds for a build timed on devices of a group."""
    report: dict[str, Any] = {
        "schema": 1, "chosen": "static-qdq", "precision": "int8", "method": "static",
        "metric": "top1", "metric_settings": {}, "metric_reason": "classifier output", "budget": "1%",
        "threads": 1, "baseline": {"latency_p50_ms": 1.0, "size_bytes": 4000, "score": fp32},
        "result": {"latency_p50_ms": ratio, "latency_ratio": ratio, "size_bytes": 1200,
                   "fidelity": {"metric": "top1", "score": score, "fp32": fp32}}}
    if devices is not None:
        report["timed_on"] = "linux/amd64"
        report["latency_source"] = devices["latency_source"]
        report["result"].update(device_latency=devices["device_latency"], speed=devices["speed"])
    path.write_text(json.dumps(report))
    return path


def device_timing(factor: float, *, group: str = "cams") -> dict[str, Any]:
    """What ``quantize --timing-group`` records for a build timed on two arm64 devices at about
    ``factor`` times FP32 (per-round times drift, the ratio wobbles), made by the code that folds
    device answers (``relative_to``) and by the host's paired test (``paired_ratio``); with the
    per-round ratios, so a test can compute the interval itself."""
    fp32, cand = _img(9), _img(1)
    rounds = {"r1": (_rounds(2.0, 1.0, 20), _rounds(2.0, factor, 20, 0.02)),
              "r2": (_rounds(3.0, 1.0, 20), _rounds(3.0, factor, 20, 0.02))}
    answers = {d: {"state": "done", "running": {"median_ms": 5.0}, "candidates": [
        {"image": fp32, "status": "ok", "n": 20, "median_ms": statistics.median(ref), "samples_ms": ref},
        {"image": cand, "status": "ok", "n": 20, "median_ms": statistics.median(c), "samples_ms": c}]}
        for d, (ref, c) in rounds.items()}
    fig = relative_to(answers, fp32)[cand]
    host = [1.0 + 0.1 * math.sin(i) for i in range(30)]
    return {"latency_source": {"source": "devices", "platform": "linux/arm64", "group": group, "app": "digits",
                               "devices": fig.devices, "runs": 20, "refused": [], "why": "timed"},
            "device_latency": {**fig.to_dict(), "platform": "linux/arm64", "reference": "fp32 build, same rounds"},
            "speed": paired_ratio(host, [0.6 * h for h in host]).to_dict(),
            "ratios": [c / r for ref, cs in rounds.values() for r, c in zip(ref, cs, strict=True)]}


def test_a_device_timed_build_attests_the_devices_figure_for_its_platform(tmp_path: Path) -> None:
    timing = device_timing(0.9)
    report = json.loads(write_report(tmp_path / "r.json", devices=timing).read_text())
    metadata = {"name": "digits", "version": "1.0", "precision": "int8", "quantization": summarize_report(report)}
    pred = quantization_predicate(metadata, platforms=("linux/amd64", "linux/arm64"), host_platform="linux/amd64",
                                  tools={})
    arm, amd = pred["latency"]["linux/arm64"], pred["latency"]["linux/amd64"]
    median, low, high = _sign_test(timing["ratios"])  # from the devices' rounds, not from the report
    assert arm["measured_on"] == "devices" and arm["group"] == "cams" and arm["devices"] == 2
    assert arm["rounds"] == 40 and arm["test"].startswith("sign test")
    assert (arm["ratio"], arm["ci_low"], arm["ci_high"]) == pytest.approx((median, low, high), abs=1e-4)
    assert high < 1.0 and arm["ratio"] > 0.8
    # the build host's own figure stays on its platform, with the host's paired test
    assert amd["measured_on"] == "build host" and amd["ratio"] == 0.6
    assert amd["rounds"] == 30 and amd["ci_low"] == pytest.approx(0.6, abs=1e-3)
    # an older report (medians only, no device timing): arm64 is not measured, amd64 has no interval
    plain = quantization_predicate({"quantization": summarize_report(json.loads(write_report(
        tmp_path / "p.json").read_text()))}, platforms=("linux/amd64", "linux/arm64"), host_platform="linux/amd64",
        tools={})
    assert plain["latency"]["linux/arm64"] == {"ratio": None, "measured_on": "not measured"}
    assert plain["latency"]["linux/amd64"]["ci_high"] is None and plain["latency"]["linux/amd64"]["rounds"] == 0


def package_attested(registry: DockerRegistry, model: Path, key: Path, repo: str, report: Path) -> str:
    """Package, push, sign and attest; the image's digest reference."""
    ref = f"{registry.host}/att/{repo}"
    result = invoke("package", model, "--name", "digits", "--version", "1.0", "--push", ref, "--sign-key", key,
                    "--report", report, "--output", "json", env=ENV)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["attestation"]["attestation_tag"] == attestation_tag(out["push"]["digest"])
    return f"{ref}@{out['push']['digest']}"


def _att_manifest(registry: DockerRegistry, by_digest: str) -> tuple[str, dict]:
    ref = parse_reference(by_digest)
    assert ref.digest
    with RegistryClient(registry.host) as client:
        return ref.repository, json.loads(client.get_manifest(ref.repository, attestation_tag(ref.digest)).data)


@pytest.mark.registry
def test_cosign_verifies_the_attestation_and_edgekit_reads_it(
        registry: DockerRegistry, digits_model: Path, keys: dict[str, Path], cosign: Path, tmp_path: Path) -> None:
    image = package_attested(registry, digits_model, keys["release"], "ok", write_report(tmp_path / "r.json"))
    _, manifest = _att_manifest(registry, image)
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == DSSE_ENVELOPE and layer["annotations"]["predicateType"] == QUANTIZATION_PREDICATE
    out = _verify_attestation(cosign, tmp_path, keys["release.pub"], image)
    assert out.returncode == 0, out.stderr
    envelope = json.loads(out.stdout.splitlines()[0])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["subject"][0]["digest"]["sha256"] == image.rsplit(":", 1)[1]
    assert statement["predicate"]["accuracy"]["drop"] == pytest.approx(0.01)
    assert statement["predicate"]["accuracy"]["metric"] == "top1"
    # cosign refuses it for the other key; edgekit reports it
    wrong = _verify_attestation(cosign, tmp_path, keys["other.pub"], image)
    assert wrong.returncode != 0
    ok = invoke("verify", image, "--public-key", keys["release.pub"], "--output", "json")
    assert ok.exit_code == 0, ok.stderr
    att = json.loads(ok.stdout)["attestation"]
    assert att["predicate_type"] == QUANTIZATION_PREDICATE and att["predicate"]["precision"] == "int8"
    assert att["predicate"]["model"]["sha256"] == json.loads(invoke("show", image, "--output", "json").stdout)[
        "metadata"]["model"]["sha256"]


@pytest.mark.registry
def test_edgekit_reads_an_attestation_cosign_made(registry: DockerRegistry, digits_layout: Path,
                                                  keys: dict[str, Path], cosign: Path, tmp_path: Path) -> None:
    from edgekit.image.pushing import push_layout

    pushed = push_layout(digits_layout, parse_reference(f"{registry.host}/att/bycosign:1.0"))
    image = f"{registry.host}/att/bycosign@{pushed.digest}"
    assert invoke("sign", image, "--key", keys["release"], env=ENV).exit_code == 0
    assert_error(invoke("verify", image, "--key", keys["release.pub"], "--require-attestation"), 91, "no ")
    predicate = tmp_path / "p.json"
    predicate.write_text(json.dumps({"precision": "int8", "accuracy": {"metric": "top1", "drop": 0.002}}))
    made = _cosign(cosign, tmp_path, "attest", "--key", keys["release"], "--type", QUANTIZATION_PREDICATE,
                   "--predicate", predicate, "--tlog-upload=false", "--yes", "--allow-http-registry", image)
    assert made.returncode == 0, made.stderr
    ok = invoke("verify", image, "--key", keys["release.pub"], "--output", "json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["attestation"]["predicate"]["accuracy"]["drop"] == 0.002


@pytest.mark.registry
def test_tampered_or_foreign_attestations_are_refused(registry: DockerRegistry, digits_model: Path,
                                                      keys: dict[str, Path], cosign: Path, tmp_path: Path) -> None:
    image = package_attested(registry, digits_model, keys["release"], "tamper", write_report(tmp_path / "r.json"))
    # another key: edgekit refuses with 92
    assert_error(invoke("verify", image, "--key", keys["other.pub"]), 25, "verifies")  # the signature first
    assert invoke("sign", image, "--key", keys["other"], env=ENV).exit_code == 0
    assert_error(invoke("verify", image, "--key", keys["other.pub"]), 92, "verifies with key")
    # tampered: the predicate rewritten (a better accuracy) under the old signature
    repo, manifest = _att_manifest(registry, image)
    layer = manifest["layers"][0]
    with RegistryClient(registry.host) as client:
        envelope = json.loads(client.request("GET", f"/v2/{repo}/blobs/{layer['digest']}", repository=repo).read())
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["predicate"]["accuracy"]["drop"] = 0.0
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        forged = json.dumps(envelope).encode()
        from edgekit.image.signing import _put_blob

        layer.update(digest=_put_blob(client, repo, forged), size=len(forged))
        from edgekit_agent.oci.mediatypes import OCI_MANIFEST, canonical_json

        ref = parse_reference(image)
        assert ref.digest
        client.request("PUT", f"/v2/{repo}/manifests/{attestation_tag(ref.digest)}", repository=repo,
                       actions=("pull", "push"), body=canonical_json(manifest),
                       headers={"Content-Type": OCI_MANIFEST}, expect=(201,), what="forged").read()
    assert_error(invoke("verify", image, "--key", keys["release.pub"]), 92, "verifies with key")
    out = _verify_attestation(cosign, tmp_path, keys["release.pub"], image)
    assert out.returncode != 0


def test_pae_is_dsse_v1() -> None:
    # the example of the DSSE v1 protocol document
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


@pytest.mark.registry
def test_pull_and_push_carry_the_attestation(registry: DockerRegistry, digits_model: Path, keys: dict[str, Path],
                                             cosign: Path, tmp_path: Path) -> None:
    from edgekit.image.pushing import pull_image, push_layout

    image = package_attested(registry, digits_model, keys["release"], "carried", write_report(tmp_path / "r.json"))
    pulled = pull_image(parse_reference(image), tmp_path / "folder")
    assert (pulled.signatures, pulled.attestations) == (1, 1)
    local = invoke("verify", tmp_path / "folder", "--key", keys["release.pub"], "--output", "json")
    assert local.exit_code == 0, local.stderr
    assert json.loads(local.stdout)["attestation"]["predicate"]["accuracy"]["drop"] == pytest.approx(0.01)
    copied = push_layout(tmp_path / "folder", parse_reference(f"{registry.host}/att/copied:1.0"))
    assert copied.attestations == 1
    out = _verify_attestation(cosign, tmp_path, keys["release.pub"], f"{registry.host}/att/copied@{copied.digest}")
    assert out.returncode == 0, out.stderr
