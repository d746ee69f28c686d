"""Build the edgekit-agent image index (or the controller's) here (mmdebstrap, buildah, skopeo) and
push it to a registry.

The plan comes from ``agentimage``; this module runs it. Each platform's Debian rootfs is cached in
``~/.cache/edgekit/agent-rootfs-<release>-<arch>-<key>/rootfs.tar`` (both images start from it) and
the finished OCI layout (one index for linux/amd64 + linux/arm64) in
``~/.cache/edgekit/<image>-image-<key>/oci``, reused while the sources are unchanged, like the Go
programs of ``gobuild``.

    python -m edgekit.rehearsal.agentbuilding            # build what is missing (scripts/build-agent-image)
    python -m edgekit.rehearsal.agentbuilding --check    # say whether the image is built, build nothing
    python -m edgekit.rehearsal.agentbuilding --image controller   # the edgekit controller's image
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.rehearsal.agentimage import (
    AGENT,
    RECIPES,
    AgentImageError,
    ImagePlan,
    Platform,
    Recipe,
    RootfsPlan,
    image_index,
    is_context_file,
    parse_platform,
    plan,
    recipe_named,
)
from edgekit.settings import cache_dir

__all__ = ["BuiltImage", "build", "build_plan", "inspect_built", "push", "require_tools", "run_in_image"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_STAMP = ".edgekit-build"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The apt package each tool comes from (scripts/setup installs them).
TOOL_PACKAGES = {"mmdebstrap": "mmdebstrap", "buildah": "buildah", "skopeo": "skopeo", "runc": "runc",
                 "newuidmap": "uidmap"}
BUILD_TOOLS = ("mmdebstrap", "buildah", "runc", "newuidmap")
# What pip's isolated build of the agent wheel installs (agent/pyproject.toml needs setuptools>=68).
BUILD_PINS = ("setuptools==84.2.1",)
Say = Callable[[str], None]


def require_tools(names: Sequence[str], *, for_arm64: bool = False, what: str = "agent") -> None:
    """Raise one AgentImageError naming every missing tool (and how to get it)."""
    missing = [n for n in names if shutil.which(n) is None]
    lacking = [f"{n} (apt package {TOOL_PACKAGES.get(n, n)})" for n in missing]
    if for_arm64 and not _arm64_runs():
        lacking.append("arm64 emulation (apt packages qemu-user-static binfmt-support; "
                       "`update-binfmts --enable qemu-aarch64`)")
    if lacking:
        raise AgentImageError(f"cannot build the {what} image, missing: " + "; ".join(lacking),
                              hint="scripts/setup installs them")
    if not Path(CA_BUNDLE).is_file():
        raise AgentImageError(f"no CA bundle at {CA_BUNDLE} for pip inside the build",
                              hint="install the apt package ca-certificates")


def _arm64_runs() -> bool:
    # binfmt_misc's entry for qemu-aarch64 must exist and be enabled; arch-test checks the rest later.
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def _apt_sources() -> tuple[Path, bytes]:
    """The host's apt sources: the rootfs comes from the same Debian mirror as the host's packages."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in candidates:
        with contextlib.suppress(OSError):
            text = path.read_bytes()
            if b"debian" in text:
                return path, text
    raise AgentImageError("no Debian apt source found in /etc/apt (the rootfs is made from Debian packages)")


def context_files(root: Path = REPO_ROOT, recipe: Recipe = AGENT) -> dict[str, bytes]:
    """The build context: the Dockerfile, the pyprojects, constraints and package files it copies."""
    paths = [root / rel for rel in recipe.required]
    for prefix in recipe.packages:
        paths += [p for p in (root / prefix).rglob("*") if p.is_file()]
    files = {}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if is_context_file(rel, recipe) and path.is_file():
            files[rel] = path.read_bytes()
    return files


def build_plan(platforms: Sequence[Platform] | None = None, *, release: str = "bookworm",
               root: Path = REPO_ROOT, recipe: Recipe = AGENT) -> ImagePlan:
    _, sources = _apt_sources()
    return plan(context_files(root, recipe), release=release, apt_sources=sources, platforms=platforms,
                recipe=recipe)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    path = cache_dir() / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None, what: str) -> str:
    """Run one step, its output appended to ``log``; a failure names the step and the log's tail."""
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(argv)}\n")
        handle.flush()
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=handle, env=env, text=True, check=False)
        except OSError as exc:
            raise AgentImageError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
        handle.write(proc.stdout)
    if proc.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise AgentImageError(f"{what} failed (exit {proc.returncode}): {tail[-300:]}", hint=f"log: {log}")
    return proc.stdout


def _log(name: str) -> Path:
    path = cache_dir() / "logs" / f"build-{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


# --- the Debian rootfs --------------------------------------------------------------------------

def rootfs_tar(rootfs: RootfsPlan) -> Path:
    return cache_dir() / rootfs.dir_name / "rootfs.tar"


def build_rootfs(rootfs: RootfsPlan, *, say: Say = print) -> Path:
    """The rootfs tar of one platform, made by mmdebstrap unless cached."""
    out = cache_dir() / rootfs.dir_name
    with _lock(rootfs.dir_name):
        if (out / _STAMP).is_file():
            say(f"==> rootfs {rootfs.release}/{rootfs.platform.arch}: cached in {out}")
            return out / "rootfs.tar"
        sources_file, _ = _apt_sources()
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log = _log(f"agent-rootfs-{rootfs.platform.arch}")
        say(f"==> making the {rootfs.release}/{rootfs.platform.arch} rootfs with mmdebstrap (log: {log})")
        start = time.monotonic()
        _run(rootfs.mmdebstrap_argv(str(tmp / "rootfs.tar"), str(sources_file)), log,
             env={**os.environ, **rootfs.mmdebstrap_env()}, what=f"mmdebstrap {rootfs.platform.arch}")
        (tmp / "packages.json").write_text(json.dumps(_dpkg_versions(tmp / "rootfs.tar"), indent=1,
                                                      sort_keys=True) + "\n")
        (tmp / _STAMP).write_text(f"{rootfs.key}\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        say(f"==> rootfs {rootfs.platform.arch} made in {time.monotonic() - start:.0f}s")
        return out / "rootfs.tar"


def _dpkg_versions(tar: Path) -> dict[str, str]:
    """Package -> version installed in the rootfs (what the image's base is made of)."""
    with tarfile.open(tar) as archive:
        member = next((m for m in archive if m.name.lstrip("./") == "var/lib/dpkg/status"), None)
        handle = archive.extractfile(member) if member else None
        text = handle.read().decode(errors="replace") if handle else ""
    versions, name = {}, ""
    for line in text.splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and name:
            versions[name] = line.split(": ", 1)[1]
    return versions


# --- the image ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuiltImage:
    """A built OCI layout and what its build recorded."""

    plan: ImagePlan
    path: Path  # the cache folder; the OCI layout is ``path / "oci"``
    record: dict[str, Any]

    @property
    def layout(self) -> Path:
        return self.path / "oci"

    @property
    def index_digest(self) -> str:
        return str(self.record["index_digest"])

    def reference(self, platform: Platform | None = None) -> str:
        """A transport reference for buildah/skopeo: the index, or one platform's image."""
        return f"oci:{self.layout}:{self.plan.tag(platform)}"


def inspect_built(image_plan: ImagePlan) -> BuiltImage | None:
    out = cache_dir() / image_plan.dir_name
    stamp = out / _STAMP
    if not stamp.is_file() or stamp.read_text().strip() != image_plan.key:
        return None
    try:
        record = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return BuiltImage(image_plan, out, record)


class _Buildah:
    """buildah with its own storage under a scratch folder, so a build never meets other images."""

    def __init__(self, work: Path, log: Path) -> None:
        self.prefix = ["buildah", "--root", str(work / "storage"), "--runroot", str(work / "run"),
                       "--storage-driver", "overlay"]
        self.log = log
        # crun (buildah's default) fails on hosts with hybrid cgroups; runc works on both.
        self.env = dict(os.environ, BUILDAH_RUNTIME=shutil.which("runc") or "runc", TZ="UTC")

    def __call__(self, args: Sequence[str], what: str) -> str:
        return _run([*self.prefix, *args], self.log, env=self.env, what=what)

    def clean(self) -> None:
        with contextlib.suppress(AgentImageError):
            self(["rm", "--all"], "buildah rm")
        with contextlib.suppress(AgentImageError):
            self(["rmi", "--all", "--force"], "buildah rmi")


def build(platforms: Sequence[Platform] | None = None, *, say: Say = print, root: Path = REPO_ROOT,
          recipe: Recipe = AGENT) -> BuiltImage:
    """Build (or find cached) the recipe's image index for ``platforms`` (default: the recipe's)."""
    files = context_files(root, recipe)
    _, sources = _apt_sources()
    image_plan = plan(files, apt_sources=sources, platforms=platforms, recipe=recipe)
    what = f"{recipe.name} image {image_plan.version}"
    if built := inspect_built(image_plan):
        say(f"==> {what} cached in {built.path} ({built.index_digest})")
        return built
    require_tools(BUILD_TOOLS, for_arm64=any(p.arch == "arm64" for p in image_plan.platforms), what=recipe.name)
    with _lock(image_plan.dir_name):
        if built := inspect_built(image_plan):
            return built
        started = time.monotonic()
        rootfs_seconds = {}
        for rootfs in image_plan.rootfs:
            t0 = time.monotonic()
            build_rootfs(rootfs, say=say)
            rootfs_seconds[rootfs.platform.arch] = round(time.monotonic() - t0, 1)
        out = cache_dir() / image_plan.dir_name
        work = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-image-work-", dir=cache_dir()))
        log = _log(image_plan.dir_name)
        buildah = _Buildah(work, log)
        try:
            record = _build_images(image_plan, files, work, buildah, say=say)
        finally:
            buildah.clean()
            shutil.rmtree(work, ignore_errors=True)
        record["seconds"] = round(time.monotonic() - started, 1)
        record["rootfs_seconds"] = rootfs_seconds
        tmp = out.with_name(out.name + ".tmp")
        (tmp / "build.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        (tmp / _STAMP).write_text(f"{image_plan.key}\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        say(f"==> {what} built in {record['seconds']:.0f}s: {out} "
            f"({record['index_digest']})")
        return BuiltImage(image_plan, out, record)


def _build_images(image_plan: ImagePlan, files: dict[str, bytes], work: Path, buildah: _Buildah, *,
                  say: Say) -> dict[str, Any]:
    context = work / "context"
    for rel, data in files.items():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        (context / rel).write_bytes(data)
    tmp = cache_dir() / (image_plan.dir_name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    layout = tmp / "oci"
    tmp.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    for platform in image_plan.platforms:
        t0 = time.monotonic()
        say(f"==> building {platform} (log: {buildah.log})"
            + ("; pip runs under qemu, this takes minutes" if platform.arch == "arm64" else ""))
        container = buildah(["from", "--pull=never", "scratch"], f"buildah from scratch ({platform})").strip()
        for step in image_plan.base_steps(platform, container, str(rootfs_tar(image_plan.rootfs_for(platform)))):
            buildah(step, f"importing the {platform.arch} rootfs")
        buildah(image_plan.bud_argv(platform, str(context), CA_BUNDLE), f"building {platform}")
        buildah(image_plan.push_argv(platform, str(layout)), f"writing {platform} to the OCI layout")
        images.append({"platform": str(platform), "seconds": round(time.monotonic() - t0, 1)})
    index = _write_index(image_plan, layout)
    for entry in images:
        entry.update(_sizes(layout, index[entry["platform"]]))
    rootfs_packages = {r.platform.arch: json.loads((cache_dir() / r.dir_name / "packages.json").read_text())
                       for r in image_plan.rootfs}
    return {"key": image_plan.key, "version": image_plan.version, "release": image_plan.release,
            "index_digest": index["index"], "images": images, "source_date_epoch": image_plan.epoch,
            "rootfs_packages": rootfs_packages,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def _write_index(image_plan: ImagePlan, layout: Path) -> dict[str, str]:
    """Add the multi-platform index to the layout; ref ``<version>`` names it, ``<version>-<arch>``
    each image. Returns the digests: ``index`` and one per platform."""
    top = json.loads((layout / "index.json").read_text())
    by_ref = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m for m in top["manifests"]}
    manifests = []
    for platform in image_plan.platforms:
        descriptor = by_ref.get(image_plan.tag(platform))
        if descriptor is None:
            raise AgentImageError(f"the OCI layout lacks the {platform} image after buildah push")
        manifests.append((platform, descriptor))
    data = image_index(manifests)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, digest).write_bytes(data)
    entries = [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": len(data),
                "annotations": {"org.opencontainers.image.ref.name": image_plan.version}}]
    for platform, descriptor in manifests:
        entries.append({"mediaType": descriptor["mediaType"], "digest": descriptor["digest"],
                        "size": descriptor["size"], "platform": {"architecture": platform.arch, "os": platform.os},
                        "annotations": {"org.opencontainers.image.ref.name": image_plan.tag(platform)}})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}, sort_keys=True))
    return {"index": digest, **{str(p): str(d["digest"]) for p, d in manifests}}


def _sizes(layout: Path, manifest_digest: str) -> dict[str, Any]:
    """Compressed size (what a registry stores and a node pulls: manifest, config, layers) and
    uncompressed size (the layers unpacked) of one image."""
    manifest = json.loads(_blob(layout, manifest_digest).read_text())
    compressed = _blob(layout, manifest_digest).stat().st_size + int(manifest["config"]["size"])
    uncompressed = 0
    for layer in manifest["layers"]:
        compressed += int(layer["size"])
        if layer["mediaType"].endswith("+gzip"):
            with gzip.open(_blob(layout, layer["digest"])) as handle:
                while chunk := handle.read(1 << 20):
                    uncompressed += len(chunk)
        else:
            uncompressed += int(layer["size"])
    return {"manifest_digest": manifest_digest, "compressed_bytes": compressed, "uncompressed_bytes": uncompressed,
            "layers": len(manifest["layers"])}


# --- using the built image ------------------------------------------------------------------------

def push(built: BuiltImage, registry: str, *, repository: str | None = None, tls_verify: bool = False,
         say: Say = print) -> str:
    """Copy the whole index (every platform) to ``registry``; returns ``registry/repository@digest``
    (the repository defaults to the recipe's: edgekit-agent, edgekit)."""
    require_tools(("skopeo",))
    repository = repository or built.plan.recipe.repository
    if not registry or "/" in registry:
        raise AgentImageError(f"registry {registry!r} is not HOST:PORT")
    destination = f"{registry}/{repository}:{built.plan.version}"
    log = _log(f"{built.plan.recipe.name}-image-push")
    _run(["skopeo", "copy", "--all", "--preserve-digests", f"--dest-tls-verify={'true' if tls_verify else 'false'}",
          built.reference(), f"docker://{destination}"], log, what=f"pushing to {destination}")
    pushed = f"{registry}/{repository}@{built.index_digest}"
    say(f"==> pushed {destination} = {pushed}")
    return pushed


def run_in_image(built: BuiltImage, platform: Platform, argv: Sequence[str], *, timeout: float = 300) -> str:
    """Run a command in one platform's image with buildah (runc) and return its output.

    Only for images this machine can execute natively: onnxruntime segfaults under qemu-user.
    """
    require_tools(("buildah", "runc", "skopeo"))
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{built.plan.recipe.name}-image-run-", dir=cache_dir()) as tmp:
        log = Path(tmp) / "run.log"
        buildah = _Buildah(Path(tmp), log)
        # `buildah from oci:DIR:TAG` names the image after DIR, which fails for a folder under
        # ~/.cache (a dot starts a path component); skopeo copies it into the storage by a name.
        name = f"localhost/{built.plan.recipe.repository}-run:{platform.arch}"
        store = f"containers-storage:[overlay@{tmp}/storage+{tmp}/run]{name}"
        try:
            _run(["skopeo", "copy", "--quiet", built.reference(platform), store], log, what="copying the image")
            container = buildah(["from", "--pull=never", name], "buildah from").strip()
            argv_all = [*buildah.prefix, "run", "--network=host", container, "--", *argv]
            try:
                proc = subprocess.run(argv_all, capture_output=True, text=True, env=buildah.env, timeout=timeout,
                                      check=False)
            except subprocess.TimeoutExpired as exc:
                raise AgentImageError(f"{' '.join(argv)} did not finish in {timeout:.0f}s in the image") from exc
            if proc.returncode != 0:
                raise AgentImageError(f"{' '.join(argv)} exited {proc.returncode} in the image: "
                                      f"{(proc.stderr or proc.stdout).strip()[-300:]}")
            return proc.stdout
        finally:
            buildah.clean()


# --- scripts/build-agent-image ----------------------------------------------------------------------

def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_roots(recipe: Recipe, root: Path = REPO_ROOT) -> list[str]:
    """The dependencies the recipe's pyprojects declare, without the packages the image builds itself."""
    import tomllib

    from packaging.requirements import Requirement

    projects = [tomllib.loads((root / p).read_text())["project"] for p in recipe.pyprojects]
    built = {_norm(p["name"]) for p in projects}
    return sorted({Requirement(d).name for p in projects for d in p.get("dependencies", [])
                   if _norm(Requirement(d).name) not in built})


def write_constraints(path: Path, roots: Sequence[str] = ("onnxruntime", "numpy", "paho-mqtt", "cryptography"),
                      build_pins: Sequence[str] = BUILD_PINS, *, what: str = "agent") -> list[str]:
    """Pin the image's dependencies (and their dependencies) at the versions installed here, and
    what builds the wheels at ``build_pins`` (the development venv may hold an older one)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if _norm(name) in pins:
            continue
        dist = md.distribution(name)
        pins[_norm(name)] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            # what this Linux image installs: no extras, no other platform's dependencies
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())] + list(build_pins)
    flag = "" if what == "agent" else f" --image {what}"
    path.write_text(f"# Versions the {what} image installs (pip constraints), written by\n"
                    f"# `scripts/build-agent-image{flag} --write-constraints` from a development environment.\n"
                    "# setuptools builds the wheels. Change a pin, and the image's cache key changes.\n"
                    + "\n".join(sorted(lines)) + "\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-agent-image", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", choices=[r.name for r in RECIPES], default=AGENT.name,
                        help="which image: the agent (Dockerfile.arm64) or the controller (Dockerfile.controller)")
    parser.add_argument("--check", action="store_true",
                        help="only say whether the image of the current sources is built (exit 1 if not)")
    parser.add_argument("--platform", action="append", default=None, metavar="OS/ARCH",
                        help="linux/amd64 or linux/arm64 (repeatable; default: both for the agent, "
                             "linux/amd64 for the controller)")
    parser.add_argument("--push", metavar="HOST:PORT", help="then copy the index to this plain-http registry")
    parser.add_argument("--write-constraints", action="store_true",
                        help="rewrite the image's constraints file from the installed packages and stop")
    args = parser.parse_args(argv)
    try:
        recipe = recipe_named(args.image)
        if args.write_constraints:
            for line in write_constraints(REPO_ROOT / recipe.constraints, dependency_roots(recipe), what=recipe.name):
                print(line)
            return 0
        platforms = [parse_platform(p) for p in args.platform] if args.platform else None
        if args.check:
            image_plan = build_plan(platforms, recipe=recipe)
            built = inspect_built(image_plan)
            where = cache_dir() / image_plan.dir_name
            print(f"{recipe.name}-image {image_plan.version} {'built' if built else 'missing'} {where}"
                  + (f" {built.index_digest}" if built else ""))
            return 0 if built else 1
        built = build(platforms, say=lambda m: print(m, flush=True), recipe=recipe)
        if args.push:
            push(built, args.push, say=lambda m: print(m, flush=True))
    except EdgekitError as exc:
        print(f"build-agent-image: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
