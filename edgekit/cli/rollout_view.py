"""How the rollout commands show rollouts: the status table with the current gate's figures, a
plan, the history, one-line answers, and an engine's progress while it runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.live import Live as RichLive
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edgekit.cli._output import console, emit_json
from edgekit.rollout import resource as r
from edgekit.rollout.engine import Live
from edgekit.rollout.gating import GateFigure, TelemetryFigures
from edgekit.rollout.resource import EdgeRollout
from edgekit.rollout.strategy import fmt_duration, fmt_percent

if TYPE_CHECKING:
    from edgekit.rollout.service import PushPlan


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


def _control(c: TelemetryFigures | None) -> str:
    """The control group's figures over the wave's window: error rate, p95, devices."""
    if c is None:
        return "-"
    errors = fmt_percent(c.error_rate) if c.error_rate is not None else "-"
    p95 = f"{c.p95_ms:.1f} ms" if c.p95_ms is not None else "-"
    return f"{errors} · {p95} ({c.on_digest} devices)"


def render(ro: EdgeRollout, live: Live | None = None) -> RenderableType:
    """The rollout as people read it: header, one row per wave, the current gate's figures."""
    st, spec = ro.status, ro.spec
    style = {"Succeeded": "green", "RolledBack": "red", "RollingBack": "red", "Paused": "yellow"}.get(st.phase, "cyan")
    prev = spec.previous.revision if spec.previous else "-"
    head = Text.assemble((f"{ro.name} ", "bold"), f"{spec.app} on {spec.group}: {prev} → {spec.target.revision}  ",
                         (st.phase, f"bold {style}"))
    table = Table(box=None, pad_edge=False, show_edge=False)
    controlled = any(w.control is not None for w in st.waves)
    cols = ("wave", "target", "nodes", "step", "ready", "reporting", "errors", "p95 ms",
            *(("control",) if controlled else ()), "verdict")
    for col in cols:
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
                      *((_control(w.control),) if controlled else ()),
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


def answer(ro: EdgeRollout, output: str, line: str) -> None:
    """The rollout as JSON for machines, or one line for people."""
    if output == "json":
        emit_json(ro.to_json())
    else:
        console().print(line)


def show(ro: EdgeRollout, output: str) -> None:
    """The rollout as JSON, or its table."""
    if output == "json":
        emit_json(ro.to_json())
    else:
        console().print(render(ro))


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def print_plan(plan: PushPlan, app: str, group: str) -> None:
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


def print_history(rows: list[dict[str, Any]]) -> None:
    table = Table(box=None)
    for col in ("name", "app", "group", "from", "to", "phase", "waves", "started", "message"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row["app"], escape(row["group"]), row["previous"] or "-", row["revision"],
                      row["phase"], f"{row['wavesPassed']}/{row['waves']}", (row["startedAt"] or "-")[:19],
                      escape(row["message"][:80]))
    console().print(table)


class Follower:
    """Shows a rollout as it moves: a live table on a terminal, one line per event otherwise."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.con = console(stderr=output == "json")
        self.tty = self.con.is_terminal
        self.seen = 0
        self.live: Live | None = None
        self.rollout: EdgeRollout | None = None

    def update(self, live: Live) -> None:
        """An engine's step (the live figures of the wave it holds)."""
        self.live = live
        self.show(live.rollout)

    def show(self, ro: EdgeRollout) -> None:
        self.rollout = ro
        if not self.tty:
            self.lines(ro)

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
