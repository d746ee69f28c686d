"""A rollout session opened from a command's flags, and a rollout's engine run in the foreground.

The rollout service pulls in the Kubernetes client (~0.2 s), so it is imported inside the functions
that talk to a cluster: ``--help`` and ``edgekit push LAYOUT REF`` never pay for it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from edgekit_agent.signalling import setting_on

from edgekit.cli._output import console
from edgekit.cli.rollout_view import Follower, answer, show

if TYPE_CHECKING:
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.kube.client import KubeClient
    from edgekit.rollout.resource import EdgeRollout
    from edgekit.rollout.service import PushPlan, Session
    from edgekit.rollout.settings import RolloutSettings


def connect(kubeconfig: Path | None, context: str | None) -> KubeClient:
    """A KubeClient: in a pod without a kubeconfig (``edgekit controller`` in-cluster) the pod's
    service account, otherwise as every edgekit command connects."""
    from edgekit.cli.kube import connect as connect_from_kubeconfig

    if kubeconfig is None and not os.environ.get("KUBECONFIG") and os.environ.get("KUBERNETES_SERVICE_HOST"):
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config

        from edgekit.kube.client import KubeClient

        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return KubeClient(k8s.ApiClient(configuration))
    return connect_from_kubeconfig(kubeconfig, context)


def session_settings(kw: dict[str, Any]) -> RolloutSettings:
    """The rollout settings the flags in ``kw`` ask for (removed from it), over the ``--config`` file
    and ``EDGEKIT_ROLLOUT_*``: a flag not given (None, or () when repeatable) leaves them be."""
    from edgekit.rollout.settings import load_rollout_settings

    overrides = {"namespace": kw.pop("namespace", None), "target": kw.pop("target", None),
                 "public_key": kw.pop("public_key", None), "allow_unsigned": kw.pop("allow_unsigned", None),
                 "require_digest": kw.pop("require_digest", None),
                 "registry_insecure": kw.pop("insecure_registry", None), "agent_image": kw.pop("agent_image", None),
                 "agent_broker": kw.pop("agent_broker", None), "mqtt_auth": kw.pop("mqtt_auth", None),
                 "model_source": kw.pop("model_source", None),
                 "telemetry_interval": kw.get("health_interval"),
                 "api_from_namespaces": tuple(kw.pop("api_from_namespaces", ())) or None,
                 "mqtt_allow_plaintext_password": kw.pop("mqtt_allow_plaintext_password", None)}
    return load_rollout_settings(kw.pop("config_file", None), **overrides)


def _session(kw: dict[str, Any], *, images: bool, telemetry: bool, trust: str | None,
             before_connect: Callable[[RolloutSettings, RegistryOptions], None] | None = None) -> Session:
    from edgekit.rollout import service
    from edgekit.rollout.images import RegistryImages
    from edgekit.rollout.kubecluster import KubeCluster

    settings = session_settings(kw)
    if trust is not None:  # before the cluster is contacted: nothing changes without a key
        settings.require_trust(trust)
    from edgekit.image.options import load_registry_settings

    reg = load_registry_settings(insecure=settings.registry_insecure or None) if images or before_connect else None
    if before_connect is not None and reg is not None:  # e.g. the release policy: a refusal leaves the
        before_connect(settings, reg.to_options())      # cluster untouched
    client = connect(kw.pop("kubeconfig", None), kw.pop("context", None))
    cluster = KubeCluster(client, render_options=settings.render_options())
    session = service.Session(cluster, settings)
    if images and reg is not None:
        session.images = RegistryImages(reg.to_options(), public_key=settings.public_key,
                                        require_digest=settings.require_digest)
    brokers, root, interval = kw.pop("brokers", ()), kw.pop("topic_root", None), kw.pop("health_interval", None)
    if telemetry:
        from edgekit.fleet.settings import load_fleet_settings

        fleet = load_fleet_settings(overrides={"brokers": tuple(brokers) or None, "topic_root": root,
                                               "interval": interval})
        def telemetry_factory() -> Any:
            return service.open_fleet_telemetry(fleet)
        session.telemetry_factory = telemetry_factory
    return session


@contextmanager
def opened(kw: dict[str, Any], *, images: bool = False, telemetry: bool = False,
           trust: str | None = None,
           before_connect: Callable[[RolloutSettings, RegistryOptions], None] | None = None) -> Iterator[Session]:
    """A session from the flags in ``kw`` (removed from it): ``images`` to resolve and verify images,
    ``telemetry`` to judge gates from the fleet's reports, ``trust`` (the command's name) to require a
    public key or ``--allow-unsigned`` first, ``before_connect`` to check something with the settings
    before the cluster is contacted."""
    session = _session(kw, images=images, telemetry=telemetry, trust=trust, before_connect=before_connect)
    try:
        yield session
    finally:
        session.close()


def stop_on_sigterm(stop: threading.Event) -> AbstractContextManager[None]:
    """SIGTERM stops the engine between steps (it hands its lease back); restored afterwards."""
    return setting_on(stop, signal.SIGTERM)


def drive(session: Session, name: str, output: str) -> None:
    """Run the rollout's engine here until the rollout ends (or SIGTERM/Ctrl-C stop it), showing it."""
    from edgekit.rollout import service

    follower = Follower(output)
    with stop_on_sigterm(session.stop), follower.showing():
        try:
            ro = service.run(session, name, on_change=follower.update)
        except KeyboardInterrupt:
            click.echo(f"stopped; the rollout stays where it is: `edgekit rollout resume {name}` continues it",
                       err=True)
            raise
    if session.stop.is_set() and ro.active:
        click.echo(f"engine stopped; `edgekit rollout resume {name}` continues the rollout", err=True)
        return
    show(ro, output)
    service.terminal_error(ro)


def start(session: Session, plan: PushPlan, output: str, *, detach: bool, created: Callable[[EdgeRollout], str],
          starting: Callable[[EdgeRollout], str] | None = None) -> None:
    """Create the planned rollout, then return (``detach``: answering ``created``) or run it here
    (saying ``starting`` first)."""
    from edgekit.rollout import service

    session.open_telemetry()
    ro = service.start(session, plan)
    if detach:
        answer(ro, output, created(ro))
        return
    if starting is not None and output != "json":
        console(stderr=True).print(starting(ro), highlight=False)
    drive(session, ro.name, output)
