"""``edgekit dev``: local services for demos and development (``dev cluster up|down|status``,
``dev agent-image|controller-image build|push``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from edgekit.cli._output import console, emit_json, output_option

if TYPE_CHECKING:
    from edgekit.rehearsal.agentbuilding import BuiltImage
    from edgekit.rehearsal.agentimage import Platform, Recipe


@click.group("dev")
def dev() -> None:
    """Local services for demos and development.

    \b
    Examples:
      edgekit dev cluster up --nodes 200 --pools cameras=150,gateways=50 --arch arm64=0.7,amd64=0.3
      edgekit dev cluster status
      edgekit dev cluster down
      edgekit dev agent-image push --registry 127.0.0.1:5000
      edgekit dev controller-image push --registry 127.0.0.1:5000
    """


state_dir_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), default=None, envvar="EDGEKIT_DEV_DIR",
    help="Where the cluster keeps its data, logs and kubeconfig (default ~/.cache/edgekit/dev).")


@dev.group("cluster")
def cluster() -> None:
    """A real Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler) with
    KWOK fake nodes on 127.0.0.1, built from source once and cached.

    \b
    Examples:
      edgekit dev cluster up --nodes 200 --pools cameras=150,gateways=50 --arch arm64=0.7,amd64=0.3
      export KUBECONFIG=$(edgekit dev cluster status --output json | jq -r .kubeconfig)
      edgekit dev cluster down
    """


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(min=0), default=200, show_default=True, help="KWOK nodes to create.")
@click.option("--pools", default=None, metavar="NAME=N,...",
              help="Device groups and their sizes (must add up to --nodes); default one group 'edge'.")
@click.option("--arch", default="arm64=0.7,amd64=0.3", show_default=True, metavar="ARCH=W,...",
              help="Architecture mix (weights).")
@click.option("--zones", default="zone-a,zone-b,zone-c", show_default=True, help="Zones, round robin.")
@click.option("--gpu-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of nodes that advertise nvidia.com/gpu.")
@click.option("--install/--no-install", default=True, show_default=True,
              help="Also install edgekit's CRD and RBAC (as `edgekit install`).")
@click.option("--real-nodes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Real kubelets (each with its own containerd, runc and CNI bridge) to add to the first "
                   "group beside its KWOK nodes. Needs root, cgroup v1 and runc; builds kubelet and "
                   "containerd once.")
@click.option("--registry", "registries", multiple=True, metavar="HOST:PORT",
              help="A registry the real nodes pull from over plain http (repeatable).")
@state_dir_option
def cluster_up(nodes: int, pools: str | None, arch: str, zones: str, gpu_share: float, install: bool,
               real_nodes: int, registries: tuple[str, ...], state_dir: Path | None) -> None:
    """Start the dev cluster in the background (or report the one already running).

    \b
    Examples:
      edgekit dev cluster up
      edgekit dev cluster up --nodes 200 --pools cameras=150,gateways=50 --arch arm64=0.7,amd64=0.3
      edgekit dev cluster up --nodes 20 --gpu-share 0.25
      edgekit dev cluster up --nodes 20 --real-nodes 2 --registry 127.0.0.1:5000
    """
    from edgekit.rehearsal.devcluster import up
    from edgekit.rehearsal.nodes import FleetSpec

    spec = FleetSpec.simple(nodes, pools, arch, zones=tuple(z for z in zones.split(",") if z),
                            accelerators={"nvidia.com/gpu": gpu_share} if gpu_share else {})
    con = console(stderr=True)
    result = up(spec, state_dir=state_dir, install=install, real_nodes=real_nodes, registries=registries,
                say=lambda m: con.print(escape(m)))
    if result.already_running:
        con.print(f"dev cluster already running at {result.server} (`edgekit dev cluster down` first "
                  "to recreate it)")
    click.echo(f"export KUBECONFIG={result.kubeconfig}")


@cluster.command("down")
@click.option("--keep-data", is_flag=True, help="Keep etcd data and logs in the state directory.")
@state_dir_option
def cluster_down(keep_data: bool, state_dir: Path | None) -> None:
    """Stop the dev cluster's processes and remove its state; real nodes leave no process, mount,
    network interface, cgroup or iptables rule behind.

    \b
    Examples:
      edgekit dev cluster down
      edgekit dev cluster down --keep-data
    """
    from edgekit.rehearsal.devcluster import down

    stopped = down(state_dir, keep_data=keep_data)
    console(stderr=True).print("dev cluster stopped" if stopped else "no dev cluster was running")


@cluster.command("status")
@state_dir_option
@output_option
def cluster_status(state_dir: Path | None, output: str) -> None:
    """Show whether the dev cluster runs, its components, nodes and kubeconfig. Exit 1 if it is not up.

    \b
    Examples:
      edgekit dev cluster status
      edgekit dev cluster status --output json | jq .nodes_ready
    """
    from edgekit.rehearsal.devcluster import status

    info = status(state_dir)
    if output == "json":
        emit_json(info or {"ready": False})
    elif info is None:
        console().print("no dev cluster (start one with `edgekit dev cluster up`)")
    else:
        con = console()
        con.print(f"server {info['server']}  ready: {'yes' if info['ready'] else 'NO'}")
        con.print("components: " + ", ".join(f"{n} {'up' if ok else 'DOWN'}" for n, ok in info["components"].items()))
        if "nodes" in info:
            con.print(f"nodes {info['nodes']}, ready {info['nodes_ready']}")
        if info.get("real_nodes"):
            con.print("real nodes: " + ", ".join(info["real_nodes"]))
        con.print(f"kubeconfig {info['kubeconfig']}")
    if not info or not info["ready"]:
        raise SystemExit(1)


# One builder, two images: `dev agent-image` and `dev controller-image` take the same subcommands.
_IMAGES = {
    "agent": ("The edgekit-agent image (linux/amd64 + linux/arm64 OCI index), built here from a Debian rootfs "
              "(mmdebstrap) and Dockerfile.arm64 (buildah), cached in ~/.cache/edgekit/agent-image-<key>/.",
              "edgekit-agent", "both", "edgekit render REF --group cameras --app detector "
              "--agent-image 127.0.0.1:5000/edgekit-agent@sha256:..."),
    "controller": ("The edgekit controller's image (`edgekit controller`, the Deployment in "
                   "fleet-manifests/controller; linux/amd64, linux/arm64 with --platform), built here like the "
                   "agent image from the same Debian rootfs and Dockerfile.controller, cached in "
                   "~/.cache/edgekit/controller-image-<key>/.",
                   "edgekit", "linux/amd64", "kubectl -n edgekit set image deployment/edgekit-rollout-controller "
                   "controller=127.0.0.1:5000/edgekit@sha256:..."),
}


def _platforms(values: tuple[str, ...]) -> list[Platform] | None:
    from edgekit.rehearsal.agentimage import parse_platform

    return [parse_platform(v) for v in values] if values else None


def _show_built(built: BuiltImage, output: str, pushed: str | None = None) -> None:
    if output == "json":
        emit_json({"path": str(built.layout), "index_digest": built.index_digest, "version": built.plan.version,
                   "images": built.record["images"], **({"pushed": pushed} if pushed else {})})
        return
    con = console()
    con.print(f"{built.plan.recipe.name} image {built.plan.version}: {built.reference()} {built.index_digest}")
    for image in built.record["images"]:
        con.print(f"  {image['platform']:12} {image['manifest_digest']}  "
                  f"{image['compressed_bytes'] / 1e6:.1f} MB compressed, "
                  f"{image['uncompressed_bytes'] / 1e6:.1f} MB unpacked")
    if pushed:
        con.print(f"pushed {pushed}")


def _image_group(name: str) -> click.Group:
    about, repository, default_platforms, use = _IMAGES[name]
    platform_option = click.option(
        "--platform", "platforms", multiple=True, metavar="OS/ARCH",
        help=f"linux/amd64 or linux/arm64 (repeatable; default {default_platforms}).")

    def recipe() -> Recipe:
        from edgekit.rehearsal.agentimage import recipe_named

        return recipe_named(name)

    @click.group(f"{name}-image", help=f"""{about}

    \b
    Examples:
      edgekit dev {name}-image build
      edgekit dev {name}-image push --registry 127.0.0.1:5000
    """)
    def group() -> None:
        pass

    @group.command("build", help=f"""Build the {name} image index unless the one for the current sources is
    cached. The first build makes a Debian rootfs per platform (shared with the other image), and
    installs the packages under qemu for arm64 (minutes).

    \b
    Examples:
      edgekit dev {name}-image build
      edgekit dev {name}-image build --platform linux/amd64 --platform linux/arm64
    """)
    @platform_option
    @output_option
    def build_cmd(platforms: tuple[str, ...], output: str) -> None:
        from edgekit.rehearsal.agentbuilding import build

        con = console(stderr=True)
        _show_built(build(_platforms(platforms), say=lambda m: con.print(escape(m)), recipe=recipe()), output)

    @group.command("push", help=f"""Build (or reuse) the {name} image index and copy all its platforms to a
    registry with skopeo; prints the reference by digest.

    \b
    Examples:
      edgekit dev {name}-image push --registry 127.0.0.1:5000
      {use}
    """)
    @click.option("--registry", required=True, metavar="HOST:PORT", help="The registry to copy the index to.")
    @click.option("--repository", default=repository, show_default=True, help="Repository in the registry.")
    @click.option("--tls-verify/--no-tls-verify", default=False, show_default=True,
                  help="Use https and verify the registry's certificate (the local test registry is plain http).")
    @platform_option
    @output_option
    def push_cmd(registry: str, repository: str, tls_verify: bool, platforms: tuple[str, ...], output: str) -> None:
        from edgekit.rehearsal.agentbuilding import build, push

        con = console(stderr=True)
        built = build(_platforms(platforms), say=lambda m: con.print(escape(m)), recipe=recipe())
        pushed = push(built, registry, repository=repository, tls_verify=tls_verify,
                      say=lambda m: con.print(escape(m)))
        _show_built(built, output, pushed)

    return group


for _name in _IMAGES:
    dev.add_command(_image_group(_name))


COMMANDS: list[click.Command] = [dev]
