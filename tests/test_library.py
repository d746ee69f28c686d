"""The library face (``import edgekit``): small, documented, every name resolves, and cheap to import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import edgekit

HEAVY = ("onnx", "onnxruntime", "kubernetes", "paho", "numpy", "edgekit.rollout", "edgekit.fleet")


def test_the_face_is_small_and_every_name_resolves_with_a_docstring() -> None:
    assert len(edgekit.__all__) <= 15
    assert sorted(edgekit.__all__) == sorted(edgekit._FACE)
    for name in edgekit.__all__:
        value = getattr(edgekit, name)
        assert inspect.getdoc(value), f"edgekit.{name} has no docstring"
        assert name in dir(edgekit)


def test_unknown_names_are_attribute_errors() -> None:
    try:
        edgekit.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("edgekit.no_such_name resolved")


def test_importing_edgekit_loads_no_heavy_module_until_a_name_is_used() -> None:
    code = ("import sys, edgekit\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
            "edgekit.RolloutClient\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = out.splitlines()
    assert before == ""
    assert "edgekit.rollout" in after.split(",")  # the name did load its module on first use


def test_rollout_client_plans_pushes_and_reads_back_on_the_in_memory_cluster() -> None:
    from edgekit.rollout.memory import MemoryCluster, MemoryTelemetry
    from edgekit.rollout.resource import ImageRef, revision_for
    from edgekit.rollout.service import Session
    from edgekit.rollout.settings import RolloutSettings

    digest = "sha256:" + "1" * 64
    pinned = ImageRef(f"reg/detector@{digest}", digest, revision_for(digest))

    class Images:  # the ImagePort of a registry that holds one image
        def pin(self, image: str) -> ImageRef:
            assert image == "reg/detector:2.0"
            return pinned

        def verify_signature(self, image: ImageRef) -> str | None:
            return None

        def image_size(self, image: ImageRef) -> int | None:
            return 1000

        def platforms(self, image: ImageRef) -> tuple[str, ...] | None:
            return ("linux/arm64", "linux/riscv64")

    cluster = MemoryCluster({"cameras": {f"edge-{i}": {} for i in range(4)}})
    session = Session(cluster, RolloutSettings(tick_seconds=0.01, allow_unsigned=True), images=Images(),
                      telemetry=MemoryTelemetry(cluster, "detector"))
    strategy = {"waves": "1,100%", "bake": "0.05s", "baseline": "0s"}
    with edgekit.RolloutClient(session) as rollouts:
        plan = rollouts.plan("reg/detector:2.0", group="cameras", app="detector", **strategy)
        assert [len(w.nodes) for w in plan.rollout.status.waves] == [1, 3] and plan.image_bytes == 1000
        assert plan.rollout.spec.model_platforms == ("linux/arm64", "linux/riscv64")
        assert plan.rollout.spec.annotations()["edgekit.io/model-platforms"] == "linux/arm64,linux/riscv64"
        assert not cluster.rollouts                    # planning writes nothing
        ro = rollouts.push("reg/detector:2.0", group="cameras", app="detector", **strategy)
        assert ro.status.phase == "Succeeded"
        assert {cluster.revision_of("detector", n) for n in cluster.groups["cameras"]} == {pinned.revision}
        assert rollouts.status(app="detector", group="cameras").name == ro.name
        assert [h.name for h in rollouts.history(app="detector")] == [ro.name]


def test_a_push_whose_images_share_no_architecture_is_refused_before_anything_is_written() -> None:
    from edgekit.errors import ConfigError
    from edgekit.rollout.memory import MemoryCluster
    from edgekit.rollout.resource import ImageRef, revision_for
    from edgekit.rollout.service import Session
    from edgekit.rollout.settings import RolloutSettings

    digest = "sha256:" + "2" * 64
    pinned = ImageRef(f"reg/detector@{digest}", digest, revision_for(digest))

    class Images:  # a registry holding an arm64-only model image
        def pin(self, image: str) -> ImageRef:
            return pinned

        def verify_signature(self, image: ImageRef) -> str | None:
            return None

        def image_size(self, image: ImageRef) -> int | None:
            return None

        def platforms(self, image: ImageRef) -> tuple[str, ...] | None:
            return ("linux/arm64",)

    cluster = MemoryCluster({"cameras": {f"edge-{i}": {} for i in range(2)}})
    settings = RolloutSettings(tick_seconds=0.01, allow_unsigned=True, agent_platforms=("linux/amd64",))
    with edgekit.RolloutClient(Session(cluster, settings, images=Images())) as rollouts, \
            pytest.raises(ConfigError, match="share no architecture"):
        rollouts.plan("reg/detector:2.0", group="cameras", app="detector", waves="1,100%")
    assert not cluster.rollouts
