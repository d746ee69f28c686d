"""``edgekit push IMAGE --group G --app A``, ``edgekit rollout plan|status|pause|resume|promote|
abort|undo|history``, ``edgekit controller`` and ``edgekit sim``."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Group, RenderableType
from rich.live import Live as RichLive
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edgekit.cli._output import console, emit_json, output_option
from edgekit.rollout import resource as r
from edgekit.rollout.engine import Live
from edgekit.rollout.gating import GateFigure
from edgekit.rollout.resource import EdgeRollout
from edgekit.rollout.strategy import DEFAULT_WAVES, build_strategy, fmt_duration, fmt_percent


class _LazyModule:
    """A module imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._name)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


if TYPE_CHECKING:
    from edgekit.rollout import service
else:
    # The rollout service pulls in the Kubernetes client (~0.2 s); `edgekit push DIR REF`, which
    # only uploads an image, should not pay for it.
    service = _LazyModule("edgekit.rollout.service")

F = TypeVar("F", bound=Callable[..., Any])


# --- options ---------------------------------------------------------------------------------

def _apply(func: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def strategy_options(func: F) -> F:
    """The strategy and gate flags shared by push, plan and undo."""
    return _apply(func, [
        click.option("--waves", default=None, metavar="LIST",
                     help=f"Cumulative wave targets, canary first: counts or percentages [{DEFAULT_WAVES}]."),
        click.option("--bake", default=None, metavar="DURATION", help="Time each wave runs before its gate [2m]."),
        click.option("--spread-by", default=None, metavar="LABEL",
                     help="Spread every wave over this node label, e.g. topology.kubernetes.io/zone."),
        click.option("--max-error-rate", default=None, metavar="PCT", help="Gate: inference error rate [1%]."),
        click.option("--max-p95-ms", default=None, metavar="MS", help="Gate: absolute p95 latency."),
        click.option("--max-p95-regression", default=None, metavar="PCT",
                     help="Gate: p95 increase vs the same devices before the move, e.g. 20%."),
        click.option("--min-reporting", default=None, metavar="PCT",
                     help="Gate: share of the wave's devices reporting the new model [90%]."),
        click.option("--probe-must-pass", is_flag=True, default=False,
                     help="Gate: the golden probe passes everywhere."),
        click.option("--offline-policy", type=click.Choice(["fail", "skip"]), default=None,
                     help="Silent/offline devices: count as failing, or skip and report them [fail]."),
        click.option("--silence-deadline", default=None, metavar="DURATION",
                     help="With --offline-policy skip: skip silent devices after this [the wave timeout]."),
        click.option("--wave-timeout", default=None, metavar="DURATION",
                     help="Hold a wave at most this long, then roll back [10m]."),
        click.option("--auto-promote/--manual-promote", default=True, show_default=True,
                     help="Advance by itself when the gates pass, or wait for `edgekit rollout promote`."),
        click.option("--baseline", default=None, metavar="DURATION",
                     help="Telemetry window before the move used as the baseline [the bake, 5s-60s]."),
    ])


def _strategy(kw: dict[str, Any]) -> Any:
    args = {k: kw.pop(k) for k in ("waves", "bake", "spread_by", "max_error_rate", "max_p95_ms",
                                   "max_p95_regression", "min_reporting", "probe_must_pass", "offline_policy",
                                   "silence_deadline", "wave_timeout", "auto_promote", "baseline")}
    args = {k: v for k, v in args.items() if v is not None}
    return build_strategy(**args)


def session_options(func: F) -> F:
    from edgekit.cli.kube import cluster_options

    return _apply(func, [
        click.option("--namespace", "-n", default=None, help="Namespace of the rollouts and DaemonSets [edgekit]."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="Rollout settings file (JSON/YAML); env EDGEKIT_ROLLOUT_* overrides it."),
        cluster_options,
    ])


def telemetry_options(func: F) -> F:
    return _apply(func, [
        click.option("--broker", "brokers", multiple=True, metavar="URL",
                     help="MQTT broker(s) the gates read telemetry from [EDGEKIT_FLEET_BROKERS, mqtt://127.0.0.1:1883]."),
        click.option("--topic-root", default=None, help="Telemetry topic root [edgekit/v1]."),
        click.option("--health-interval", type=float, default=None, metavar="S",
                     help="Seconds between the agents' health reports [10]; also rendered into the agents."),
    ])


def image_options(func: F) -> F:
    return _apply(func, [
        click.option("--target", type=click.Choice(["k3s", "kubeedge", "openyurt"]), default=None,
                     help="Platform profile of the group's nodes [k3s]."),
        click.option("--public-key", type=click.Path(dir_okay=False), default=None,
                     help="Require a valid cosign signature by this key [EDGEKIT_ROLLOUT_PUBLIC_KEY]."),
        click.option("--require-digest", is_flag=True, default=None,
                     help="Refuse a tag instead of resolving it once to its digest."),
        click.option("--insecure-registry", is_flag=True, default=None, help="Allow plain HTTP / unverified TLS."),
        click.option("--agent-image", default=None, help="Container image of edgekit-agent for the DaemonSets."),
        click.option("--agent-broker", default=None, metavar="URL", help="Broker URL the agents publish to."),
        click.option("--mqtt-auth", type=click.Choice(["node-cert", "none"]), default=None,
                     help="How agents authenticate to the broker [node-cert]."),
    ])


def _connect(kubeconfig: Path | None, context: str | None) -> Any:
    """A KubeClient: in a pod without a kubeconfig (``edgekit controller`` in-cluster) the pod's
    service account, otherwise as every edgekit command connects."""
    import os

    from edgekit.cli.kube import connect

    if kubeconfig is None and not os.environ.get("KUBECONFIG") and os.environ.get("KUBERNETES_SERVICE_HOST"):
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config

        from edgekit.kube.client import KubeClient

        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return KubeClient(k8s.ApiClient(configuration))
    return connect(kubeconfig, context)


def _session(kw: dict[str, Any], *, images: bool = False, telemetry: bool = False) -> service.Session:
    from edgekit.rollout.images import RegistryImages
    from edgekit.rollout.kubecluster import KubeCluster
    from edgekit.rollout.settings import load_rollout_settings

    overrides = {"namespace": kw.pop("namespace", None), "target": kw.pop("target", None),
                 "public_key": kw.pop("public_key", None), "require_digest": kw.pop("require_digest", None),
                 "registry_insecure": kw.pop("insecure_registry", None), "agent_image": kw.pop("agent_image", None),
                 "agent_broker": kw.pop("agent_broker", None), "mqtt_auth": kw.pop("mqtt_auth", None),
                 "telemetry_interval": kw.get("health_interval")}
    settings = load_rollout_settings(kw.pop("config_file", None), **overrides)
    client = _connect(kw.pop("kubeconfig", None), kw.pop("context", None))
    cluster = KubeCluster(client, render_options=settings.render_options())
    session = service.Session(cluster, settings)
    if images:
        from edgekit.image.options import load_registry_settings

        reg = load_registry_settings(insecure=settings.registry_insecure or None)
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
def _opened(kw: dict[str, Any], **what: bool) -> Iterator[service.Session]:
    session = _session(kw, **what)
    try:
        yield session
    finally:
        session.close()


# --- rendering -------------------------------------------------------------------------------

def _fig(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return fmt_percent(value) if kind == "pct" else f"{value:.1f}"


def _figure_row(f: GateFigure) -> tuple[str, str, str, Text]:
    pct = f.gate in ("reporting", "error-rate", "p95-regression")
    mark = Text("-" if f.ok is None else ("ok" if f.ok else "FAIL"),
                style="" if f.ok is None else ("green" if f.ok else "bold red"))
    value = _fig(f.value, "pct" if pct else "num")
    threshold = _fig(f.threshold, "pct" if pct else "num")
    if f.gate == "pods-ready":
        value, threshold = f"{int(f.value or 0)}", f"{int(f.threshold or 0)}"
    return f.gate, value, threshold, mark


def render(ro: EdgeRollout, live: Live | None = None) -> RenderableType:
    """The rollout as people read it: header, one row per wave, the current gate's figures."""
    st, spec = ro.status, ro.spec
    style = {"Succeeded": "green", "RolledBack": "red", "RollingBack": "red", "Paused": "yellow"}.get(st.phase, "cyan")
    prev = spec.previous.revision if spec.previous else "-"
    head = Text.assemble((f"{ro.name} ", "bold"), f"{spec.app} on {spec.group}: {prev} → {spec.target.revision}  ",
                         (st.phase, f"bold {style}"))
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("wave", "target", "nodes", "step", "ready", "reporting", "errors", "p95 ms", "verdict"):
        table.add_column(col, justify="right" if col in ("nodes", "ready", "reporting", "errors", "p95 ms") else "left")
    for w in st.waves:
        t = w.telemetry
        current = st.current_wave == w.index and ro.active
        ready = live.ready if (live is not None and current and w.phase in (r.W_WAITING, r.W_BAKING)) else w.ready
        verdict = w.verdict
        if live is not None and current and live.verdict is not None:
            verdict = live.verdict
        reporting = f"{t.on_digest}/{t.expected}" if t else "-"
        errors = fmt_percent(t.error_rate) if t and t.error_rate is not None else "-"
        p95 = f"{t.p95_ms:.1f}" if t and t.p95_ms is not None else "-"
        zones = " (" + ", ".join(f"{k or '-'}:{v}" for k, v in w.zones.items()) + ")" if w.zones else ""
        table.add_row(f"{'▶ ' if current else ''}{w.index + 1}", w.target, f"{len(w.nodes)}{zones}", w.phase,
                      f"{ready}/{len(w.nodes)}" if w.phase != r.W_PENDING else "-", reporting, errors, p95,
                      escape(f"{verdict.decision}: {verdict.reason}") if verdict else "")
    parts: list[RenderableType] = [head, Text(st.message, style="dim"), table]
    current_wave = st.waves[st.current_wave] if st.current_wave < len(st.waves) else None
    verdict = (live.verdict if live is not None and live.verdict is not None else
               (current_wave.verdict if current_wave else None))
    if verdict is not None and verdict.figures and ro.active:
        gates = Table(title="gates", title_justify="left", box=None)
        for col in ("gate", "value", "threshold", ""):
            gates.add_column(col)
        for f in verdict.figures:
            gates.add_row(*_figure_row(f))
        parts.append(gates)
    return Group(*parts)


def summary(ro: EdgeRollout) -> dict[str, Any]:
    st, spec = ro.status, ro.spec
    return {"name": ro.name, "app": spec.app, "group": spec.group, "revision": spec.target.revision,
            "previous": spec.previous.revision if spec.previous else None, "image": spec.target.image,
            "phase": st.phase, "waves": len(st.waves), "wavesPassed": sum(w.phase == r.W_PASSED for w in st.waves),
            "nodes": sum(len(w.nodes) for w in st.waves), "startedAt": r.to_time(st.started_at),
            "finishedAt": r.to_time(st.finished_at), "message": st.message, "undoOf": spec.undo_of}


class _Follower:
    """Shows an engine's progress: a live table on a terminal, one line per event otherwise."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.con = console(stderr=output == "json")
        self.tty = self.con.is_terminal
        self.seen = 0
        self.live: Live | None = None
        self.rollout: EdgeRollout | None = None

    def update(self, live: Live) -> None:
        self.live, self.rollout = live, live.rollout
        if not self.tty:
            self.lines(live.rollout)

    def lines(self, ro: EdgeRollout) -> None:
        history = ro.status.history
        if self.seen > len(history):
            self.seen = 0
        for entry in history[self.seen:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(entry.at))
            self.con.print(f"{stamp} {ro.name} {entry.event}: {escape(entry.message)}", highlight=False)
        self.seen = len(history)

    def renderable(self) -> RenderableType:
        if self.rollout is None:
            return Text("starting…")
        return render(self.rollout, self.live)

    @contextmanager
    def showing(self) -> Iterator[None]:
        if self.tty and self.output != "json":
            with RichLive(console=self.con, get_renderable=self.renderable, refresh_per_second=4, transient=False):
                yield
        else:
            yield


def _finish(session: service.Session, ro: EdgeRollout, output: str) -> None:
    if output == "json":
        emit_json(ro.to_json())
    else:
        console().print(render(ro))
    service.terminal_error(ro)


def _drive(session: service.Session, name: str, output: str) -> None:
    follower = _Follower(output)
    with _stop_on_sigterm(session.stop), follower.showing():
        try:
            ro = service.run(session, name, on_change=follower.update)
        except KeyboardInterrupt:
            click.echo(f"stopped; the rollout stays where it is: `edgekit rollout resume {name}` continues it",
                       err=True)
            raise
    if session.stop.is_set() and ro.active:
        click.echo(f"engine stopped; `edgekit rollout resume {name}` continues the rollout", err=True)
        return
    _finish(session, ro, output)


@contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """SIGTERM stops the engine between steps (it hands its lease back); restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- push ------------------------------------------------------------------------------------

@click.command("push")
@click.argument("image")
@click.option("--group", "-g", required=True, help="Device group: NAME, kubeedge:NAME, openyurt:NAME or selector:EXPR.")
@click.option("--app", "-a", required=True, help="Application name; its DaemonSets are <app>-<revision>.")
@strategy_options
@image_options
@telemetry_options
@click.option("--detach", is_flag=True, help="Create the rollout and return; `edgekit controller` runs it.")
@session_options
@output_option
def push_rollout(image: str, group: str, app: str, detach: bool, output: str, **kw: Any) -> None:
    """Roll IMAGE out to a device group in health-gated waves, rolling back by itself when a
    wave's gate fails.

    The tag is resolved once and the rollout pinned to that digest; with a public key configured
    the image must carry a valid signature. Each wave relabels its nodes to the new revision, waits
    for the pods to be Ready and for the bake time, then judges the wave from the devices' own
    telemetry: error rate, p95 latency (absolute and against the same devices before the move),
    golden probe, share of devices reporting the new model. All state lives in an EdgeRollout, so
    `edgekit rollout resume` continues from any machine if this process dies.

    Without --group, `edgekit push LAYOUT REF` uploads an image layout to a registry.

    \b
    Examples:
      edgekit push registry.local/detector:1.4 --group cameras --app detector
      edgekit push registry.local/detector:1.4 -g cameras -a detector --waves 1,5%,25%,100% \\
          --bake 2m --spread-by topology.kubernetes.io/zone --max-error-rate 1% --max-p95-regression 20%
      edgekit push registry.local/detector@sha256:3f2a… -g kubeedge:cams -a detector --manual-promote
    """
    strategy = _strategy(kw)
    with _opened(kw, images=True, telemetry=not detach) as session:
        plan = service.plan_push(session, image=image, group=group, app=app, strategy=strategy)
        session.open_telemetry()
        ro = service.start(session, plan)
        if detach:
            if output == "json":
                emit_json(ro.to_json())
            else:
                console().print(f"created rollout {ro.name}: {len(ro.status.waves)} waves over "
                                f"{sum(len(w.nodes) for w in ro.status.waves)} nodes; "
                                f"`edgekit rollout status {ro.name} --watch` follows it")
            return
        if output != "json":
            console(stderr=True).print(f"rollout {ro.name}: {app} {plan.rollout.spec.target.image} on {group}, "
                                       f"{len(ro.status.waves)} waves", highlight=False)
        _drive(session, ro.name, output)


class PushCommand(click.Command):
    """``edgekit push``: with --group a rollout (this area); without, the image upload of
    ``edgekit.cli.images`` (``push LAYOUT REF``). Both were specified under the same name."""

    def __init__(self, rollout: click.Command, image: click.Command | None) -> None:
        super().__init__("push", help=rollout.help, short_help="Roll an image out to a device group in "
                         "health-gated waves (with --group), or upload an image layout to a registry.")
        self.rollout, self.image = rollout, image
        self.params = rollout.params

    def _pick(self, args: list[str]) -> click.Command:
        wants_rollout = any(a in ("--group", "-g") or a.startswith(("--group=", "-g")) for a in args)
        return self.rollout if wants_rollout or self.image is None else self.image

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        if self.image is not None and any(a in ("--help", "-h") for a in args) and self._pick(args) is self.image:
            ctx = click.Context(self, info_name=info_name, parent=parent)
            click.echo(self.rollout.get_help(click.Context(self.rollout, info_name=info_name, parent=parent)))
            click.echo("\nWithout --group:\n")
            click.echo(self.image.get_help(click.Context(self.image, info_name=info_name, parent=parent)))
            ctx.exit(0)
        return self._pick(args).make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:  # pragma: no cover - the picked command invokes
        return ctx.command.invoke(ctx)


# --- edgekit rollout ... ----------------------------------------------------------------------

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
@session_options
@output_option
def plan_cmd(image: str, group: str, app: str, output: str, **kw: Any) -> None:
    """Show what `edgekit push` would do, changing nothing: every wave's nodes, the bytes each
    wave ships, which gates apply.

    \b
    Examples:
      edgekit rollout plan registry.local/detector:1.4 -g cameras -a detector
      edgekit rollout plan registry.local/detector:1.4 -g cameras -a detector \\
          --waves 1,10%,100% --spread-by topology.kubernetes.io/zone --output json
    """
    strategy = _strategy(kw)
    with _opened(kw, images=True) as session:
        plan = service.plan_push(session, image=image, group=group, app=app, strategy=strategy)
    if output == "json":
        emit_json(plan.to_json())
        return
    data = plan.to_json()
    con = console()
    con.print(f"[bold]{plan.rollout.name}[/]: {escape(app)} on {escape(group)}: "
              f"{data['previous'] or '(nothing)'} → {escape(data['image'])}")
    if plan.signed_by:
        con.print(f"signature verified (key {plan.signed_by})")
    table = Table(box=None)
    for col in ("wave", "target", "nodes", "bytes", "zones", "first nodes"):
        table.add_column(col)
    for w in data["waves"]:
        zones = ", ".join(f"{k or '-'}:{v}" for k, v in w["zones"].items())
        table.add_row(str(w["index"] + 1), w["target"], str(len(w["nodes"])),
                      _bytes(w["bytes"]), zones or "-",
                      escape(", ".join(w["nodes"][:5]) + (" …" if len(w["nodes"]) > 5 else "")))
    con.print(table)
    con.print(f"bytes to ship: {_bytes(data['bytesToShip'])}; bake {fmt_duration(plan.rollout.spec.strategy.bake_s)} "
              f"per wave")
    con.print("gates: " + "; ".join(plan.gates))


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _name_args(func: F) -> F:
    return _apply(func, [
        click.argument("name", required=False),
        click.option("--app", "-a", default=None, help="Without NAME: the newest rollout of this app."),
        click.option("--group", "-g", default=None, help="... on this group."),
    ])


@rollout.command("status")
@_name_args
@click.option("--watch", "-w", is_flag=True, help="Follow the rollout until it ends.")
@session_options
@output_option
def status_cmd(name: str | None, app: str | None, group: str | None, watch: bool, output: str, **kw: Any) -> None:
    """Show a rollout: phase, every wave's nodes, readiness, telemetry and verdict with figures.

    \b
    Examples:
      edgekit rollout status detector-cameras-3
      edgekit rollout status --app detector --group cameras --watch
      edgekit rollout status detector-cameras-3 --output json | jq .status.waves[0].verdictDetail
    """
    with _opened(kw) as session:
        ro = service.find(session, name, app=app, group=group)
        if watch and ro.active:
            follower = _Follower(output)
            watcher = session.cluster.watch_rollout(session.namespace, ro.name)
            try:
                with follower.showing():
                    while True:
                        latest = watcher.latest() or ro
                        ro = latest
                        follower.rollout = ro
                        if not follower.tty:
                            follower.lines(ro)
                        if not ro.active:
                            break
                        watcher.wait(1.0)
            finally:
                watcher.close()
    if output == "json":
        emit_json(ro.to_json())
    else:
        console().print(render(ro))


def _simple(verb: str, doc: str) -> click.Command:
    @rollout.command(verb, help=doc)
    @_name_args
    @session_options
    @output_option
    def command(name: str | None, app: str | None, group: str | None, output: str, **kw: Any) -> None:
        with _opened(kw) as session:
            ro = service.find(session, name, app=app, group=group)
            ro = {"pause": service.pause, "promote": service.promote}[verb](session, ro.name)
        if output == "json":
            emit_json(ro.to_json())
        else:
            console().print(f"{ro.name}: {verb} requested ({ro.status.phase}, wave "
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
@_name_args
@click.option("--detach", is_flag=True, help="Only lift the pause; leave the work to a running engine/controller.")
@telemetry_options
@session_options
@output_option
def resume_cmd(name: str | None, app: str | None, group: str | None, detach: bool, output: str, **kw: Any) -> None:
    """Resume a rollout: lift a pause, and run its engine here from exactly where it stopped (after
    a crash, a lost machine or Ctrl-C). Refused while another engine holds the rollout.

    \b
    Examples:
      edgekit rollout resume detector-cameras-3
      edgekit rollout resume --app detector --group cameras --detach
    """
    from edgekit.errors import EngineConflictError

    with _opened(kw, telemetry=not detach) as session:
        ro = service.find(session, name, app=app, group=group)
        was_paused = ro.spec.paused
        ro = service.unpause(session, ro.name)
        if detach or not ro.active:
            if output == "json":
                emit_json(ro.to_json())
            else:
                console().print(f"{ro.name}: {'resumed' if was_paused else 'not paused'} ({ro.status.phase})")
            return
        try:
            _drive(session, ro.name, output)
        except EngineConflictError:
            if not was_paused:
                raise
            console().print(f"{ro.name}: resumed; the engine that holds it carries on")


@rollout.command("abort")
@_name_args
@click.option("--reason", default="by an operator", show_default=True, help="Recorded in the status.")
@session_options
@output_option
def abort_cmd(name: str | None, app: str | None, group: str | None, reason: str, output: str, **kw: Any) -> None:
    """Abort a rollout: stop it and roll every moved node back (done by the engine that runs it, or
    by the next `edgekit rollout resume`).

    \b
    Examples:
      edgekit rollout abort detector-cameras-3
      edgekit rollout abort --app detector --group cameras --reason "wrong model"
    """
    with _opened(kw) as session:
        ro = service.find(session, name, app=app, group=group)
        ro = service.abort(session, ro.name, reason)
    if output == "json":
        emit_json(ro.to_json())
    else:
        console().print(f"{ro.name}: abort requested ({reason})")


@rollout.command("undo")
@click.option("--app", "-a", required=True, help="Application name.")
@click.option("--group", "-g", required=True, help="Device group.")
@strategy_options
@image_options
@telemetry_options
@click.option("--detach", is_flag=True, help="Create the rollout and return.")
@session_options
@output_option
def undo_cmd(app: str, group: str, detach: bool, output: str, **kw: Any) -> None:
    """Roll a group back to the revision before its last successful rollout, as a new gated rollout
    (same strategy as that rollout unless flags say otherwise).

    \b
    Examples:
      edgekit rollout undo --app detector --group cameras
      edgekit rollout undo -a detector -g cameras --waves 100% --bake 30s
    """
    explicit = any(kw.get(k) is not None for k in ("waves", "bake", "spread_by", "max_error_rate", "max_p95_ms",
                                                     "max_p95_regression", "min_reporting", "offline_policy",
                                                     "wave_timeout", "silence_deadline", "baseline"))
    built = _strategy(kw)
    strategy = built if explicit else None
    with _opened(kw, images=True, telemetry=not detach) as session:
        plan = service.plan_undo(session, app=app, group=group, strategy=strategy)
        session.open_telemetry()
        ro = service.start(session, plan)
        if detach:
            if output == "json":
                emit_json(ro.to_json())
            else:
                console().print(f"created rollout {ro.name}")
            return
        _drive(session, ro.name, output)


@rollout.command("history")
@click.option("--app", "-a", default=None, help="Only this app.")
@click.option("--group", "-g", default=None, help="Only this group.")
@session_options
@output_option
def history_cmd(app: str | None, group: str | None, output: str, **kw: Any) -> None:
    """List rollouts, oldest first: revisions, outcome, waves passed, times.

    \b
    Examples:
      edgekit rollout history
      edgekit rollout history --app detector --group cameras --output json
    """
    with _opened(kw) as session:
        found = service.history(session, app=app, group=group)
    rows = [summary(ro) for ro in found]
    if output == "json":
        emit_json(rows)
        return
    table = Table(box=None)
    for col in ("name", "app", "group", "from", "to", "phase", "waves", "started", "message"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row["app"], escape(row["group"]), row["previous"] or "-", row["revision"],
                      row["phase"], f"{row['wavesPassed']}/{row['waves']}", (row["startedAt"] or "-")[:19],
                      escape(row["message"][:80]))
    console().print(table)


# --- controller ------------------------------------------------------------------------------

@click.command("controller")
@click.option("--parallel", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Rollouts driven at the same time.")
@telemetry_options
@session_options
def controller_cmd(parallel: int, **kw: Any) -> None:
    """Run the rollout engine for every EdgeRollout of the namespace that no other engine holds,
    until stopped (SIGTERM/Ctrl-C). This is what the Deployment in fleet-manifests/ runs in-cluster.

    \b
    Examples:
      edgekit controller --namespace edgekit --broker mqtts://edgekit-mqtt.edgekit.svc:8883
      EDGEKIT_ROLLOUT_NAMESPACE=edgekit edgekit controller --parallel 4
    """
    with _opened(kw, telemetry=True) as session, _stop_on_sigterm(session.stop):
        con = console(stderr=True)
        con.print(f"edgekit controller: watching EdgeRollouts in {session.namespace}")
        try:
            service.control(session, parallel=parallel,
                            on_event=lambda m: con.print(f"{time.strftime('%H:%M:%S')} {escape(m)}", highlight=False))
        except KeyboardInterrupt:
            session.stop.set()


# --- simulator -------------------------------------------------------------------------------

def _cluster_options(func: F) -> F:
    from edgekit.cli.kube import cluster_options

    return cluster_options(func)


@click.command("sim")
@click.option("--namespace", "-n", default=None, help="Follow edgekit pods of this namespace [all].")
@click.option("--app", "-a", default=None, help="Only pods of this app.")
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, metavar="URL",
              help="Broker the virtual devices publish to.")
@click.option("--topic-root", default="edgekit/v1", show_default=True, help="Telemetry topic root.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True, metavar="S",
              help="Seconds between each device's health reports.")
@click.option("--rate", type=click.FloatRange(0, 1000), default=1.0, show_default=True, metavar="N",
              help="Inferences per second per device (throttled on purpose).")
@click.option("--fault", "fault_specs", multiple=True, metavar="KEY:KNOBS",
              help="Fault per revision/digest/version/*: error_rate=0.2,latency_ms=30,probe_fail,"
                   "crash_loop,silent,offline=0.1. Repeatable.")
@click.option("--faults-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of fault lines, re-read when it changes (# starts a comment).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where fetched models are kept [~/.cache/edgekit/sim-models].")
@click.option("--insecure-registry", is_flag=True, help="Allow plain HTTP / unverified TLS to the registry.")
@click.option("--public-key", type=click.Path(dir_okay=False), default=None,
              help="Devices refuse images without a valid signature by this key.")
@click.option("--duration", type=click.FloatRange(0), default=None, metavar="S", help="Stop after S seconds.")
@_cluster_options
@output_option
def sim_cmd(namespace: str | None, app: str | None, broker: str, topic_root: str, interval: float, rate: float,
            fault_specs: tuple[str, ...], faults_file: Path | None, cache_dir: Path | None,
            insecure_registry: bool, public_key: str | None, duration: float | None, output: str,
            **kw: Any) -> None:
    """Run the fleet simulator: one virtual device per node that runs an edgekit pod, each the real
    agent core (real onnxruntime session on the model the pod names, fetched once per digest; its own
    MQTT connection and last will). When Kubernetes replaces a node's pod with another revision, the
    device switches model. Faults per model make a rehearsal rollout fail the way a bad model would.

    \b
    Examples:
      edgekit sim --namespace edgekit --broker mqtt://127.0.0.1:1883 --interval 1
      edgekit sim -n edgekit --fault '3f2a9c1b7d0e:error_rate=0.2' --fault '*:latency_ms=5'
      edgekit sim -n edgekit --faults-file faults.txt --duration 300 --output json
    """
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.rehearsal.sim import FaultBook, SimSettings, Simulator, parse_fault
    from edgekit.rehearsal.sim.faults import Fault
    from edgekit.settings import cache_dir as default_cache

    def read(path: Path | None) -> list[str]:
        if path is None or not path.exists():
            return []
        return [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines() if ln.split("#", 1)[0].strip()]

    faults = FaultBook(dict(parse_fault(spec) for spec in fault_specs))
    fixed: dict[str, Fault] = dict(parse_fault(spec) for spec in fault_specs)
    client = _connect(kw.pop("kubeconfig", None), kw.pop("context", None))
    settings = SimSettings(broker_url=broker, cache_dir=cache_dir or default_cache() / "sim-models",
                           topic_root=topic_root, interval=interval, rate=rate, namespace=namespace, app=app,
                           public_key=public_key, registry_options=RegistryOptions(insecure=insecure_registry))
    stop = threading.Event()
    con = console(stderr=output == "json")
    sim = Simulator(client, settings, faults).start()
    seen: list[str] | None = None
    started = time.monotonic()
    try:
        with _stop_on_sigterm(stop):
            while not stop.wait(1.0):
                lines = read(faults_file)
                if lines != seen:
                    faults.clear()
                    for key, fault in fixed.items():
                        faults.set(key, fault)
                    for line in lines:
                        key, fault = parse_fault(line)
                        faults.set(key, fault)
                    seen = lines
                info = sim.summary()
                if output != "json":
                    con.print(f"{time.strftime('%H:%M:%S')} devices {info['devices']} {info['states']} "
                              f"by revision {info['running_by_revision']} inferences {info['inferences']} "
                              f"errors {info['errors']}", highlight=False)
                if duration is not None and time.monotonic() - started >= duration:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        info = sim.summary()
        sim.stop(graceful=True)
        client.close()
    if output == "json":
        emit_json(info)


def _push_command() -> click.Command:
    try:
        from edgekit.cli.images import push_cmd
    except ImportError:  # pragma: no cover - the images area is part of the package
        return push_rollout
    return PushCommand(push_rollout, push_cmd)


COMMANDS: list[click.Command] = [_push_command(), rollout, controller_cmd, sim_cmd]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(rollout())
