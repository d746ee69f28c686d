"""Shadow evaluation end to end on the rehearsal fleet (real control plane, broker, registry and the
simulator's real agent cores): a quietly wrong model — the digits model with degraded weights,
about 0.9 top-1 agreement and no errors — is stopped before any device switches; the same model
unchanged passes the shadow wave and rolls out."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator

import pytest

from edgekit.kube import names
from edgekit.rollout.resource import EdgeRollout
from edgekit.rollout.shadowing import shadow_revision
from tests.fixtures.models import DIGITS, degrade_weights, digits_inputs, top1_agreement
from tests.fixtures.rollout import FIXED_CREATED, RELEASE_PASSWORD, Fleet, ReleaseKey, RolloutEnv, revision_of

pytestmark = [pytest.mark.kube, pytest.mark.mqtt, pytest.mark.registry, pytest.mark.slow]

SHADOW_ARGS = ["--shadow-first", "--min-agreement", "0.98", "--shadow-ratio", "1", "--shadow-min-samples", "60",
               "--shadow-timeout", "120s", "--waves", "2,100%", "--bake", "2s", "--wave-timeout", "40s",
               "--baseline", "2s"]


@pytest.fixture(scope="module")
def quietly_wrong(rollout_env: RolloutEnv, release_key: ReleaseKey,
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float]:
    """The degraded digits model packaged, pushed and signed like the others; with its agreement
    measured here, with onnxruntime on the digits eval split."""
    from edgekit_agent.oci.reference import parse_reference
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.image.building import PackageSettings, package
    from edgekit.image.pushing import push_layout
    from edgekit.image.signing import load_private_key, sign_image

    work = tmp_path_factory.mktemp("quietly-wrong")
    bad, _ = degrade_weights(DIGITS / "digits.onnx", work / "digits-bad.onnx", target=0.9)
    agreement = top1_agreement(DIGITS / "digits.onnx", bad, digits_inputs())
    package(bad, PackageSettings(name="digits", version="7.0-q", created=FIXED_CREATED), work / "layout")
    options = RegistryOptions(insecure=True)
    host = rollout_env.registry.host
    pushed = push_layout(work / "layout", parse_reference(f"{host}/models/digits:7.0-q"), options=options)
    image = f"{host}/models/digits@{pushed.digest}"
    sign_image(parse_reference(image), load_private_key(release_key.private, RELEASE_PASSWORD), options=options)
    return image, agreement


@pytest.fixture
def live_inputs(rollout_env: RolloutEnv) -> Iterator[None]:
    """Devices started during the test send rows of the digits eval split, ten a second."""
    sim = rollout_env.sim
    before = sim.settings
    sim.settings = dataclasses.replace(before, inputs=digits_inputs(), rate=10.0)
    yield
    sim.settings = before


class LabelWatch:
    """Every revision label value the fleet's nodes carry, seen by polling the API until stopped."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.seen: dict[str, set[str | None]] = {}
        self.pods: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LabelWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        env = self.fleet.env
        while not self._stop.wait(0.2):
            for node, rev in self.fleet.revisions().items():
                self.seen.setdefault(node, set()).add(rev)
            pods = env.client.list(f"/api/v1/namespaces/{env.namespace}/pods",
                                   label_selector=f"{names.APP_LABEL}={self.fleet.app}")
            self.pods |= {(p["metadata"].get("labels") or {}).get(names.REVISION_LABEL, "") for p in pods}


def push(env: RolloutEnv, fleet: Fleet, image: str, *args: str) -> tuple[int, EdgeRollout, str]:
    result = env.cli("push", image, "--group", fleet.group, "--app", fleet.app, *args, "--output", "json")
    assert result.stdout.strip(), f"no output (exit {result.returncode}): {result.stderr}"
    return result.returncode, EdgeRollout.from_json(json.loads(result.stdout)), result.stderr


def test_a_quietly_wrong_model_is_stopped_by_shadow_evaluation(
        rollout_env: RolloutEnv, new_fleet: Callable[..., Fleet], quietly_wrong: tuple[str, float],
        live_inputs: None) -> None:
    env = rollout_env
    bad, measured = quietly_wrong
    assert 0.85 <= measured <= 0.95  # independently of the code under test: it is quietly wrong
    fleet = new_fleet(6)
    old = env.images["1.0"]
    fleet.deploy(old)
    with LabelWatch(fleet) as watch:
        code, ro, err = push(env, fleet, bad, *SHADOW_ARGS)
    assert code == 69, err
    assert ro.status.phase == "RolledBack"
    sh = ro.status.shadow
    assert sh is not None and sh.phase == "Failed" and len(sh.nodes) == 2
    verdict = sh.verdict
    assert verdict is not None and verdict.decision == "fail" and "SPRT" in verdict.test
    assert verdict.samples >= 60 and verdict.confidence == pytest.approx(0.99)
    assert verdict.agreement is not None and abs(verdict.agreement - measured) < 0.1
    assert verdict.figures.errors == 0 and verdict.figures.reporting == 2
    # the canary ran the candidate in shadow, and no node ever switched to it
    assert all(w.phase == "Pending" for w in ro.status.waves)
    shadow_rev = shadow_revision(revision_of(bad))
    assert {n for n, revs in watch.seen.items() if shadow_rev in revs} <= set(sh.nodes)
    assert all(revision_of(bad) not in revs for revs in watch.seen.values())
    assert revision_of(bad) not in watch.pods                   # its DaemonSet never scheduled a pod
    assert set(fleet.revisions().values()) == {revision_of(old)}
    assert fleet.daemonsets() == {f"{fleet.app}-{revision_of(old)}"}
    assert ro.status.condition("RolledBack")["reason"] == "ShadowAgreement"  # type: ignore[index]
    assert "shadow failed" in err


def test_a_good_model_passes_the_shadow_wave_and_rolls_out(
        rollout_env: RolloutEnv, new_fleet: Callable[..., Fleet], live_inputs: None) -> None:
    env = rollout_env
    fleet = new_fleet(6)
    old, new = env.images["1.0"], env.images["6.0"]  # same weights, another image
    fleet.deploy(old)
    code, ro, err = push(env, fleet, new, *SHADOW_ARGS)
    assert code == 0, err
    assert ro.status.phase == "Succeeded"
    sh = ro.status.shadow
    assert sh is not None and sh.phase == "Passed" and sh.verdict is not None
    assert sh.verdict.agreement == 1.0 and sh.verdict.llr is not None and sh.verdict.pass_at is not None
    assert sh.verdict.llr <= sh.verdict.pass_at
    events = [h.event for h in ro.status.history]
    assert events.index("shadow-passed") < events.index("wave-started")
    assert set(fleet.revisions().values()) == {revision_of(new)}
    assert fleet.daemonsets() == {f"{fleet.app}-{revision_of(new)}"}
