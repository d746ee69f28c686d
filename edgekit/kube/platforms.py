"""Which CPU architectures a revision may run on: those both the agent image and the model image
provide (``os/arch`` from their OCI indexes), as a ``kubernetes.io/arch`` rule. Without it an
arm64-only agent image lands on the amd64 nodes of a mixed group and dies with "exec format error"."""

from __future__ import annotations

from collections.abc import Iterable

from edgekit.errors import ConfigError

__all__ = ["DEFAULT_AGENT_PLATFORMS", "common_arches", "parse_platforms"]

DEFAULT_AGENT_PLATFORMS = ("linux/amd64", "linux/arm64")  # what scripts/build-agent-image and Dockerfile.arm64 make


def parse_platforms(items: Iterable[str], field: str) -> tuple[str, ...]:
    """``os/arch[/variant]`` strings, checked; ConfigError naming ``field`` otherwise."""
    out = []
    for item in items:
        parts = item.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"{item!r} is not os/arch", field=field)
        out.append("/".join(parts))
    return tuple(out)


def common_arches(agent: Iterable[str], model: Iterable[str] | None) -> list[str]:
    """Sorted linux architectures in both lists (``model`` None: not known, the agent's alone).
    ConfigError when there is none: no node could run this revision."""
    agent_arches = {p.split("/")[1] for p in parse_platforms(agent, "agent_platforms") if p.startswith("linux/")}
    arches = agent_arches
    if model is not None:
        model_arches = {p.split("/")[1] for p in parse_platforms(model, "model_platforms") if p.startswith("linux/")}
        arches = agent_arches & model_arches
        if not arches:
            raise ConfigError(f"the agent image ({', '.join(sorted(agent_arches)) or 'no linux'}) and the model "
                              f"image ({', '.join(sorted(model_arches)) or 'no linux'}) share no architecture",
                              field="model_platforms",
                              hint="package the model for the agent's platforms (edgekit package --platform)")
    if not arches:
        raise ConfigError("the agent image provides no linux platform", field="agent_platforms")
    return sorted(arches)
