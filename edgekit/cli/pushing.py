"""``edgekit push``: one name for two commands, picked by the arguments. With ``--group`` it rolls
an image out to a device group (this module); without, ``push LAYOUT REF`` uploads an image layout
(``edgekit.cli.images``). Both were specified under the same name."""

from __future__ import annotations

from typing import Any

import click

from edgekit.cli.images import push_cmd as upload_cmd
from edgekit.cli.rollout_options import pop_strategy, starting_options
from edgekit.cli.rollout_session import opened, start
from edgekit.kube.targets import GROUP_FORMS


@click.command("push")
@click.argument("image")
@click.option("--group", "-g", required=True, help=f"Device group: {GROUP_FORMS}.")
@click.option("--app", "-a", required=True, help="Application name; its DaemonSets are <app>-<revision>.")
@click.option("--shadow-first", is_flag=True, default=False,
              help="Before any device switches, the canary's devices run IMAGE beside the current model on "
                   "live requests; go on only when they agree (--min-agreement).")
@click.option("--min-agreement", type=float, default=None, metavar="FRACTION",
              help="Shadow gate: agreement the candidate must show at the stated confidence [0.98].")
@click.option("--shadow-ratio", type=float, default=None, metavar="FRACTION",
              help="Share of live requests the shadow runs on [0.1].")
@click.option("--shadow-metric", default=None, metavar="METRIC",
              help="Agreement metric: top1, cosine or MODULE:FUNCTION (as `edgekit quantize --metric`) [top1].")
@click.option("--shadow-min-samples", type=int, default=None, metavar="N",
              help="Shadow samples to gather before judging [200].")
@click.option("--shadow-timeout", default=None, metavar="DURATION",
              help="Longest the shadow wave may take; undecided by then, it fails [10m].")
@starting_options("Create the rollout and return; `edgekit controller` runs it.")
def push_rollout(image: str, group: str, app: str, detach: bool, output: str, **kw: Any) -> None:
    """Roll IMAGE out to a device group in health-gated waves, rolling back by itself when a
    wave's gate fails.

    The tag is resolved once and the rollout pinned to that digest. Images are signed by default:
    the image must carry a valid signature by --public-key (EDGEKIT_ROLLOUT_PUBLIC_KEY), which the
    devices verify with too (ConfigMap edgekit-cosign-key, created when missing); --allow-unsigned
    rolls out unsigned images instead. Each wave relabels its nodes to the new revision, waits
    for the pods to be Ready and for the bake time, then judges the wave from the devices' own
    telemetry: error rate, p95 latency (absolute and against its control group: the group's devices
    still on the old revision, same window), golden probe, share of devices reporting the new model.
    All state lives in an EdgeRollout, so `edgekit rollout resume` continues from any machine if
    this process dies.

    Without --group, `edgekit push LAYOUT REF` uploads an image layout to a registry.

    \b
    Examples:
      edgekit push registry.local/detector:1.4 --group cameras --app detector
      edgekit push registry.local/detector:1.4 -g cameras -a detector --waves 1,5%,25%,100% \\
          --bake 2m --spread-by topology.kubernetes.io/zone --max-error-rate 1% --max-p95-regression 20%
      edgekit push registry.local/detector@sha256:3f2a… -g kubeedge:cams -a detector --manual-promote
      edgekit push registry.local/detector:1.5 -g cameras -a detector --shadow-first --min-agreement 0.98
    """
    from edgekit.rollout import service

    shadow = _pop_shadow(kw)
    strategy = pop_strategy(kw)
    with opened(kw, images=True, telemetry=not detach, trust="edgekit push") as session:
        plan = service.plan_push(session, image=image, group=group, app=app, strategy=strategy, shadow=shadow)
        start(session, plan, output, detach=detach,
              created=lambda ro: f"created rollout {ro.name}: {len(ro.status.waves)} waves over "
                                 f"{sum(len(w.nodes) for w in ro.status.waves)} nodes; "
                                 f"`edgekit rollout status {ro.name} --watch` follows it",
              starting=lambda ro: f"rollout {ro.name}: {app} {plan.rollout.spec.target.image} on {group}, "
                                  f"{len(ro.status.waves)} waves")


def _pop_shadow(kw: dict[str, Any]) -> Any:
    """The shadow policy from the --shadow-* options (None without --shadow-first)."""
    from edgekit.errors import ThresholdRangeError
    from edgekit.rollout.shadowing import ShadowPolicy, validate_shadow
    from edgekit.rollout.strategy import parse_duration

    first = kw.pop("shadow_first")
    given = {k: kw.pop(k) for k in ("min_agreement", "shadow_ratio", "shadow_metric", "shadow_min_samples",
                                    "shadow_timeout")}
    if not first:
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if named:
            raise ThresholdRangeError(f"{', '.join(named)} need --shadow-first")
        return None
    base = ShadowPolicy()
    return validate_shadow(ShadowPolicy(
        min_agreement=base.min_agreement if given["min_agreement"] is None else given["min_agreement"],
        ratio=base.ratio if given["shadow_ratio"] is None else given["shadow_ratio"],
        metric=given["shadow_metric"] or base.metric,
        min_samples=base.min_samples if given["shadow_min_samples"] is None else given["shadow_min_samples"],
        timeout_s=base.timeout_s if given["shadow_timeout"] is None else parse_duration(
            given["shadow_timeout"], flag="--shadow-timeout")))


def _wants_rollout(args: list[str]) -> bool:
    return any(a in ("--group", "-g") or a.startswith(("--group=", "-g")) for a in args)


class PushCommand(click.Command):
    """``edgekit push``: the arguments pick the command that parses and runs them (``--group``: the
    rollout; otherwise the upload), so each mode keeps its own options, errors and completion. Its
    help shows both modes; ``modes`` lists them for the CLI reference."""

    def __init__(self, rollout: click.Command, upload: click.Command) -> None:
        super().__init__("push", help=rollout.help,
                         short_help="Roll an image out to a device group in health-gated waves (with --group), "
                                    "or upload an image layout to a registry.")
        self.rollout, self.upload = rollout, upload
        self.modes = (("with --group: a rollout", rollout), ("without --group: upload an image layout", upload))

    def get_help(self, ctx: click.Context) -> str:
        def page(mode: click.Command) -> str:
            return mode.get_help(click.Context(mode, info_name=ctx.info_name, parent=ctx.parent))
        return f"{page(self.rollout)}\n\nWithout --group:\n\n{page(self.upload)}"

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        mode = self.rollout if _wants_rollout(args) else self.upload
        if mode is self.upload and any(a in ("--help", "-h") for a in args):
            ctx = click.Context(self, info_name=info_name, parent=parent)
            click.echo(self.get_help(ctx))
            ctx.exit(0)
        return mode.make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        # ``ctx`` is the picked mode's context (see make_context); reached through ``PushCommand.main``.
        return ctx.command.invoke(ctx)


COMMANDS: list[click.Command] = [PushCommand(push_rollout, upload_cmd)]
