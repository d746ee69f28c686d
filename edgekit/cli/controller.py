"""``edgekit controller``: the rollout engine for every rollout of a namespace, until stopped."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape

from edgekit.cli._output import console
from edgekit.cli.rollout_options import (
    agent_access_options,
    agent_render_options,
    session_options,
    telemetry_options,
    trust_options,
)
from edgekit.cli.rollout_session import opened, stop_on_sigterm


@click.command("controller")
@click.option("--parallel", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Rollouts driven at the same time.")
@trust_options
@agent_render_options
@agent_access_options
@telemetry_options
@session_options
def controller_cmd(parallel: int, **kw: Any) -> None:
    """Run the rollout engine for every EdgeRollout of the namespace that no other engine holds,
    until stopped (SIGTERM/Ctrl-C). This is what the Deployment in fleet-manifests/ runs in-cluster.
    It needs the public key the devices verify with (--public-key, EDGEKIT_ROLLOUT_PUBLIC_KEY) or
    --allow-unsigned.

    \b
    Examples:
      edgekit controller --namespace edgekit --broker mqtts://edgekit-mqtt.edgekit.svc:8883 --public-key release.pub
      EDGEKIT_ROLLOUT_PUBLIC_KEY=release.pub EDGEKIT_ROLLOUT_NAMESPACE=edgekit edgekit controller --parallel 4
    """
    from edgekit.rollout import service

    with opened(kw, telemetry=True, trust="edgekit controller") as session, stop_on_sigterm(session.stop):
        con = console(stderr=True)
        con.print(f"edgekit controller: watching EdgeRollouts in {session.namespace}")
        try:
            service.control(session, parallel=parallel,
                            on_event=lambda m: con.print(f"{time.strftime('%H:%M:%S')} {escape(m)}", highlight=False))
        except KeyboardInterrupt:
            session.stop.set()


COMMANDS: list[click.Command] = [controller_cmd]
