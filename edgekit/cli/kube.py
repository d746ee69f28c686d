"""``edgekit groups list|show``, ``edgekit render`` and ``edgekit install``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from edgekit.cli._output import console, emit_json, output_option
from edgekit.kube import names
from edgekit.kube.admission import DEFAULT_AGENT_REPOSITORIES
from edgekit.kube.applying import ApplyReport
from edgekit.kube.client import KubeClient
from edgekit.kube.deploying import deploy_revision, install
from edgekit.kube.groups import GroupSummary, list_groups, parse_group, show_group
from edgekit.kube.install import install_objects
from edgekit.kube.kubeconfigs import find_kubeconfig
from edgekit.kube.rendering import DEFAULT_AGENT_IMAGE, RenderSettings, render
from edgekit.kube.targets import DEFAULT_TARGET, TARGETS
from edgekit.kube.yamlio import dump_all

F = TypeVar("F", bound=Callable[..., Any])


def cluster_options(func: F) -> F:
    """``--kubeconfig`` and ``--context`` (default: $KUBECONFIG, ~/.kube/config, else a running
    ``edgekit dev cluster``)."""
    func = click.option("--context", default=None, help="kubeconfig context (default: current).")(func)
    return click.option("--kubeconfig", type=click.Path(path_type=Path), default=None,
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the "
                             "running `edgekit dev cluster`).")(func)


def connect(kubeconfig: Path | None, context: str | None) -> KubeClient:
    return KubeClient.from_kubeconfig(find_kubeconfig(kubeconfig), context=context)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _apps(summary: GroupSummary) -> str:
    parts = []
    for app, revisions in summary.apps.items():
        ready = summary.pods_ready.get(app, {})
        parts.append(f"{app}: " + ", ".join(f"{rev} {n} ({ready.get(rev, 0)} ready)" for rev, n in revisions.items()))
    return "; ".join(parts) or "-"


# --- groups ----------------------------------------------------------------------------------
@click.group("groups")
def groups() -> None:
    """Device groups: sets of nodes by label, KubeEdge NodeGroup or OpenYurt NodePool.

    \b
    A group is written NAME (label edgekit.io/group=NAME), kubeedge:NAME
    (apps.kubeedge.io/belonging-to=NAME), openyurt:NAME (apps.openyurt.io/nodepool=NAME)
    or selector:EXPR (any label selector).

    \b
    Examples:
      edgekit groups list
      edgekit groups show cameras
      edgekit groups show openyurt:gateways --output json
    """


@groups.command("list")
@click.option("--namespace", "-n", default=None, help="Only count edgekit pods in this namespace.")
@cluster_options
@output_option
def groups_list(namespace: str | None, kubeconfig: Path | None, context: str | None, output: str) -> None:
    """List every device group on the cluster's nodes with node, readiness, architecture and
    revision counts (two API calls, whatever the fleet's size).

    \b
    Examples:
      edgekit groups list
      edgekit groups list --output json | jq '.[] | {name, nodes, ready}'
    """
    with connect(kubeconfig, context) as client:
        summaries = list_groups(client, namespace=namespace)
    if output == "json":
        emit_json([s.as_dict() for s in summaries])
        return
    table = Table(title="device groups", title_justify="left")
    for col in ("group", "kinds", "nodes", "ready", "arch", "apps (revision: nodes)"):
        table.add_column(col, justify="right" if col in ("nodes", "ready") else "left")
    for s in summaries:
        table.add_row(escape(s.group.name), ",".join(s.kinds), str(s.nodes), str(s.ready),
                      _counts(dict(s.by_arch)), escape(_apps(s)))
    console().print(table)


@groups.command("show")
@click.argument("group")
@click.option("--target", type=click.Choice(list(TARGETS)), default=None,
              help="Platform whose label a bare group NAME means (default: edgekit.io/group).")
@click.option("--namespace", "-n", default=None, help="Only look at edgekit pods in this namespace.")
@click.option("--nodes/--no-nodes", "with_nodes", default=True, show_default=True,
              help="List every node, not just the summary.")
@cluster_options
@output_option
def groups_show(group: str, target: str | None, namespace: str | None, with_nodes: bool,
                kubeconfig: Path | None, context: str | None, output: str) -> None:
    """Show one device group: its nodes, their architecture, readiness, and which revision of each
    app every node is labelled for and runs.

    \b
    Examples:
      edgekit groups show cameras
      edgekit groups show kubeedge:cameras --no-nodes
      edgekit groups show 'selector:kubernetes.io/arch=arm64,topology.kubernetes.io/zone=zone-a'
    """
    parsed = parse_group(group, target)
    with connect(kubeconfig, context) as client:
        summary, states = show_group(client, parsed, namespace=namespace)
    if output == "json":
        data = summary.as_dict()
        if with_nodes:
            data["node_list"] = [{"name": s.name, "arch": s.arch, "zone": s.zone, "ready": s.ready,
                                  "revisions": dict(s.revisions),
                                  "pods": {a: {"revision": r, "ready": ok} for a, (r, ok) in s.pods.items()},
                                  "accelerators": dict(s.accelerators)} for s in states]
        emit_json(data)
        return
    con = console()
    con.print(f"[bold]{escape(parsed.spec)}[/]  selector {escape(parsed.selector)}")
    con.print(f"nodes {summary.nodes}, ready {summary.ready}; arch {_counts(dict(summary.by_arch))}; "
              f"zones {_counts(dict(summary.by_zone))}")
    con.print(f"apps: {escape(_apps(summary))}")
    if with_nodes:
        apps = sorted({a for s in states for a in (*s.revisions, *s.pods)})
        table = Table(title_justify="left")
        for col in ("node", "arch", "zone", "ready", *apps):
            table.add_column(col)
        for s in states:
            cells = []
            for app in apps:
                rev = s.revisions.get(app, "-")
                pod = s.pods.get(app)
                cells.append(f"{rev}" + (f" (pod {pod[0]}, {'ready' if pod[1] else 'not ready'})" if pod else ""))
            table.add_row(s.name, s.arch, s.zone, "yes" if s.ready else "NO", *cells)
        con.print(table)


# --- render / install ------------------------------------------------------------------------
def _print_report(report: ApplyReport) -> None:
    con = console()
    if report.dry_run:
        diff = report.diff()
        if diff:
            click.echo(diff, nl=False)
    for r in report.results:
        note = "" if r.validated or not report.dry_run else " (not validated: its namespace or CRD is new)"
        verb = f"would be {r.action}" if report.dry_run and r.action != "unchanged" else r.action
        con.print(f"{escape(r.ref)} {verb}{note}")


@click.command("render")
@click.argument("image")
@click.option("--group", "-g", "group", required=True, help="Device group (NAME, kubeedge:NAME, openyurt:NAME, "
              "selector:EXPR).")
@click.option("--app", "-a", required=True, help="Application name (DaemonSets are APP-REVISION).")
@click.option("--target", "-t", type=click.Choice(list(TARGETS)), default=DEFAULT_TARGET, show_default=True,
              help="Cluster flavour: tolerations, affinity and how the model arrives.")
@click.option("--namespace", "-n", default=names.DEFAULT_NAMESPACE, show_default=True)
@click.option("--revision", default=None, help="Revision name (default: first 12 hex digits of the digest).")
@click.option("--agent-image", default=None, help="edgekit-agent container image.")
@click.option("--model-source", type=click.Choice(["auto", "image-volume", "init-container"]), default="auto",
              show_default=True, help="Image volume or init container fetching by digest; auto: the image "
              "volume when every node's kubelet (1.35+) and runtime (containerd 2.1+, CRI-O 1.31+) can "
              "mount one (decided with --apply; the target's default otherwise).")
@click.option("--accelerator", default=None, metavar="RESOURCE",
              help="Device-plugin resource to request, e.g. nvidia.com/gpu (CPU stays as fallback).")
@click.option("--execution-provider", default=None, metavar="EP",
              help="onnxruntime execution provider for --accelerator (default: by resource).")
@click.option("--broker-url", default=None, help="MQTT broker for telemetry (default: the fleet broker).")
@click.option("--registry-insecure", is_flag=True, help="The model registry speaks plain HTTP (local demos).")
@click.option("--require-digest", is_flag=True, help="Refuse an image reference without @sha256:.")
@click.option("--public-key", type=click.Path(dir_okay=False), envvar="EDGEKIT_ROLLOUT_PUBLIC_KEY", default=None,
              help="Cosign public key the devices verify images with: shipped as ConfigMap edgekit-cosign-key "
                   "[EDGEKIT_ROLLOUT_PUBLIC_KEY].")
@click.option("--allow-unsigned", is_flag=True, envvar="EDGEKIT_ROLLOUT_ALLOW_UNSIGNED",
              help="Without --public-key, let the devices run unsigned images [EDGEKIT_ROLLOUT_ALLOW_UNSIGNED].")
@click.option("--api-from-namespace", "api_from", multiple=True, metavar="NS",
              help="Pods of this namespace may reach the agent's API (repeatable; default: only the node itself).")
@click.option("--mqtt-auth", type=click.Choice(["node-cert", "none"]), default="node-cert", show_default=True,
              help="How agents authenticate to the broker: each node's TLS client certificate, or none "
                   "(a plain mqtt:// broker on a network you trust).")
@click.option("--mqtt-allow-plaintext-password", "plaintext_password", is_flag=True,
              help="Let the agents send an MQTT password over plain mqtt:// to the broker (a network you trust).")
@click.option("--format", "-f", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option("--apply", "do_apply", is_flag=True, help="Server-side apply to the cluster (field manager edgekit).")
@click.option("--dry-run", is_flag=True, help="Server dry run: validate and print the diff, change nothing.")
@click.option("--force-conflicts", is_flag=True, help="Take over fields another field manager owns.")
@cluster_options
def render_cmd(image: str, group: str, app: str, target: str, namespace: str, revision: str | None,
               agent_image: str | None, model_source: str, accelerator: str | None,
               execution_provider: str | None, broker_url: str | None, registry_insecure: bool,
               require_digest: bool, public_key: str | None, allow_unsigned: bool, api_from: tuple[str, ...],
               mqtt_auth: str, plaintext_password: bool, fmt: str,
               do_apply: bool, dry_run: bool, force_conflicts: bool, kubeconfig: Path | None,
               context: str | None) -> None:
    """Print the manifests of one revision of an app on a device group: DaemonSet APP-REVISION
    (pods only on nodes labelled rollout.edgekit.io/APP=REVISION within the group), agent
    ConfigMap, ServiceAccount, node-local Service and a NetworkPolicy (only the node itself and
    the --api-from-namespace namespaces reach the agent's API). With --apply or --dry-run, check
    the group against the cluster and server-side apply (or diff) instead.

    Images are signed by default: --public-key FILE ships the key to the devices (ConfigMap
    edgekit-cosign-key, mounted at /etc/edgekit-agent/keys) and the agents refuse images it does not
    verify; --allow-unsigned renders agents that run unsigned images. One of the two is required.

    \b
    Examples:
      edgekit render registry.local/models/digits@sha256:3f2a... --group cameras --app digits --public-key release.pub
      export EDGEKIT_ROLLOUT_PUBLIC_KEY=release.pub
      edgekit render REF --group kubeedge:cameras --app digits --target kubeedge --format json
      edgekit render REF --group gpu-boxes --app det --accelerator nvidia.com/gpu --apply
      edgekit render REF --group cameras --app digits --require-digest --dry-run
    """
    from edgekit.settings import read_public_key_pem, require_public_key

    require_public_key(public_key, allow_unsigned, what="edgekit render",
                       key_from="pass --public-key FILE (or set EDGEKIT_ROLLOUT_PUBLIC_KEY), the key the devices "
                                "verify images with")
    settings = RenderSettings(
        app=app, image=image, group=parse_group(group, target), target=target, namespace=namespace,
        revision=revision, model_source=model_source,  # type: ignore[arg-type]
        require_digest=require_digest, accelerator=accelerator, accelerator_provider=execution_provider,
        broker_url=broker_url, agent_image=agent_image or DEFAULT_AGENT_IMAGE, registry_insecure=registry_insecure,
        public_key_pem=read_public_key_pem(public_key) if public_key else None, allow_unsigned=allow_unsigned,
        api_from_namespaces=api_from, mqtt_allow_plaintext_password=plaintext_password,
        mqtt_auth=mqtt_auth,  # type: ignore[arg-type]
    )
    if not (do_apply or dry_run):
        objects = render(settings)
        click.echo(json.dumps(objects, indent=2) if fmt == "json" else dump_all(objects), nl=fmt == "json")
        return
    with connect(kubeconfig, context) as client:
        result = deploy_revision(client, settings, dry_run=dry_run, force=force_conflicts)
    _print_report(result.report)


@click.command("install")
@click.option("--namespace", "-n", default=names.DEFAULT_NAMESPACE, show_default=True,
              help="Namespace of the rollout engine and its EdgeRollouts.")
@click.option("--public-key", type=click.Path(dir_okay=False), envvar="EDGEKIT_ROLLOUT_PUBLIC_KEY", default=None,
              help="Cosign public key the devices verify images with: written as ConfigMap edgekit-cosign-key "
                   "[EDGEKIT_ROLLOUT_PUBLIC_KEY].")
@click.option("--mqtt-ca", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="CA certificate (PEM) the devices verify the broker with: written as ConfigMap "
                   "edgekit-mqtt-ca (key ca.crt).")
@click.option("--dry-run", is_flag=True, help="Server dry run: validate and print the diff, change nothing.")
@click.option("--print", "print_only", is_flag=True, help="Print the manifests (YAML), contact no cluster.")
@click.option("--force-conflicts", is_flag=True, help="Take over fields another field manager owns.")
@click.option("--agent-repository", "agent_repos", multiple=True, metavar="REPO",
              help="Agent image repository the engine may deploy (repeatable; default: "
                   f"{', '.join(DEFAULT_AGENT_REPOSITORIES)}).")
@cluster_options
def install_cmd(namespace: str, public_key: str | None, mqtt_ca: str | None, dry_run: bool, print_only: bool,
                force_conflicts: bool, agent_repos: tuple[str, ...], kubeconfig: Path | None,
                context: str | None) -> None:
    """Install the EdgeRollout CRD (edgekit.io/v1alpha1), the namespace (Pod Security warn/audit
    restricted), least-privilege RBAC for the rollout engine (ServiceAccount edgekit-engine) and
    the ValidatingAdmissionPolicies that hold the engine to edgekit's DaemonSets, rollout labels on
    nodes and its own ConfigMaps, Services and NetworkPolicies; CRD and RBAC first.

    The trust ConfigMaps the devices mount are written here, with the operator's credentials, and
    are read-only to the engine: --public-key FILE writes edgekit-cosign-key (the release key the
    agents verify images with), --mqtt-ca FILE writes edgekit-mqtt-ca (the broker's CA). Both are
    checked first: a file that is not a PEM public key exits 29, one that is not a PEM certificate
    exits 53, and nothing is applied.

    \b
    Examples:
      edgekit install --public-key release.pub
      edgekit install --public-key release.pub --mqtt-ca ca.pem
      edgekit install --namespace fleet --dry-run
      edgekit install --print > edgekit-install.yaml
      edgekit install --agent-repository registry.local/edgekit-agent
    """
    from edgekit.settings import read_ca_pem, read_public_key_pem

    repos = agent_repos or DEFAULT_AGENT_REPOSITORIES
    key_pem = read_public_key_pem(public_key) if public_key else None
    ca_pem = read_ca_pem(mqtt_ca) if mqtt_ca else None
    if print_only:
        click.echo(dump_all(install_objects(namespace, repos, public_key_pem=key_pem, mqtt_ca_pem=ca_pem)), nl=False)
        return
    with connect(kubeconfig, context) as client:
        report = install(client, namespace, dry_run=dry_run, force=force_conflicts, agent_repositories=repos,
                         public_key_pem=key_pem, mqtt_ca_pem=ca_pem)
    _print_report(report)


COMMANDS: list[click.Command] = [groups, render_cmd, install_cmd]
