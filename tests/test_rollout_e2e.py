"""End-to-end rollouts on the rehearsal fleet: the real control plane with KWOK nodes, the registry,
mosquitto and the fleet simulator (real agent cores on real onnxruntime sessions), driven through
the ``edgekit`` command line. Bakes are seconds and health reports come every second."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgekit.errors import KubeForbiddenError
from edgekit.kube.client import KubeClient
from edgekit.rehearsal.sim.faults import Fault
from edgekit.rollout.resource import EdgeRollout
from tests.fixtures.rollout import Fleet, RolloutEnv, revision_of

pytestmark = [pytest.mark.kube, pytest.mark.mqtt, pytest.mark.registry, pytest.mark.slow]

NewFleet = Callable[..., Fleet]
# A simulated device makes 2 inferences/s: the error-rate test needs 226 clean ones to pass a 1%
# limit, 19 to pass 10%, so rollouts that are not about the error rate use 10% to stay short.
QUICK_GATE = ["--max-error-rate", "10%"]
FAST = ["--bake", "2s", "--wave-timeout", "40s", "--baseline", "2s", *QUICK_GATE]


def push(env: RolloutEnv, fleet: Fleet, image: str, *args: str) -> tuple[int, EdgeRollout, str]:
    result = env.cli("push", image, "--group", fleet.group, "--app", fleet.app, *args, "--output", "json")
    assert result.stdout.strip(), f"no output (exit {result.returncode}): {result.stderr}"
    return result.returncode, EdgeRollout.from_json(json.loads(result.stdout)), result.stderr


def test_the_engine_runs_as_its_service_account_held_to_edgekit_s_shape(rollout_env: RolloutEnv,
                                                                         new_fleet: NewFleet) -> None:
    """Every rollout of this file runs as ``edgekit-engine`` (RBAC + admission policies of ``edgekit
    install``), in process and through the CLI; here: that identity, and that it is held."""
    env = rollout_env
    fleet = new_fleet(1)
    cli_client = KubeClient.from_kubeconfig(env.env()["KUBECONFIG"])
    for client in (env.cluster.client, cli_client):
        review = client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{env.namespace}:edgekit-engine"
    cli_client.close()
    with pytest.raises(KubeForbiddenError, match="denied request"):
        env.cluster.client.request("PATCH", f"/api/v1/nodes/{fleet.nodes[0]}", body={"spec": {"unschedulable": True}},
                                   content_type="application/merge-patch+json")
    fleet.deploy(env.images["1.0"])  # while its own DaemonSets pass


def test_healthy_model_rolls_out_over_200_nodes_in_4_waves(rollout_env: RolloutEnv, new_fleet: NewFleet) -> None:
    env = rollout_env
    fleet = new_fleet(200)
    old, new = env.images["1.0"], env.images["2.0"]
    fleet.deploy(old)
    code, ro, err = push(env, fleet, f"{env.registry.host}/models/digits:2.0", "--waves", "1,5%,25%,100%",
                         "--spread-by", "topology.kubernetes.io/zone", *FAST)
    assert code == 0, err
    assert ro.status.phase == "Succeeded"
    assert ro.spec.target.image == new                      # the tag was resolved once and pinned
    assert [len(w.nodes) for w in ro.status.waves] == [1, 9, 40, 150]
    assert all(w.verdict is not None and w.verdict.decision == "advance" for w in ro.status.waves)
    for wave in ro.status.waves[1:]:
        assert len(wave.zones) == 3                           # every wave spans the zones
    canary = ro.status.waves[0]
    assert canary.telemetry is not None and canary.telemetry.on_digest == 1
    assert canary.baseline is not None and canary.baseline.devices == 1
    assert set(fleet.revisions().values()) == {revision_of(new)}
    assert fleet.daemonsets() == {f"{fleet.app}-{revision_of(new)}"}   # the old DaemonSet is gone
    fleet.wait_running(revision_of(new))
    # signed: the devices verify with the push's key, shipped in the ConfigMap their pods mount
    ns = env.namespace
    key_map = env.client.get(f"/api/v1/namespaces/{ns}/configmaps/edgekit-cosign-key")
    assert key_map["data"] == {"cosign.pub": env.public_key.read_text()}
    ds = env.client.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets/{fleet.app}-{revision_of(new)}")
    keys = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys")
    assert keys["configMap"]["name"] == "edgekit-cosign-key"
    config = env.client.get(f"/api/v1/namespaces/{ns}/configmaps/{fleet.app}-{revision_of(new)}")
    assert json.loads(config["data"]["config.json"])["public_key"] == "/etc/edgekit-agent/keys/cosign.pub"
    devices = [s.device for n, s in env.sim.slots.items() if n in fleet.nodes and s.device is not None]
    assert devices and {d.core.signature for d in devices} == {"verified"}


def test_error_rate_is_stopped_at_the_canary_and_rolled_back(rollout_env: RolloutEnv, new_fleet: NewFleet,
                                                            faults: object) -> None:
    env = rollout_env
    fleet = new_fleet(30)
    old, bad = env.images["1.0"], env.images["3.0"]
    fleet.deploy(old)
    env.sim.faults.set(revision_of(bad), error_rate=0.2)
    code, ro, err = push(env, fleet, bad, "--waves", "1,50%,100%", "--bake", "4s", "--wave-timeout", "40s",
                         "--baseline", "2s", "--max-error-rate", "2%")
    assert code == 69, err
    assert "rolled back" in err and "error-rate" in err
    assert ro.status.phase == "RolledBack"
    canary = ro.status.waves[0]
    assert canary.phase == "Failed" and canary.verdict is not None
    assert canary.verdict.gate == "error-rate"
    fig = canary.verdict.figure("error-rate")
    assert fig is not None and fig.threshold == pytest.approx(0.02) and fig.value is not None and fig.value > 0.05
    assert "error rate" in canary.verdict.reason and "max 2%" in canary.verdict.reason
    assert [w.phase for w in ro.status.waves[1:]] == ["Pending", "Pending"]
    assert set(fleet.revisions().values()) == {revision_of(old)}      # every node back
    assert fleet.daemonsets() == {f"{fleet.app}-{revision_of(old)}"}  # the new DaemonSet removed
    assert ro.status.condition("RolledBack")["reason"] == "ErrorRate"  # type: ignore[index]


def test_latency_regression_is_caught(rollout_env: RolloutEnv, new_fleet: NewFleet, faults: object) -> None:
    env = rollout_env
    fleet = new_fleet(20)
    old, slow = env.images["1.0"], env.images["4.0"]
    fleet.deploy(old)
    env.sim.faults.set(revision_of(slow), latency_ms=25)
    code, ro, err = push(env, fleet, slow, "--waves", "2,100%", "--bake", "3s", "--wave-timeout", "40s",
                         "--baseline", "3s", "--max-p95-regression", "50%")
    assert code == 69, err
    verdict = ro.status.waves[0].verdict
    assert verdict is not None and verdict.gate == "p95-regression"
    fig = verdict.figure("p95-regression")
    assert fig is not None and fig.value is not None and fig.value > 0.5
    baseline = ro.status.waves[0].baseline
    assert baseline is not None and baseline.p95_ms is not None and baseline.p95_ms < 25
    assert set(fleet.revisions().values()) == {revision_of(old)}


def test_engine_killed_mid_wave_then_resume_finishes(rollout_env: RolloutEnv, new_fleet: NewFleet,
                                                     tmp_path: Path) -> None:
    env = rollout_env
    fleet = new_fleet(30)
    old, new = env.images["1.0"], env.images["5.0"]
    fleet.deploy(old)
    engine = env.spawn("push", new, "--group", fleet.group, "--app", fleet.app, "--waves", "1,50%,100%",
                       "--bake", "6s", "--wave-timeout", "60s", "--baseline", "2s", *QUICK_GATE,
                       log=tmp_path / "push.log")
    try:
        ro = env.wait_rollout(fleet, lambda ro: ro.status.current_wave == 1
                              and ro.status.waves[1].phase in ("Waiting", "Baking"), timeout=120)
    finally:
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
    killed_at = env.cluster.get_rollout(env.namespace, ro.name)
    assert killed_at.status.phase == "Progressing"
    labels = fleet.revisions()
    moved = {n for n, rev in labels.items() if rev == revision_of(new)}
    assert 1 < len(moved) < 30                                     # stopped half-way

    result = env.cli("rollout", "resume", ro.name, "--output", "json")
    assert result.returncode == 0, result.stderr
    done = EdgeRollout.from_json(json.loads(result.stdout))
    assert done.status.phase == "Succeeded"
    assert any(h.event == "engine" and "took the rollout at wave 2/3" in h.message for h in done.status.history)
    labels = fleet.revisions()
    assert set(labels.values()) == {revision_of(new)} and len(labels) == 30   # no node unaccounted for
    assert sorted(n for w in done.status.waves for n in w.nodes) == sorted(fleet.nodes)
    assert fleet.daemonsets() == {f"{fleet.app}-{revision_of(new)}"}


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_offline_devices(rollout_env: RolloutEnv, new_fleet: NewFleet,
                         faults: object, policy: str) -> None:
    env = rollout_env
    fleet = new_fleet(20)
    old, new = env.images["1.0"], env.images["6.0"]
    fleet.deploy(old)
    rev = revision_of(new)
    seed = next(seed for seed in range(1000)   # a seed that takes exactly 2 of the 20 devices down
                if sum(Fault(offline=0.1, seed=seed).offline_for(n, rev) for n in fleet.nodes) == 2)
    env.sim.faults.set(rev, offline=0.1, seed=seed)
    timeout = "12s" if policy == "fail" else "40s"
    # this is about the reporting gate: on a busy machine 10 devices may not reach the error-rate
    # test's minimum sample in 12 s, and the first wave must not fail on that instead
    code, ro, err = push(env, fleet, new, "--waves", "50%,100%", "--bake", "2s", "--baseline", "2s",
                         "--wave-timeout", timeout, "--offline-policy", policy, "--min-reporting", "100%",
                         "--inconclusive", "pass")
    offline = {n for n in fleet.nodes if Fault(offline=0.1, seed=seed).offline_for(n, rev)}
    if policy == "skip":
        assert code == 0, err
        assert ro.status.phase == "Succeeded"
        skipped = {n for w in ro.status.waves if w.verdict for n in w.verdict.skipped}
        assert skipped == offline
        assert "skipped" in ro.status.message and all(n in ro.status.message for n in sorted(offline)[:3])
        assert set(fleet.revisions().values()) == {revision_of(new)}
    else:
        assert code == 69, err
        failed = next(w for w in ro.status.waves if w.phase == "Failed")   # the wave holding an offline device
        assert set(failed.nodes) & offline
        verdict = failed.verdict
        assert verdict is not None and verdict.gate == "reporting" and "wave timeout" in verdict.reason
        holds = [h for h in ro.status.history if h.event == "rollback-started"]
        assert holds and holds[0].at - (failed.moved_at or 0) >= 12
        assert set(fleet.revisions().values()) == {revision_of(old)}


def test_pause_resume_promote_abort_undo(rollout_env: RolloutEnv, new_fleet: NewFleet, tmp_path: Path) -> None:
    env = rollout_env
    fleet = new_fleet(12)
    v1, v2, v3 = env.images["1.0"], env.images["2.0"], env.images["3.0"]
    fleet.deploy(v1)

    engine = env.spawn("push", v2, "--group", fleet.group, "--app", fleet.app, "--waves", "1,50%,100%",
                       "--manual-promote", *FAST, log=tmp_path / "push.log")
    try:
        ro = env.wait_rollout(fleet, lambda r: r.spec.target.image == v2 and r.active, timeout=60)
        gate = lambda i: (lambda r: r.status.waves[i].verdict is not None  # noqa: E731
                          and r.status.waves[i].verdict.gate == "promotion")
        env.wait_rollout(fleet, gate(0), name=ro.name)
        second = env.cli("rollout", "resume", ro.name)             # a second engine is refused
        assert second.returncode == 65 and "is being run by engine" in second.stderr, second.stderr
        shown = env.cli("rollout", "status", "--app", fleet.app, check=True).stdout
        assert ro.name in shown and "Progressing" in shown and "promotion" in shown
        env.cli("rollout", "pause", ro.name, check=True)
        env.wait_rollout(fleet, lambda r: r.status.phase == "Paused", name=ro.name)
        env.cli("rollout", "promote", ro.name, check=True)          # promoted, but paused: it waits
        time.sleep(2)
        held = env.cluster.get_rollout(env.namespace, ro.name)
        assert held.status.current_wave == 0 and held.status.waves[0].promoted
        env.cli("rollout", "resume", ro.name, "--detach", check=True)
        env.wait_rollout(fleet, gate(1), name=ro.name)
        env.cli("rollout", "promote", "--app", fleet.app, "--group", fleet.group, check=True)
        env.wait_rollout(fleet, gate(2), name=ro.name)
        env.cli("rollout", "promote", ro.name, check=True)
        assert engine.wait(60) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
    done = env.cluster.get_rollout(env.namespace, ro.name)
    assert done.status.phase == "Succeeded"
    assert set(fleet.revisions().values()) == {revision_of(v2)}

    # undo: back to v1 as a new rollout
    result = env.cli("rollout", "undo", "--app", fleet.app, "--group", fleet.group, "--waves", "100%", *FAST,
                     "--output", "json")
    assert result.returncode == 0, result.stderr
    undone = EdgeRollout.from_json(json.loads(result.stdout))
    assert undone.spec.undo_of == ro.name and undone.spec.target.image == v1
    assert set(fleet.revisions().values()) == {revision_of(v1)}

    # abort: every moved node goes back
    engine = env.spawn("push", v3, "--group", fleet.group, "--app", fleet.app, "--waves", "50%,100%",
                       "--manual-promote", *FAST, log=tmp_path / "push3.log")
    try:
        ro3 = env.wait_rollout(fleet, lambda r: r.spec.target.image == v3 and r.status.waves[0].phase == "Baking")
        env.cli("rollout", "abort", ro3.name, "--reason", "wrong model", check=True)
        assert engine.wait(60) == 69
    finally:
        if engine.poll() is None:
            engine.kill()
    aborted = env.cluster.get_rollout(env.namespace, ro3.name)
    assert aborted.status.phase == "RolledBack" and "aborted: wrong model" in aborted.status.message
    assert set(fleet.revisions().values()) == {revision_of(v1)}

    history = json.loads(env.cli("rollout", "history", "--app", fleet.app, "--output", "json", check=True).stdout)
    assert [h["phase"] for h in history] == ["Succeeded", "Succeeded", "RolledBack"]
    assert history[1]["undoOf"] == ro.name


def test_bad_inputs_change_nothing(rollout_env: RolloutEnv, new_fleet: NewFleet, tmp_path: Path) -> None:
    from edgekit.image.signing import write_keypair

    env = rollout_env
    fleet = new_fleet(5)
    v1, v2 = env.images["1.0"], env.images["2.0"]
    fleet.deploy(v1)
    before = (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()])
    _, pub = write_keypair(tmp_path / "key", b"pw")
    tag = f"{env.registry.host}/models/digits:2.0"

    cases = [
        (["push", v2, "-g", "no-such-group", "-a", fleet.app], 61, "unknown device group 'no-such-group'"),
        (["push", v2, "-g", "selector:edgekit.io/group=nobody-here", "-a", fleet.app], 62, "has no nodes"),
        (["push", tag, "-g", fleet.group, "-a", fleet.app, "--require-digest"], 63, "has no digest"),
        (["push", v2, "-g", fleet.group, "-a", fleet.app, "--public-key", str(pub)], 64, "verifies with key"),
        (["push", v2, "-g", fleet.group, "-a", fleet.app, "--waves", "1,2,3"], 66, "cover 3 of 5 nodes"),
        (["push", v2, "-g", fleet.group, "-a", fleet.app, "--waves", "1,50%"], 66, "must reach 100%"),
        (["push", v2, "-g", fleet.group, "-a", fleet.app, "--max-error-rate", "120%"], 67, "--max-error-rate"),
        (["push", v2, "-g", fleet.group, "-a", fleet.app, "--min-reporting", "0"], 67, "--min-reporting"),
        (["rollout", "plan", v2, "-g", "no-such-group", "-a", fleet.app], 61, "unknown device group"),
    ]
    for args, code, fragment in cases:
        result = env.cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), result.stderr
        assert fragment in lines[0], (fragment, lines[0])
    assert (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()]) == before

    # signed by default: without a public key (and without --allow-unsigned) nothing starts or runs
    unkeyed = env.env(EDGEKIT_ROLLOUT_PUBLIC_KEY="")
    for args in (["push", v2, "-g", fleet.group, "-a", fleet.app],
                 ["push", v2, "-g", fleet.group, "-a", fleet.app, "--detach"],
                 ["rollout", "undo", "-a", fleet.app, "-g", fleet.group],
                 ["rollout", "resume", "--app", fleet.app, "--group", fleet.group],
                 ["controller"]):
        result = env.cli(*args, env=unkeyed, timeout=60)
        assert result.returncode == 85, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "requires a public key" in result.stderr, result.stderr
    assert (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()]) == before

    # the gates cannot read telemetry: refused before anything is created
    nobroker = env.cli("push", v2, "-g", fleet.group, "-a", fleet.app,
                       env=env.env(EDGEKIT_FLEET_BROKERS="mqtt://127.0.0.1:9", EDGEKIT_FLEET_CONNECT_TIMEOUT="1"))
    assert nobroker.returncode == 51 and nobroker.stderr.count("\n") == 1, nobroker.stderr
    assert (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()]) == before

    # a plan changes nothing either, and shows every wave, its bytes and the gates; signed images pass
    from edgekit_agent.oci.reference import parse_reference
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.image.signing import load_private_key, sign_image

    sign_image(parse_reference(env.images["4.0"]), load_private_key(tmp_path / "key.key", b"pw"),
               options=RegistryOptions(insecure=True))
    plan = env.cli("rollout", "plan", f"{env.registry.host}/models/digits:4.0", "-g", fleet.group, "-a", fleet.app,
                   "--waves", "1,100%", "--public-key", str(pub), "--output", "json")
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["image"] == env.images["4.0"] and data["signedBy"]
    assert [len(w["nodes"]) for w in data["waves"]] == [1, 4] and data["bytesToShip"] > 0
    assert data["previous"] == v1 and "error rate ≤ 1%" in data["gates"]
    table = env.cli("rollout", "plan", env.images["4.0"], "-g", fleet.group, "-a", fleet.app)
    assert table.returncode == 0 and "bytes to ship" in table.stdout and "gates:" in table.stdout
    assert (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()]) == before

    # a second push on the same app/group while one runs
    first = env.cli("push", v2, "-g", fleet.group, "-a", fleet.app, "--detach", "--manual-promote", *FAST)
    assert first.returncode == 0, first.stderr
    snapshot = (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()])
    second = env.cli("push", env.images["3.0"], "-g", fleet.group, "-a", fleet.app)
    assert second.returncode == 65
    assert "is Pending" in second.stderr and second.stderr.count("\n") == 1
    assert (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()]) == snapshot
    env.cli("rollout", "abort", "--app", fleet.app, "--group", fleet.group, check=True)


def test_controller_runs_detached_rollouts(rollout_env: RolloutEnv, new_fleet: NewFleet, tmp_path: Path) -> None:
    env = rollout_env
    fleet = new_fleet(10)
    v1, v2 = env.images["1.0"], env.images["2.0"]
    fleet.deploy(v1)
    # settings do not travel in the EdgeRollout: the controller renders with its own flags
    controller = env.spawn("controller", "--parallel", "2", "--api-from-namespace", "shop",
                           log=tmp_path / "controller.log")
    try:
        created = env.cli("push", v2, "-g", fleet.group, "-a", fleet.app, "--detach", "--waves", "50%,100%", *FAST,
                          "--output", "json")
        assert created.returncode == 0, created.stderr
        name = json.loads(created.stdout)["metadata"]["name"]
        done = env.wait_rollout(fleet, lambda r: not r.active, name=name, timeout=120)
        assert done.status.phase == "Succeeded", done.status.message
        assert set(fleet.revisions().values()) == {revision_of(v2)}
        assert any(h.event == "engine" for h in done.status.history)
        policy = env.client.request("GET", f"/apis/networking.k8s.io/v1/namespaces/{env.namespace}/"
                                           f"networkpolicies/{fleet.app}")
        assert [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for rule in policy["spec"]["ingress"] for p in rule["from"]] == ["shop"]
    finally:
        controller.send_signal(signal.SIGTERM)
        code = controller.wait(30)
    log = (tmp_path / "controller.log").read_text()
    assert code == 0, log
    assert f"{name}: taking over" in log and f"{name}: Succeeded" in log


def test_release_policy_on_the_rehearsal_fleet(rollout_env: RolloutEnv, new_fleet: NewFleet, digits_model: Path,
                                               cosign: Path, tmp_path: Path) -> None:
    """Attested by ``package --sign-key`` with the release key: cosign and edgekit verify the
    attestation; an image over the accuracy budget is refused with the fleet untouched; one in
    budget passes the policy and rolls out."""
    from tests.fixtures.rollout import RELEASE_PASSWORD
    from tests.test_images_attest import write_report
    from tests.test_images_signing import _cosign

    env = rollout_env
    fleet = new_fleet(3)
    fleet.deploy(env.images["1.0"])
    key = env.public_key.with_suffix(".key")
    made: dict[str, str] = {}
    for version, score in (("7.0", 0.995), ("8.0", 0.9)):
        report = write_report(tmp_path / f"{version}.json", score=score)
        out = env.cli("package", str(digits_model), "--name", "digits", "--version", version, "--report", str(report),
                      "--push", f"{env.registry.host}/models/digits", "--sign-key", str(key),
                      "--output", "json", env=env.env(EDGEKIT_KEY_PASSWORD=RELEASE_PASSWORD.decode()), check=True)
        made[version] = f"{env.registry.host}/models/digits@{json.loads(out.stdout)['push']['digest']}"
    good, lossy = made["7.0"], made["8.0"]
    verified = _cosign(cosign, tmp_path, "verify-attestation", "--key", env.public_key, "--type",
                       "https://edgekit.io/attestations/quantization/v1", "--insecure-ignore-tlog=true",
                       "--allow-http-registry", "--trusted-root", tmp_path / "trusted_root.json", good)
    assert verified.returncode == 0, verified.stderr
    checked = env.cli("verify", good, "--public-key", str(env.public_key), "--output", "json", check=True)
    assert json.loads(checked.stdout)["attestation"]["predicate"]["accuracy"]["drop"] == pytest.approx(0.005)

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"max_accuracy_drop": 0.01, "platform": "linux/amd64"}))
    before = (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()])
    refused = env.cli("push", lossy, "-g", fleet.group, "-a", fleet.app, "--policy", str(policy), *FAST)
    assert refused.returncode == 93, refused.stderr
    assert refused.stderr.count("\n") == 1 and "drop 0.1 is over the budget 0.01" in refused.stderr
    assert (fleet.revisions(), fleet.daemonsets(), [r.name for r in fleet.rollouts()]) == before

    code, ro, err = push(env, fleet, f"{env.registry.host}/models/digits:7.0", "--policy", str(policy), *FAST)
    assert code == 0, err
    assert ro.status.phase == "Succeeded" and ro.spec.target.image == good
    assert set(fleet.revisions().values()) == {revision_of(good)}
    fleet.wait_running(revision_of(good))
