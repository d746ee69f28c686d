"""The release policy: the pure decision, reading policies, and ``edgekit push --policy`` refusing
before any call to the cluster (a counting listener stands where the API server would be)."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import edgekit.errors as errors
from edgekit.rehearsal.registry import DockerRegistry
from edgekit.rollout.policy import AttestationEvidence, ReleasePolicy, decide, override, parse_policy, refusal_error
from tests import test_images_signing
from tests.test_device_timing import _sign_test
from tests.test_images_attest import device_timing, package_attested, write_report
from tests.test_images_build import assert_error, invoke
from tests.test_images_signing import ENV

keys = test_images_signing.keys  # the same key pairs ("release", "other")

QUANTIZED = {"quantized": True, "precision": "int8", "metric": "top1",
             "accuracy": {"metric": "top1", "fp32": 1.0, "score": 0.99, "drop": 0.01},
             "latency": {"linux/amd64": {"ratio": 0.6, "measured_on": "build host"},
                         "linux/arm64": {"ratio": None, "measured_on": "not measured"}}}


def verified(**changes: object) -> AttestationEvidence:
    return AttestationEvidence("verified", {**QUANTIZED, **changes})


# --- the decision (pure) -------------------------------------------------------------------------
def test_in_budget_passes_and_says_what_it_checked() -> None:
    verdict = decide(ReleasePolicy(max_accuracy_drop=0.02), verified())
    assert verdict.ok
    assert verdict.checked == ("top1 drop 0.01 ≤ 0.02", "latency on linux/amd64 x0.6 < x1")


@pytest.mark.parametrize(("policy", "evidence", "family", "needle"), [
    (ReleasePolicy(max_accuracy_drop=0.005), verified(), "accuracy", "drop 0.01 is over the budget 0.005"),
    (ReleasePolicy(), verified(latency={"linux/amd64": {"ratio": 1.0}}), "latency", "x1 FP32, not under x1"),
    (ReleasePolicy(max_latency_ratio=0.5), verified(), "latency", "x0.6 FP32, not under x0.5"),
    (ReleasePolicy(platform="linux/arm64"), verified(), "latency", "linux/arm64 was never measured"),
    (ReleasePolicy(), verified(latency={}), "latency", "no latency measured on any platform"),
    (ReleasePolicy(max_accuracy_drop=0.1), verified(accuracy={"metric": "top1"}), "missing", "no accuracy drop"),
    (ReleasePolicy(), AttestationEvidence("missing", detail="x has no attestation"), "missing", "no attestation"),
    (ReleasePolicy(require_attestation=False), AttestationEvidence("invalid", detail="other key"), "invalid",
     "other key"),
])
def test_each_rule_refuses_its_own_family(policy: ReleasePolicy, evidence: AttestationEvidence, family: str,
                                          needle: str) -> None:
    verdict = decide(policy, evidence)
    assert not verdict.ok and verdict.refusals[0].family == family
    assert needle in verdict.refusals[0].message


def test_a_latency_refusal_names_where_it_was_measured_and_its_interval() -> None:
    on_devices = {"ratio": 1.03, "measured_on": "devices", "group": "cams", "devices": 2, "test": "sign test",
                  "ci_low": 0.98, "ci_high": 1.08, "confidence": 0.95, "rounds": 40}
    verdict = decide(ReleasePolicy(platform="linux/arm64"), verified(latency={"linux/arm64": on_devices}))
    (refusal,) = verdict.refusals
    assert refusal.family == "latency" and "linux/arm64 is x1.03 FP32, not under x1" in refusal.message
    assert "measured on 2 device(s) of group cams, 95% CI 0.98-1.08x, sign test, 40 paired rounds" in refusal.message
    host = {"ratio": 1.2, "measured_on": "build host", "rounds": 0}
    (refusal,) = decide(ReleasePolicy(), verified(latency={"linux/amd64": host})).refusals
    assert "measured on the build host, no interval recorded" in refusal.message


def test_interval_evidence_passes_only_what_the_whole_interval_shows_faster() -> None:
    def record(ratio: float, high: float | None, rounds: int = 40) -> AttestationEvidence:
        return verified(latency={"linux/arm64": {"ratio": ratio, "measured_on": "devices", "devices": 2,
                                                 "ci_low": None if high is None else 0.8, "ci_high": high,
                                                 "confidence": 0.95, "rounds": rounds}})

    strict = ReleasePolicy(latency_evidence="interval")
    # a median under 1 whose interval reaches past it: the median rule passes it, the interval rule not
    assert decide(ReleasePolicy(), record(0.95, 1.02)).ok
    (refusal,) = decide(strict, record(0.95, 1.02)).refusals
    assert refusal.family == "latency" and "not shown under x1 FP32: its interval reaches x1.02" in refusal.message
    assert "95% CI 0.80-1.02x, sign test, 40 paired rounds" in refusal.message
    # the whole interval under the bound passes, and says so
    verdict = decide(strict, record(0.9, 0.97))
    assert verdict.ok and "latency on linux/arm64 x0.9, interval up to x0.97 < x1" in verdict.checked
    # too few rounds for an interval: nothing is shown, so nothing passes
    (refusal,) = decide(strict, record(0.7, None, rounds=4)).refusals
    assert "has no interval to show it under x1" in refusal.message and "4 paired rounds: too few" in refusal.message
    # the bound is the policy's, not 1.0
    assert not decide(replace(strict, max_latency_ratio=0.95), record(0.9, 0.97)).ok


def test_exit_codes_follow_the_first_refusal_and_every_reason_is_told() -> None:
    verdict = decide(ReleasePolicy(max_accuracy_drop=0.001, max_latency_ratio=0.5), verified())
    assert [r.family for r in verdict.refusals] == ["accuracy", "latency"]
    exc = refusal_error("reg/m:1", verdict)
    assert isinstance(exc, errors.AccuracyBudgetError) and exc.exit_code == 93
    assert "drop" in exc.message and "latency" in exc.message and "nothing in the cluster" in exc.one_line()
    codes = {type(refusal_error("m", decide(p, e))).exit_code for p, e in [
        (ReleasePolicy(), AttestationEvidence("missing")), (ReleasePolicy(), AttestationEvidence("invalid")),
        (ReleasePolicy(max_accuracy_drop=0), verified()), (ReleasePolicy(max_latency_ratio=0.1), verified())]}
    assert codes == {91, 92, 93, 94}
    assert all(issubclass(getattr(errors, n), errors.ReleasePolicyError)
               for n in ("AttestationMissingError", "AttestationInvalidError", "AccuracyBudgetError",
                         "LatencyBudgetError"))


def test_fp32_kept_has_no_drop_and_nothing_to_be_slower_than() -> None:
    fp32 = AttestationEvidence("verified", {"quantized": False, "precision": "fp32", "accuracy": {}, "latency": {}})
    assert decide(ReleasePolicy(max_accuracy_drop=0.0), fp32).ok


def test_unrequired_missing_attestation_passes_unchecked() -> None:
    verdict = decide(ReleasePolicy(require_attestation=False, max_accuracy_drop=0.01), AttestationEvidence("missing"))
    assert verdict.ok and "unchecked" in verdict.checked[0]


def test_reading_policies() -> None:
    assert parse_policy({"max_accuracy_drop": "1%", "platform": "linux/arm64"}) == ReleasePolicy(
        max_accuracy_drop=0.01, platform="linux/arm64")
    assert parse_policy(None) == ReleasePolicy()
    assert parse_policy({"latency_evidence": "interval"}).latency_evidence == "interval"
    assert override(ReleasePolicy(max_accuracy_drop=0.01), max_accuracy_drop=0.02, platform=None) == \
        ReleasePolicy(max_accuracy_drop=0.02)
    for data, code, needle in [({"max_drop": 1}, 2, "unknown key(s) max_drop"), ([1], 2, "must be a mapping"),
                               ({"max_latency_ratio": 0}, 2, "above 0"),
                               ({"require_attestation": "yes"}, 2, "true or false"),
                               ({"platform": "arm64"}, 2, "os/arch"), ({"max_accuracy_drop": "lots"}, 67, "lots"),
                               ({"latency_evidence": "mean"}, 2, "one of median, interval")]:
        with pytest.raises(errors.EdgekitError) as info:
            parse_policy(data)
        assert info.value.exit_code == code and needle in info.value.one_line(), info.value.one_line()


# --- push --policy, against the real registry, before any cluster call -----------------------------
class CountingListener:
    """A TCP port where the API server would be: it counts the connections it is offered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def api_stand_in(tmp_path: Path) -> Iterator[tuple[CountingListener, Path]]:
    listener = CountingListener()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{listener.port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    try:
        yield listener, kubeconfig
    finally:
        listener.close()


@pytest.fixture(scope="module")
def attested(registry: DockerRegistry, digits_model: Path, keys: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Images attested with the release key: in budget, 3 points lost, slower than FP32, and one
    timed on two arm64 devices (about 0.9x FP32 there, 0.6x on the build host)."""
    folder = tmp_path_factory.mktemp("reports")
    return {name: package_attested(registry, digits_model, keys["release"], f"policy-{name}",
                                   write_report(folder / f"{name}.json", **kw))
            for name, kw in (("good", {}), ("lossy", {"score": 0.97}), ("slow", {"ratio": 1.2}),
                             ("devices", {"devices": device_timing(0.9)}))}


@pytest.mark.registry
def test_push_policy_refuses_before_any_cluster_call(attested: dict[str, str], keys: dict[str, Path],
                                                     registry: DockerRegistry, digits_layout: Path,
                                                     api_stand_in: tuple[CountingListener, Path],
                                                     tmp_path: Path) -> None:
    from edgekit_agent.oci import parse_reference

    from edgekit.image.pushing import push_layout

    listener, kubeconfig = api_stand_in
    policy = tmp_path / "policy.yaml"
    policy.write_text("max_accuracy_drop: 2%\nrequire_attestation: true\nplatform: linux/amd64\n")
    signed_only = push_layout(digits_layout, parse_reference(f"{registry.host}/att/signed-only:1.0"))
    unattested = f"{registry.host}/att/signed-only@{signed_only.digest}"
    assert invoke("sign", unattested, "--key", keys["release"], env=ENV).exit_code == 0
    env = {"KUBECONFIG": str(kubeconfig), "EDGEKIT_REGISTRY_INSECURE": "1",
           "EDGEKIT_ROLLOUT_PUBLIC_KEY": str(keys["release.pub"])}

    def push(image: str, *extra: str | Path, **more: str) -> object:
        return invoke("push", image, "-g", "cams", "-a", "det", "--policy", policy, *extra, env={**env, **more})

    assert_error(push(attested["lossy"]), 93, "top1 drop 0.03 is over the budget 0.02")
    assert_error(push(attested["slow"]), 94, "latency on linux/amd64 is x1.2 FP32")
    assert_error(push(attested["good"], "--policy-platform", "linux/arm64"), 94, "never measured")
    assert_error(push(attested["good"], "--max-accuracy-drop", "0.5%"), 93, "over the budget 0.005")
    assert_error(push(unattested), 91, "has no https://edgekit.io/attestations/quantization/v1 attestation")
    assert_error(push(attested["good"], EDGEKIT_ROLLOUT_PUBLIC_KEY=str(keys["other.pub"])), 92, "verifies with key")
    # timed on devices: arm64's attested figure is the devices', and a budget under it refuses
    # (0.6x on the build host would have passed); the refusal says where it was measured
    shown = invoke("verify", attested["devices"], "--key", keys["release.pub"], "--output", "json")
    arm = json.loads(shown.stdout)["attestation"]["predicate"]["latency"]["linux/arm64"]
    _, low, high = _sign_test(device_timing(0.9)["ratios"])
    assert arm["measured_on"] == "devices" and arm["devices"] == 2 and arm["rounds"] == 40
    told = invoke("verify", attested["devices"], "--key", keys["release.pub"])
    assert "linux/amd64 x0.60 (build host" in told.stdout and "linux/arm64 x0.90 (2 devices of cams, 95% CI" \
        in told.stdout, told.stdout
    shown_table = invoke("show", attested["devices"]).stdout
    assert "linux/arm64: x0.90 FP32 (2 devices of cams" in shown_table and "latency x0.60 on linux/amd64" in \
        shown_table, shown_table
    refused = push(attested["devices"], "--policy-platform", "linux/arm64", "--max-latency-ratio", "0.8")
    assert_error(refused, 94, "FP32, not under x0.8 (measured on 2 device(s) of group cams, 95% CI ")
    found = re.search(r"linux/arm64 is x([0-9.]+) FP32.*95% CI ([0-9.]+)-([0-9.]+)x, sign test, 40 paired rounds\)",
                      refused.stderr)  # type: ignore[attr-defined]
    assert found is not None, refused.stderr  # type: ignore[attr-defined]
    assert [float(g) for g in found.groups()[1:]] == pytest.approx([low, high], abs=0.006)
    # a budget between the devices' median and the top of its interval: the median would pass,
    # the interval does not show it
    median = float(found.group(1))
    between = f"{(median + high) / 2:.4f}" if high - median > 0.002 else f"{median + 0.001:.4f}"
    strict = push(attested["devices"], "--policy-platform", "linux/arm64", "--max-latency-ratio", between,
                  "--latency-evidence", "interval")
    assert_error(strict, 94, "not shown under x")
    assert "its interval reaches x" in strict.stderr  # type: ignore[attr-defined]
    assert listener.connections == 0  # not one connection to where the cluster would be
    # in budget: the policy passes, and only then is the cluster contacted (here: nobody answers)
    result = push(attested["good"])
    assert "release policy passed: top1 drop 0.01 ≤ 0.02; latency on linux/amd64 x0.6 < x1" in result.stderr, \
        result.stderr
    assert result.exit_code == 41 and listener.connections > 0, result.stderr
