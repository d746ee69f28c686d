"""The option declarations of ``edgekit push``, ``edgekit rollout ...`` and ``edgekit controller``,
each written once and stacked by the commands in the order their help lists them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from edgekit.cli._output import output_option
from edgekit.cli.kube import cluster_options
from edgekit.gates import GATES, GateField
from edgekit.kube.targets import TARGETS
from edgekit.rollout.strategy import DEFAULT_WAVES, build_strategy

if TYPE_CHECKING:
    from edgekit.rollout.strategy import Strategy

F = TypeVar("F", bound=Callable[..., Any])


def stacked(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """The decorators applied as if written one above the other, first on top."""
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


def _gate_option(entry: GateField) -> Callable[[Any], Any]:
    """A gate's CLI option, from its one declaration in ``edgekit.gates``."""
    text = f"{entry.help} [{entry.default_text()}]."
    if entry.unit == "flag":
        return click.option(entry.option, entry.param, is_flag=True, default=None, help=text)
    if entry.choices and entry.cli_choices:
        return click.option(entry.option, entry.param, type=click.Choice(list(entry.choices)), default=None,
                            help=text)
    if entry.choices:   # the flag once took another kind of value: build_strategy reads both
        return click.option(entry.option, entry.param, default=None, metavar=f"[{'|'.join(entry.choices)}]",
                            help=text)
    return click.option(entry.option, entry.param, default=None, metavar=entry.metavar, help=text)


# Every strategy flag is None when not given (the default applies); auto-promote always has a value.
_VALUED_STRATEGY_FLAGS = ("waves", "bake", "spread_by", "canary_selector", "baseline_window", *(g.param for g in GATES))
_STRATEGY_FLAGS = (*_VALUED_STRATEGY_FLAGS, "auto_promote")

strategy_options = stacked(
    click.option("--waves", default=None, metavar="LIST",
                 help=f"Cumulative wave targets, canary first: counts or percentages [{DEFAULT_WAVES}]."),
    click.option("--bake", default=None, metavar="DURATION", help="Time each wave runs before its gate [2m]."),
    click.option("--spread-by", default=None, metavar="LABEL",
                 help="Spread every wave over this node label, e.g. topology.kubernetes.io/zone."),
    click.option("--canary-selector", default=None, metavar="SELECTOR",
                 help="Move the nodes this label selector matches first, e.g. edgekit.io/canary=true: "
                      "the canary wave is made of them."),
    *(_gate_option(g) for g in GATES),
    click.option("--auto-promote/--manual-promote", default=True, show_default=True,
                 help="Advance by itself when the gates pass, or wait for `edgekit rollout promote`."),
    click.option("--baseline-window", default=None, metavar="DURATION",
                 help="With --baseline before: telemetry window before the move [the bake, 5s-60s]."),
)

# Signed by default: what creates or runs a rollout needs one of the two.
trust_options = stacked(
    click.option("--public-key", type=click.Path(dir_okay=False), default=None,
                 help="Require a valid cosign signature by this key; the devices verify with it too "
                      "(ConfigMap edgekit-cosign-key) [EDGEKIT_ROLLOUT_PUBLIC_KEY]."),
    click.option("--allow-unsigned", is_flag=True, default=None,
                 help="Without a public key, roll out unsigned images [EDGEKIT_ROLLOUT_ALLOW_UNSIGNED]."),
)

# What the engine renders into the agents' DaemonSets at every wave, from its own settings (not
# from the EdgeRollout): every command that runs an engine (push, undo, resume, controller) takes
# these, so a resumed rollout renders what the push rendered.
agent_render_options = stacked(
    click.option("--insecure-registry", is_flag=True, default=None, help="Allow plain HTTP / unverified TLS."),
    click.option("--agent-image", default=None, help="Container image of edgekit-agent for the DaemonSets."),
    click.option("--agent-broker", default=None, metavar="URL", help="Broker URL the agents publish to."),
    click.option("--mqtt-auth", type=click.Choice(["node-cert", "none"]), default=None,
                 help="How agents authenticate to the broker [node-cert]."),
    click.option("--model-source", type=click.Choice(["auto", "image-volume", "init-container"]), default=None,
                 help="How the model reaches the pods: auto picks image volumes where every node of the group "
                      "mounts them, else the init-container fetch [auto]."),
)

image_options = stacked(
    click.option("--target", type=click.Choice(list(TARGETS)), default=None,
                 help="Platform profile of the group's nodes [k3s]."),
    trust_options,
    click.option("--require-digest", is_flag=True, default=None,
                 help="Refuse a tag instead of resolving it once to its digest."),
    agent_render_options,
)

# What the rendered agents let through. The engine renders the DaemonSets (and the app's
# NetworkPolicy) at every wave from its own settings, not from the EdgeRollout, so every command that
# runs an engine (push, undo, resume, controller) takes these: one without them would close what
# another opened.
agent_access_options = stacked(
    click.option("--api-from-namespace", "api_from_namespaces", multiple=True, metavar="NS",
                 help="Pods of this namespace may reach the agents' API (repeatable; default: only the node "
                      "itself) [EDGEKIT_ROLLOUT_API_FROM_NAMESPACES, comma-separated]."),
    click.option("--mqtt-allow-plaintext-password", is_flag=True, default=None,
                 help="Let the agents send an MQTT password over plain mqtt:// (a network you trust) "
                      "[EDGEKIT_ROLLOUT_MQTT_ALLOW_PLAINTEXT_PASSWORD]."),
)

telemetry_options = stacked(
    click.option("--broker", "brokers", multiple=True, metavar="URL",
                 help="MQTT broker(s) the gates read telemetry from [EDGEKIT_FLEET_BROKERS, mqtt://127.0.0.1:1883]."),
    click.option("--topic-root", default=None, help="Telemetry topic root [edgekit/v1]."),
    click.option("--health-interval", type=float, default=None, metavar="S",
                 help="Seconds between the agents' health reports [10]; also rendered into the agents."),
)


# Where the rollouts live.
session_options = stacked(
    click.option("--namespace", "-n", default=None, help="Namespace of the rollouts and DaemonSets [edgekit]."),
    click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                 help="Rollout settings file (JSON/YAML); env EDGEKIT_ROLLOUT_* overrides it."),
    cluster_options,
)


# Every command that answers with a rollout (or a list of them) ends with these.
session_and_output = stacked(session_options, output_option)

# NAME, or the newest rollout of --app (on --group): how the steering commands address a rollout.
name_args = stacked(
    click.argument("name", required=False),
    click.option("--app", "-a", default=None, help="Without NAME: the newest rollout of this app."),
    click.option("--group", "-g", default=None, help="... on this group."),
)


def starting_options(detach_help: str) -> Callable[[F], F]:
    """The flags of a command that creates a rollout and runs it here (push, undo)."""
    return stacked(strategy_options, image_options, agent_access_options, telemetry_options,
                   click.option("--detach", is_flag=True, help=detach_help), session_and_output)


def strategy_given(kw: dict[str, Any]) -> bool:
    """Whether any strategy flag with a default was given (undo keeps the old strategy otherwise)."""
    return any(kw.get(k) is not None for k in _VALUED_STRATEGY_FLAGS)


def pop_strategy(kw: dict[str, Any]) -> Strategy:
    """The strategy the flags ask for (removed from ``kw``); flags not given keep their defaults."""
    args = {k: kw.pop(k) for k in _STRATEGY_FLAGS}
    return build_strategy(**{k: v for k, v in args.items() if v is not None})
