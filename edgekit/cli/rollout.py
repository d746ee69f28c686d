"""``edgekit rollout plan|status|pause|resume|promote|abort|undo|history``: plan, follow and steer
rollouts (EdgeRollout resources)."""

from __future__ import annotations

from typing import Any

import click

from edgekit.cli._output import console, emit_json
from edgekit.cli.rollout_options import (
    agent_access_options,
    agent_render_options,
    image_options,
    name_args,
    pop_strategy,
    session_and_output,
    starting_options,
    strategy_given,
    strategy_options,
    telemetry_options,
    trust_options,
)
from edgekit.cli.rollout_session import drive, opened, start
from edgekit.cli.rollout_view import Follower, answer, print_history, print_plan, show, summary


@click.group("rollout")
def rollout() -> None:
    """Plan, follow and steer rollouts (EdgeRollout resources).

    \b
    Examples:
      edgekit rollout plan registry.local/detector:1.4 -g cameras -a detector
      edgekit rollout status --app detector --watch
      edgekit rollout pause detector-cameras-3
      edgekit rollout resume detector-cameras-3
      edgekit rollout history --app detector
    """


@rollout.command("plan")
@click.argument("image")
@click.option("--group", "-g", required=True, help="Device group.")
@click.option("--app", "-a", required=True, help="Application name.")
@strategy_options
@image_options
@session_and_output
def plan_cmd(image: str, group: str, app: str, output: str, **kw: Any) -> None:
    """Show what `edgekit push` would do, changing nothing: every wave's nodes, the bytes each
    wave ships, which gates apply.

    \b
    Examples:
      edgekit rollout plan registry.local/detector:1.4 -g cameras -a detector
      edgekit rollout plan registry.local/detector:1.4 -g cameras -a detector \\
          --waves 1,10%,100% --spread-by topology.kubernetes.io/zone --output json
    """
    from edgekit.rollout import service

    strategy = pop_strategy(kw)
    with opened(kw, images=True) as session:
        plan = service.plan_push(session, image=image, group=group, app=app, strategy=strategy)
    if output == "json":
        emit_json(plan.to_json())
    else:
        print_plan(plan, app, group)


@rollout.command("status")
@name_args
@click.option("--watch", "-w", is_flag=True, help="Follow the rollout until it ends.")
@session_and_output
def status_cmd(name: str | None, app: str | None, group: str | None, watch: bool, output: str, **kw: Any) -> None:
    """Show a rollout: phase, every wave's nodes, readiness, telemetry and verdict with figures.

    \b
    Examples:
      edgekit rollout status detector-cameras-3
      edgekit rollout status --app detector --group cameras --watch
      edgekit rollout status detector-cameras-3 --output json | jq .status.waves[0].verdictDetail
    """
    from edgekit.rollout import service

    with opened(kw) as session:
        ro = service.find(session, name, app=app, group=group)
        if watch and ro.active:
            follower = Follower(output)
            watcher = session.cluster.watch_rollout(session.namespace, ro.name)
            try:
                with follower.showing():
                    while True:
                        ro = watcher.latest() or ro
                        follower.show(ro)
                        if not ro.active:
                            break
                        watcher.wait(1.0)
            finally:
                watcher.close()
    show(ro, output)


def _simple(verb: str, doc: str) -> click.Command:
    @rollout.command(verb, help=doc)
    @name_args
    @session_and_output
    def command(name: str | None, app: str | None, group: str | None, output: str, **kw: Any) -> None:
        from edgekit.rollout import service

        with opened(kw) as session:
            ro = service.find(session, name, app=app, group=group)
            ro = {"pause": service.pause, "promote": service.promote}[verb](session, ro.name)
        answer(ro, output, f"{ro.name}: {verb} requested ({ro.status.phase}, wave "
                           f"{min(ro.status.current_wave + 1, len(ro.status.waves))}/{len(ro.status.waves)})")
    return command


_simple("pause", """Pause a rollout: no new wave starts and no wave is promoted until resumed (a failing
gate still rolls back).

\b
Examples:
  edgekit rollout pause detector-cameras-3
  edgekit rollout pause --app detector --group cameras
""")
_simple("promote", """Promote the current wave: skip the rest of its bake, or pass a --manual-promote gate.
Failing gates still roll back.

\b
Examples:
  edgekit rollout promote detector-cameras-3
  edgekit rollout promote --app detector
""")


@rollout.command("resume")
@name_args
@click.option("--detach", is_flag=True, help="Only lift the pause; leave the work to a running engine/controller.")
@trust_options
@agent_render_options
@agent_access_options
@telemetry_options
@session_and_output
def resume_cmd(name: str | None, app: str | None, group: str | None, detach: bool, output: str, **kw: Any) -> None:
    """Resume a rollout: lift a pause, and run its engine here from exactly where it stopped (after
    a crash, a lost machine or Ctrl-C). Refused while another engine holds the rollout. Running the
    engine needs the devices' public key (--public-key, EDGEKIT_ROLLOUT_PUBLIC_KEY) or --allow-unsigned.

    \b
    Examples:
      edgekit rollout resume detector-cameras-3
      edgekit rollout resume --app detector --group cameras --detach
    """
    from edgekit.errors import EngineConflictError
    from edgekit.rollout import service

    with opened(kw, telemetry=not detach, trust=None if detach else "edgekit rollout resume") as session:
        ro = service.find(session, name, app=app, group=group)
        was_paused = ro.spec.paused
        ro = service.unpause(session, ro.name)
        if detach or not ro.active:
            answer(ro, output, f"{ro.name}: {'resumed' if was_paused else 'not paused'} ({ro.status.phase})")
            return
        try:
            drive(session, ro.name, output)
        except EngineConflictError:
            if not was_paused:
                raise
            console().print(f"{ro.name}: resumed; the engine that holds it carries on")


@rollout.command("abort")
@name_args
@click.option("--reason", default="by an operator", show_default=True, help="Recorded in the status.")
@session_and_output
def abort_cmd(name: str | None, app: str | None, group: str | None, reason: str, output: str, **kw: Any) -> None:
    """Abort a rollout: stop it and roll every moved node back (done by the engine that runs it, or
    by the next `edgekit rollout resume`).

    \b
    Examples:
      edgekit rollout abort detector-cameras-3
      edgekit rollout abort --app detector --group cameras --reason "wrong model"
    """
    from edgekit.rollout import service

    with opened(kw) as session:
        ro = service.find(session, name, app=app, group=group)
        ro = service.abort(session, ro.name, reason)
    answer(ro, output, f"{ro.name}: abort requested ({reason})")


@rollout.command("undo")
@click.option("--app", "-a", required=True, help="Application name.")
@click.option("--group", "-g", required=True, help="Device group.")
@starting_options("Create the rollout and return.")
def undo_cmd(app: str, group: str, detach: bool, output: str, **kw: Any) -> None:
    """Roll a group back to the revision before its last successful rollout, as a new gated rollout
    (same strategy as that rollout unless flags say otherwise).

    \b
    Examples:
      edgekit rollout undo --app detector --group cameras
      edgekit rollout undo -a detector -g cameras --waves 100% --bake 30s
    """
    from edgekit.rollout import service

    explicit = strategy_given(kw)
    strategy = pop_strategy(kw)
    with opened(kw, images=True, telemetry=not detach, trust="edgekit rollout undo") as session:
        plan = service.plan_undo(session, app=app, group=group, strategy=strategy if explicit else None)
        start(session, plan, output, detach=detach, created=lambda ro: f"created rollout {ro.name}")


@rollout.command("history")
@click.option("--app", "-a", default=None, help="Only this app.")
@click.option("--group", "-g", default=None, help="Only this group.")
@session_and_output
def history_cmd(app: str | None, group: str | None, output: str, **kw: Any) -> None:
    """List rollouts, oldest first: revisions, outcome, waves passed, times.

    \b
    Examples:
      edgekit rollout history
      edgekit rollout history --app detector --group cameras --output json
    """
    from edgekit.rollout import service

    with opened(kw) as session:
        found = service.history(session, app=app, group=group)
    rows = [summary(ro) for ro in found]
    if output == "json":
        emit_json(rows)
    else:
        print_history(rows)


COMMANDS: list[click.Command] = [rollout]
