"""The narrow seams between the rollout engine and the world: the cluster, the fleet's telemetry,
and the image registry.

- ``ClusterPort``: ``edgekit.rollout.kubecluster.KubeCluster`` on a live API server;
  ``edgekit.rollout.memory.MemoryCluster`` in memory, for fast engine tests.
- ``TelemetryPort``: ``edgekit.rollout.service.FleetTelemetry`` on a running
  ``edgekit.fleet.FleetWatcher``; ``edgekit.rollout.memory.MemoryTelemetry`` in memory.
- ``ImagePort``: ``edgekit.rollout.images.RegistryImages`` on an OCI registry.

Every cluster call is idempotent, so the engine can repeat the step it was in after a crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from edgekit.rollout.gating import TelemetryFigures
from edgekit.rollout.leasing import LeaseRecord
from edgekit.rollout.resource import EdgeRollout, ImageRef, RolloutSpec
from edgekit.rollout.shadowing import ShadowFigures


class RolloutWatch(Protocol):
    """The newest version of one EdgeRollout, kept current by a watch."""

    def latest(self) -> EdgeRollout | None: ...

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; return early (True) when the object changed."""
        ...

    def close(self) -> None: ...


class PodTracker(Protocol):
    """Ready pods of one DaemonSet, by node, kept current by a list + watch (no per-node polling)."""

    def ready_nodes(self) -> set[str]: ...

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


class ClusterPort(Protocol):
    # device groups ---------------------------------------------------------------------------
    def group_nodes(self, group: str, profile: str = "k3s") -> dict[str, dict[str, str]]:
        """Node name -> labels for the group (``profile``: k3s | kubeedge | openyurt decides what a
        bare group name means). GroupNotFoundError / EmptyGroupError."""
        ...

    def nodes_on_revision(self, app: str, revision: str) -> list[str]: ...

    def relabel_nodes(self, app: str, moves: Mapping[str, str | None]) -> None:
        """Set ``rollout.edgekit.io/<app>`` on each node (None removes it): one patch per node,
        issued concurrently."""
        ...

    # workloads -------------------------------------------------------------------------------
    def ship_key(self, namespace: str, name: str, pem: str) -> None:
        """Create ConfigMap ``name`` with the devices' cosign public key when it is missing;
        ``ConfigError`` when it holds another key (replacing the devices' trust is not a side
        effect of a push: ``edgekit render --public-key NEW --apply`` does that)."""
        ...

    def ensure_daemonset(self, namespace: str, spec: RolloutSpec, image: ImageRef) -> None: ...

    def ensure_shadow_daemonset(self, namespace: str, spec: RolloutSpec, serving: ImageRef, revision: str,
                                candidate: ImageRef) -> None:
        """Apply ``<app>-<revision>``: ``serving``'s image with ``candidate`` as the agents' shadow
        (``spec.shadow`` says how: ratio, metric)."""
        ...

    def daemonset_scheduled(self, namespace: str, app: str, revision: str) -> int | None:
        """Pods the DaemonSet still runs or wants (None: no such DaemonSet)."""
        ...

    def delete_daemonset(self, namespace: str, app: str, revision: str) -> None: ...

    def app_revisions(self, namespace: str, app: str) -> dict[str, ImageRef]:
        """The app's DaemonSets: revision -> the image it runs."""
        ...

    def track_pods(self, namespace: str, app: str, revision: str) -> PodTracker: ...

    # EdgeRollouts ----------------------------------------------------------------------------
    def get_rollout(self, namespace: str, name: str) -> EdgeRollout: ...

    def list_rollouts(self, namespace: str, app: str | None = None,
                      group: str | None = None) -> list[EdgeRollout]: ...

    def create_rollout(self, rollout: EdgeRollout) -> EdgeRollout:
        """Create the resource (spec) and write its first status. RolloutInProgressError when the
        name is taken."""
        ...

    def write_status(self, rollout: EdgeRollout) -> EdgeRollout:
        """Write the whole status (server-side apply). Only the holder of the rollout's lease
        writes status, so no resourceVersion guard is needed here; operator requests change the
        spec and annotations, which this leaves alone."""
        ...

    def patch_rollout(self, namespace: str, name: str, *, spec: Mapping[str, Any] | None = None,
                      annotations: Mapping[str, str | None] | None = None) -> EdgeRollout:
        """Merge-patch spec fields and annotations (None removes one)."""
        ...

    # leases (see edgekit.rollout.leasing) ------------------------------------------------------
    def get_lease(self, namespace: str, name: str) -> LeaseRecord | None: ...

    def write_lease(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord: ...

    def watch_rollout(self, namespace: str, name: str) -> RolloutWatch: ...


class TelemetryPort(Protocol):
    def window(self, devices: Sequence[str], since: float, digest: str | None) -> TelemetryFigures:
        """What these devices reported since ``since`` (device time) on ``digest`` (None: any),
        as the gates read it (``edgekit.fleet.FleetView.window`` gives the full record)."""
        ...

    def observing_since(self) -> float:
        """Since when reports are being collected (a baseline needs some history)."""
        ...

    def shadow(self, devices: Sequence[str], digest: str, metric: str) -> ShadowFigures:
        """These devices' newest shadow reports on candidate ``digest`` with ``metric``, pooled."""
        ...


class ImagePort(Protocol):
    def pin(self, image: str) -> ImageRef:
        """``image`` (tag or digest) -> ``repository@sha256:…``, resolving a tag once.
        DigestRequiredError when a digest is required and missing, or the registry answers another."""
        ...

    def verify_signature(self, image: ImageRef) -> str | None:
        """The key id that verified ``image``; None when no key is configured.
        SignatureRequiredError when a key is configured and no signature verifies."""
        ...

    def image_size(self, image: ImageRef) -> int | None:
        """Bytes a node downloads for the image (for plans); None when unknown."""
        ...

    def platforms(self, image: ImageRef) -> tuple[str, ...] | None:
        """The ``os/arch`` platforms the image provides (its index); None when unknown."""
        ...
