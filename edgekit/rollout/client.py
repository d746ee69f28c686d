"""``RolloutClient``: rollouts from a script, the calls ``edgekit push`` and ``edgekit rollout ...``
make, on one connection to a cluster, its registry and the fleet's telemetry.

    with RolloutClient.connect() as rollouts:
        ro = rollouts.push("registry.example.com/models/detector:2.0", group="cameras", app="detector",
                           waves="1,10%,100%", bake="5m")
        print(ro.status.phase)            # Succeeded, or RolledBack with the verdict in its status
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.rollout import service
from edgekit.rollout.engine import Live
from edgekit.rollout.resource import EdgeRollout
from edgekit.rollout.settings import RolloutSettings, load_rollout_settings
from edgekit.rollout.strategy import build_strategy

if TYPE_CHECKING:
    from edgekit.fleet.settings import FleetSettings

__all__ = ["RolloutClient"]


class RolloutClient:
    """Plan, push and operate rollouts on one ``service.Session`` (cluster, images, telemetry)."""

    def __init__(self, session: service.Session) -> None:
        self.session = session

    @classmethod
    def connect(cls, kubeconfig: str | Path | None = None, *, context: str | None = None,
                settings: RolloutSettings | None = None, fleet: FleetSettings | None = None) -> RolloutClient:
        """Connect as the commands do: the cluster of ``kubeconfig`` (else ``$KUBECONFIG``, else
        ``~/.kube/config``), registries as ``EDGEKIT_REGISTRY_*`` say, and the brokers of ``fleet``
        (default: ``EDGEKIT_FLEET_*``) once a rollout needs telemetry. ``settings`` default to
        ``EDGEKIT_ROLLOUT_*``."""
        from edgekit.fleet.settings import load_fleet_settings
        from edgekit.image.options import load_registry_settings
        from edgekit.kube.client import KubeClient
        from edgekit.rollout.images import RegistryImages
        from edgekit.rollout.kubecluster import KubeCluster

        settings = settings or load_rollout_settings()
        fleet_settings = fleet or load_fleet_settings()
        cluster = KubeCluster(KubeClient.from_kubeconfig(kubeconfig, context=context),
                              render_options=settings.render_options())
        registry = load_registry_settings(insecure=settings.registry_insecure or None)
        images = RegistryImages(registry.to_options(), public_key=settings.public_key,
                                require_digest=settings.require_digest)
        return cls(service.Session(cluster, settings, images=images,
                                   telemetry_factory=lambda: service.open_fleet_telemetry(fleet_settings)))

    def plan(self, image: str, *, group: str, app: str, **strategy: Any) -> service.PushPlan:
        """What a push would do (pinned image, signer, waves), changing nothing. ``strategy`` takes
        the push flags as keywords: ``waves="1,10%,100%"``, ``bake="5m"``, ``max_error_rate="1%"``..."""
        return service.plan_push(self.session, image=image, group=group, app=app, strategy=build_strategy(**strategy))

    def push(self, image: str, *, group: str, app: str, wait: bool = True,
             on_change: Callable[[Live], None] | None = None, **strategy: Any) -> EdgeRollout:
        """Roll ``image`` out to ``group``: create the EdgeRollout and, with ``wait``, drive it to its
        end in this process (a rollback is an outcome: read ``status.phase``); without ``wait`` a
        running ``edgekit controller`` drives it."""
        plan = self.plan(image, group=group, app=app, **strategy)
        if wait:
            self.session.open_telemetry()  # before anything is created: no broker, no rollout
        created = service.start(self.session, plan)
        return service.run(self.session, created.name, on_change) if wait else created

    def status(self, name: str | None = None, *, app: str | None = None, group: str | None = None) -> EdgeRollout:
        """A rollout by name, else the newest of ``app`` (on ``group``)."""
        return service.find(self.session, name, app=app, group=group)

    def history(self, *, app: str | None = None, group: str | None = None) -> list[EdgeRollout]:
        """Rollouts, oldest first."""
        return service.history(self.session, app=app, group=group)

    def pause(self, name: str) -> EdgeRollout:
        return service.pause(self.session, name)

    def resume(self, name: str, *, wait: bool = True) -> EdgeRollout:
        """Lift a pause and, with ``wait``, drive the rollout on in this process."""
        ro = service.unpause(self.session, name)
        return service.run(self.session, name) if wait and ro.active else ro

    def promote(self, name: str) -> EdgeRollout:
        return service.promote(self.session, name)

    def abort(self, name: str, reason: str = "by an operator") -> EdgeRollout:
        return service.abort(self.session, name, reason)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RolloutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
