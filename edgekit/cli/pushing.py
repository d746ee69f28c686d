"""``edgekit push``: one name for two commands, picked by the arguments. With ``--group`` it rolls
an image out to a device group (this module); without, ``push LAYOUT REF`` uploads an image layout
(``edgekit.cli.images``). Both were specified under the same name."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from edgekit.cli._output import console
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
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Release policy (YAML or JSON: max_accuracy_drop, require_attestation, max_latency_ratio, "
                   "platform, latency_evidence): refuse, before any cluster call, an image whose signed "
                   "quantization attestation breaks it (exit 91-94).")
@click.option("--max-accuracy-drop", default=None, metavar="DROP",
              help="Policy: largest attested accuracy drop vs FP32 (1% or 0.01: one point) [policy file].")
@click.option("--max-latency-ratio", type=float, default=None, metavar="RATIO",
              help="Policy: refuse an attested latency ratio vs FP32 at or over this [1.0: must be faster].")
@click.option("--latency-evidence", type=click.Choice(["median", "interval"]), default=None,
              help="Policy: compare the attested median ratio, or the upper bound of its interval (the image "
                   "must be shown faster at the recorded confidence) [median].")
@click.option("--require-attestation/--no-require-attestation", default=None,
              help="Policy: refuse an image without a quantization attestation by --public-key [required].")
@click.option("--policy-platform", default=None, metavar="OS/ARCH",
              help="Policy: the group's platform whose attested latency counts [every measured platform].")
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

    With --policy (or the policy flags) the image's signed quantization attestation is verified with
    --public-key and judged first: an accuracy drop over budget, a latency ratio at or over the
    limit on the group's platform, or an attestation missing or signed by another key stops the
    push before any call to the cluster.

    Without --group, `edgekit push LAYOUT REF` uploads an image layout to a registry.

    \b
    Examples:
      edgekit push registry.local/detector:1.4 --group cameras --app detector
      edgekit push registry.local/detector:1.4 -g cameras -a detector --waves 1,5%,25%,100% \\
          --bake 2m --spread-by topology.kubernetes.io/zone --max-error-rate 1% --max-p95-regression 20%
      edgekit push registry.local/detector@sha256:3f2a… -g kubeedge:cams -a detector --manual-promote
      edgekit push registry.local/detector:1.5 -g cameras -a detector --shadow-first --min-agreement 0.98
      edgekit push registry.local/detector:1.6 -g cameras -a detector --policy release-policy.yaml
    """
    from edgekit.rollout import service

    shadow = _pop_shadow(kw)
    strategy = pop_strategy(kw)
    policy = _pop_policy(kw)
    checked: list[str] = []

    def check_policy(settings: Any, options: Any) -> None:
        from edgekit.rollout.releasing import check_release

        assert policy is not None
        release = check_release(image, policy, settings.public_key, options=options)
        checked.append(release.image)  # roll out exactly the digest the policy judged
        if output != "json":
            console(stderr=True).print(escape(f"release policy passed: {'; '.join(release.verdict.checked)}"),
                                       highlight=False)

    with opened(kw, images=True, telemetry=not detach, trust="edgekit push",
                before_connect=check_policy if policy is not None else None) as session:
        target = checked[0] if checked else image
        plan = service.plan_push(session, image=target, group=group, app=app, strategy=strategy, shadow=shadow)
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


def _pop_policy(kw: dict[str, Any]) -> Any:
    """The release policy from --policy and the per-rule flags (flags win); None when none is given."""
    from edgekit.rollout.policy import ReleasePolicy, override
    from edgekit.rollout.releasing import read_policy_file

    path = kw.pop("policy_file")
    flags = {"max_accuracy_drop": kw.pop("max_accuracy_drop"), "max_latency_ratio": kw.pop("max_latency_ratio"),
             "require_attestation": kw.pop("require_attestation"), "platform": kw.pop("policy_platform"),
             "latency_evidence": kw.pop("latency_evidence")}
    if path is None and all(v is None for v in flags.values()):
        return None
    base = read_policy_file(path) if path is not None else ReleasePolicy()
    return override(base, where="policy flags", **flags)


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
