"""A build per device class on the rehearsal fleet: one signed image with a layer per platform, and
the simulator's devices (the real agent core) on amd64 and arm64 KWOK nodes each fetch, verify and
load the model of their own node's platform."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from edgekit_agent.oci.reference import parse_reference
from edgekit_agent.oci.registry import RegistryOptions

from edgekit.image.building import PackageSettings, package
from edgekit.image.pushing import push_layout
from edgekit.image.signing import load_private_key, sign_image
from edgekit.kube import names
from edgekit.rehearsal.nodes import FleetSpec
from tests.fixtures.rollout import FIXED_CREATED, RELEASE_PASSWORD, Fleet, ReleaseKey, RolloutEnv, revision_of
from tests.test_images_platforms import _quantize

pytestmark = [pytest.mark.kube, pytest.mark.mqtt, pytest.mark.registry, pytest.mark.slow]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_device_of_each_class_loads_its_own_layer(rollout_env: RolloutEnv, release_key: ReleaseKey,
                                                     tmp_path: Path) -> None:
    env = rollout_env
    builds = {"linux/amd64": _quantize(tmp_path / "d.linux-amd64.onnx", activation="u8", reduce_range=True,
                                       ratio=0.7, score=0.995),
              "linux/arm64": _quantize(tmp_path / "d.linux-arm64.onnx", activation="s8", reduce_range=False,
                                       ratio=1.3, score=0.99)}
    built = package(None, PackageSettings(name="digits", version="7.0", created=FIXED_CREATED,
                                          platform_models=builds), tmp_path / "layout")
    insecure = RegistryOptions(insecure=True)
    pushed = push_layout(built.path, parse_reference(f"{env.registry.host}/models/digits-classes:7.0"),
                         options=insecure)
    image = f"{env.registry.host}/models/digits-classes@{pushed.digest}"
    sign_image(parse_reference(image), load_private_key(release_key.private, RELEASE_PASSWORD), options=insecure)

    group, app = env.kube.unique("mixed"), env.kube.unique("det")
    created = env.kube.add_nodes(FleetSpec(pools={group: 4}, arch={"amd64": 1.0, "arm64": 1.0}))
    fleet = Fleet(env, group, app, sorted(created))
    try:
        nodes = env.client.list("/api/v1/nodes", label_selector=f"{names.GROUP_LABEL}={group}")
        arch = {n["metadata"]["name"]: n["metadata"]["labels"][names.ARCH_LABEL] for n in nodes}
        assert sorted(set(arch.values())) == ["amd64", "arm64"]
        fleet.deploy(image)
        fleet.wait_running(revision_of(image))
        loaded = {node: env.sim.slots[node].device.loaded for node in fleet.nodes}
        for node, model in loaded.items():
            plat = f"linux/{arch[node]}"
            assert model.digest == pushed.digest                      # one image, one signature...
            assert model.meta.model.sha256 == _sha256(builds[plat])    # ...and the node's own model
            assert model.provenance is not None and model.provenance.key_sha256 is not None
            assert model.provenance.layer_digest == built.layers[plat]["digest"]
        assert len({m.meta.model.sha256 for m in loaded.values()}) == 2
    finally:
        fleet.cleanup()
