"""Label keys, annotation keys and default names edgekit uses in clusters (contract: DESIGN 3.3)."""

from __future__ import annotations

import re

from edgekit.errors import ConfigError

PREFIX = "edgekit.io"
API_GROUP = "edgekit.io"
API_VERSION = "edgekit.io/v1alpha1"
DEFAULT_NAMESPACE = "edgekit"
FIELD_MANAGER = "edgekit"

# Device groups (a node belongs to a group through one of these labels).
GROUP_LABEL = "edgekit.io/group"
KUBEEDGE_GROUP_LABEL = "apps.kubeedge.io/belonging-to"  # set by KubeEdge's NodeGroup controller
OPENYURT_POOL_LABEL = "apps.openyurt.io/nodepool"  # OpenYurt NodePool membership

# Well-known node labels.
ARCH_LABEL = "kubernetes.io/arch"
OS_LABEL = "kubernetes.io/os"
HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server
KUBEEDGE_EDGE_LABEL = "node-role.kubernetes.io/edge"
OPENYURT_EDGE_LABEL = "openyurt.io/is-edge-worker"

# Workloads.
ROLLOUT_LABEL_PREFIX = "rollout.edgekit.io/"
APP_LABEL = "edgekit.io/app"
REVISION_LABEL = "edgekit.io/revision"
IMAGE_ANNOTATION = "edgekit.io/image"
SHADOW_ANNOTATION = "edgekit.io/shadow-image"  # a shadow revision's candidate (push --shadow-first)
SHADOW_SETTINGS_ANNOTATION = "edgekit.io/shadow"   # its agents' shadow settings, JSON {"ratio", "metric"}
TARGET_ANNOTATION = "edgekit.io/target"
MANAGED_BY_LABELS = {"app.kubernetes.io/managed-by": "edgekit"}
AGENT_NAME_LABELS = {"app.kubernetes.io/name": "edgekit-agent"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def rollout_label(app: str) -> str:
    """The node label that says which revision of ``app`` a node runs: ``rollout.edgekit.io/<app>``."""
    return ROLLOUT_LABEL_PREFIX + app


def check_app_name(app: str) -> str:
    """An app name is a DNS label short enough to leave room for ``-<revision>`` (max 40)."""
    if not _DNS_LABEL.match(app) or len(app) > 40:
        raise ConfigError(f"app name {app!r} must be a lowercase DNS label of at most 40 characters",
                          field="app")
    return app


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and bool(_DNS_LABEL.match(text))


def check_revision(revision: str) -> str:
    if not _DNS_LABEL.match(revision) or len(revision) > 22:
        raise ConfigError(f"revision {revision!r} must be a lowercase DNS label of at most 22 characters",
                          field="revision")
    return revision


def check_label_value(value: str, field: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ConfigError(f"{value!r} is not a valid label value", field=field)
    return value
