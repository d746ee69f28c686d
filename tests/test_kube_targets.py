"""The TARGETS table is the one list of platforms: the CRD schema, the settings, the device groups
and the --target choices all follow it."""

from __future__ import annotations

import pytest

from edgekit.cli.rollout_options import image_options
from edgekit.errors import ConfigError
from edgekit.kube.groups import parse_group
from edgekit.kube.install import edgerollout_crd
from edgekit.kube.rendering import RenderSettings
from edgekit.kube.targets import GROUP_FORMS, TARGETS
from edgekit.rollout.settings import RolloutSettings


def test_schema_and_flags_list_the_table() -> None:
    spec = edgerollout_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["target"]["enum"] == list(TARGETS) == ["k3s", "kubeedge", "openyurt"]
    command = image_options(lambda **kw: None)
    target = next(p for p in command.__click_params__ if p.name == "target")  # type: ignore[attr-defined]
    assert list(target.type.choices) == list(TARGETS)
    assert GROUP_FORMS == "NAME, kubeedge:NAME, openyurt:NAME or selector:EXPR"


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_bare_group_name_means_the_targets_label(name: str) -> None:
    group = parse_group("cams", name)
    assert group.selector == f"{TARGETS[name].group_label}=cams" and group.kind == TARGETS[name].group_kind
    if name != "k3s":
        assert parse_group(f"{name}:cams").selector == group.selector


def test_an_unknown_target_is_refused_everywhere() -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'nope' \(k3s, kubeedge, openyurt\)"):
        RolloutSettings(target="nope")
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        RenderSettings(app="a", image="reg/m:1", group=parse_group("g"), target="nope")
