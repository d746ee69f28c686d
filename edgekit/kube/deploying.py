"""Put a rendered revision (or edgekit's own CRD, RBAC and admission policies) into a cluster.

Both check what can be checked before writing anything: the group has nodes, the accelerator is
advertised by some of them, then :func:`edgekit.kube.applying.apply_objects` validates every object
with a server dry run before applying any. API calls: one list of the group's nodes plus two or three
per object, whatever the group's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgekit_agent import safejson

from edgekit.errors import ConfigError, GroupNotFoundError, KubeForbiddenError
from edgekit.kube import names
from edgekit.kube.admission import DEFAULT_AGENT_REPOSITORIES
from edgekit.kube.applying import ApplyReport, apply_objects
from edgekit.kube.client import KubeClient
from edgekit.kube.groups import group_nodes
from edgekit.kube.install import install_objects
from edgekit.kube.modelsources import choose_model_source
from edgekit.kube.rendering import RenderSettings, render
from edgekit.kube.targets import TARGETS

__all__ = ["AGENT_DEFAULTS", "DeployResult", "cluster_defaults", "deploy_revision", "install"]


@dataclass(frozen=True)
class DeployResult:
    objects: list[dict[str, Any]]
    report: ApplyReport
    group_nodes: int
    accelerator_nodes: int | None  # nodes of the group that advertise the accelerator


def _advertises(node: dict[str, Any], resource: str) -> bool:
    value = str(((node.get("status") or {}).get("allocatable") or {}).get(resource, "0"))
    return value not in ("0", "")


AGENT_DEFAULTS = "edgekit-agent-defaults"  # ConfigMap from fleet-manifests/


def cluster_defaults(client: KubeClient, settings: RenderSettings) -> RenderSettings:
    """Fill what the user left open from the namespace's ``edgekit-agent-defaults`` ConfigMap
    (``config.json``: ``broker_url``), if there is one (1 API call)."""
    if settings.broker_url is not None:
        return settings
    try:
        cm = client.get_or_none(f"/api/v1/namespaces/{settings.namespace}/configmaps/{AGENT_DEFAULTS}")
    except KubeForbiddenError:
        return settings
    try:
        defaults = safejson.loads(((cm or {}).get("data") or {}).get("config.json") or "{}")
    except ValueError as exc:
        raise ConfigError(f"ConfigMap {settings.namespace}/{AGENT_DEFAULTS}: config.json is not JSON",
                          field="broker_url") from exc
    url = defaults.get("broker_url") if isinstance(defaults, dict) else None
    return dataclasses.replace(settings, broker_url=url) if isinstance(url, str) and url else settings


def deploy_revision(client: KubeClient, settings: RenderSettings, *, dry_run: bool = False,
                    force: bool = False) -> DeployResult:
    """Render one revision and server-side apply it (``dry_run``: server dry run + diff only)."""
    settings = cluster_defaults(client, settings)
    nodes = group_nodes(client, settings.group)
    if settings.model_source == "auto":  # decided from the nodes' runtimes and kubelets
        choice = choose_model_source(nodes, TARGETS[settings.target].model_source)
        settings = dataclasses.replace(settings, model_source=choice.source)
    objects = render(settings)
    accel_nodes = None
    if settings.accelerator:
        accel_nodes = sum(_advertises(n, settings.accelerator) for n in nodes)
        if not accel_nodes:
            raise GroupNotFoundError(
                f"no node of group {settings.group.spec!r} advertises {settings.accelerator}",
                hint="drop --accelerator, or install the device plugin on the group's nodes")
    report = apply_objects(client, objects, namespace=settings.namespace, force=force, dry_run=dry_run)
    return DeployResult(objects, report, len(nodes), accel_nodes)


def install(client: KubeClient, namespace: str = names.DEFAULT_NAMESPACE, *, dry_run: bool = False,
            force: bool = False,
            agent_repositories: Sequence[str] = DEFAULT_AGENT_REPOSITORIES,
            public_key_pem: str | None = None, mqtt_ca_pem: str | None = None) -> ApplyReport:
    """Apply the EdgeRollout CRD, the namespace, the engine's RBAC and admission policies (CRD and
    RBAC first), and the trust ConfigMaps whose PEM text is given."""
    objects = install_objects(namespace, agent_repositories, public_key_pem=public_key_pem, mqtt_ca_pem=mqtt_ca_pem)
    return apply_objects(client, objects, force=force, dry_run=dry_run)
