"""The plan of an image build (edgekit-agent, or the edgekit controller): what goes in, where it is
cached, which commands make it.

Nothing here runs a program or touches the network; ``agentbuilding`` carries the plan out with
mmdebstrap, buildah and skopeo. The plan is a pure function of its inputs, so the same sources give
the same cache key, the same commands and (with fixed timestamps) the same image index digest:

- the image's ``Recipe``: its public Dockerfile (``Dockerfile.arm64`` for the agent,
  ``Dockerfile.controller`` for the controller, built here with ``BASE_IMAGE``/``PLATFORM``
  arguments), the package sources it copies and the pinned dependency versions,
- the Debian release, the apt sources the rootfs comes from, and the platforms.

Both images start from the same Debian rootfs, so one cached rootfs per platform serves both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgekit.errors import EdgekitError

__all__ = [
    "AGENT",
    "AGENT_FILES_PREFIX",
    "CONTROLLER",
    "DOCKERFILE",
    "PLATFORMS",
    "RECIPES",
    "AgentImageError",
    "ImagePlan",
    "Platform",
    "Recipe",
    "RootfsPlan",
    "image_index",
    "is_context_file",
    "parse_platform",
    "plan",
    "recipe_named",
]

# Bumped when the adapters change the way an image is made from the same inputs.
RECIPE_VERSION = 1
DOCKERFILE = "Dockerfile.arm64"
CONSTRAINTS = "agent/image-constraints.txt"
AGENT_FILES_PREFIX = "agent/edgekit_agent/"
# 2026-01-01T00:00:00Z: every timestamp in the image (created, history, file mtimes). A fixed value
# rather than the commit time keeps the digest independent of how the sources were checked out.
SOURCE_DATE_EPOCH = 1767225600
ROOTFS_VARIANT = "minbase"  # `essential` lacks libstdc++, which onnxruntime needs
ROOTFS_INCLUDE = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_REPOSITORY = "localhost/edgekit-agent-base"

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


class AgentImageError(EdgekitError):
    """The agent image cannot be built or pushed here: a tool is missing, or a build step failed."""

    exit_code = 77


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    arch: str  # OCI and Debian agree on the names of the two we build (amd64, arm64)

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}"


PLATFORMS: tuple[Platform, ...] = (Platform("linux", "amd64"), Platform("linux", "arm64"))


@dataclass(frozen=True)
class Recipe:
    """One image this builder makes: its public Dockerfile and the repository files it copies."""

    name: str  # the word for it on the command line and in the cache folder's name
    repository: str  # the repository it is pushed to by default
    dockerfile: str
    constraints: str  # pip constraints: every dependency at an exact version
    pyproject: str  # the package whose version tags the image
    files: tuple[str, ...]  # single files the Dockerfile copies, besides itself and the constraints
    packages: tuple[str, ...]  # package folders the Dockerfile copies whole
    platforms: tuple[Platform, ...]  # what a build without --platform makes
    pyprojects: tuple[str, ...]  # whose dependencies the constraints pin

    @property
    def required(self) -> tuple[str, ...]:
        return (*self.files, self.constraints, self.dockerfile)


AGENT = Recipe("agent", "edgekit-agent", DOCKERFILE, CONSTRAINTS, "agent/pyproject.toml",
               files=("agent/pyproject.toml",), packages=(AGENT_FILES_PREFIX,), platforms=PLATFORMS,
               pyprojects=("agent/pyproject.toml",))
# The controller runs beside the control plane, usually on amd64 servers: that is what a build makes
# unless --platform asks for linux/arm64 too. It holds the central package and the agent package (the
# central one imports the OCI and telemetry code from it), so edgekit's README (the wheel's long
# description) is an input too.
CONTROLLER = Recipe("controller", "edgekit", "Dockerfile.controller", "image-constraints.txt", "pyproject.toml",
                    files=("pyproject.toml", "README.md", "agent/pyproject.toml"),
                    packages=("edgekit/", AGENT_FILES_PREFIX), platforms=(PLATFORMS[0],),
                    pyprojects=("pyproject.toml", "agent/pyproject.toml"))
RECIPES: tuple[Recipe, ...] = (AGENT, CONTROLLER)


def recipe_named(name: str) -> Recipe:
    for recipe in RECIPES:
        if recipe.name == name:
            return recipe
    raise AgentImageError(f"unknown image {name!r}: choose from {', '.join(r.name for r in RECIPES)}")


def parse_platform(text: str) -> Platform:
    """``linux/amd64`` or ``linux/arm64`` (the two the agent's dependencies have wheels for)."""
    wanted = text.strip().lower()
    for platform in PLATFORMS:
        if str(platform) == wanted:
            return platform
    raise AgentImageError(f"unsupported platform {text!r}: choose from {', '.join(map(str, PLATFORMS))}")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def is_context_file(path: str, recipe: Recipe = AGENT) -> bool:
    """Whether a repository path belongs in the build context (the Dockerfile's COPY sources)."""
    if path in recipe.required:
        return True
    return (any(path.startswith(prefix) for prefix in recipe.packages) and "__pycache__" not in path
            and not path.endswith(".pyc"))


@dataclass(frozen=True)
class RootfsPlan:
    """One Debian root filesystem made by mmdebstrap, cached as a tar."""

    release: str
    platform: Platform
    sources: bytes  # the apt sources (deb822 or one-line format) it is made from
    epoch: int = SOURCE_DATE_EPOCH  # mmdebstrap then dates files by it and drops its logs

    @property
    def key(self) -> str:
        return _digest(self.release.encode(), self.platform.arch.encode(), ROOTFS_VARIANT.encode(),
                       ",".join(ROOTFS_INCLUDE).encode(), self.sources, str(self.epoch).encode())

    @property
    def dir_name(self) -> str:
        return f"agent-rootfs-{self.release}-{self.platform.arch}-{self.key}"

    def mmdebstrap_env(self) -> dict[str, str]:
        return {"SOURCE_DATE_EPOCH": str(self.epoch)}

    def mmdebstrap_argv(self, tar: str, sources_file: str) -> list[str]:
        return ["mmdebstrap", f"--variant={ROOTFS_VARIANT}", f"--arch={self.platform.arch}",
                f"--include={','.join(ROOTFS_INCLUDE)}", self.release, tar, sources_file]


@dataclass(frozen=True)
class ImagePlan:
    """The whole build: a rootfs and an image per platform, assembled into one OCI index."""

    version: str  # the package's version, the tag of the index
    release: str
    platforms: tuple[Platform, ...]
    rootfs: tuple[RootfsPlan, ...]
    key: str
    epoch: int = SOURCE_DATE_EPOCH
    recipe: Recipe = AGENT

    @property
    def dir_name(self) -> str:
        return f"{self.recipe.name}-image-{self.key}"

    def tag(self, platform: Platform | None = None) -> str:
        """The ref names in the OCI layout: the index is ``<version>``, each image ``<version>-<arch>``."""
        return self.version if platform is None else f"{self.version}-{platform.arch}"

    def base_ref(self, platform: Platform) -> str:
        return f"{BASE_REPOSITORY}:{platform.arch}"

    def build_ref(self, platform: Platform) -> str:
        return f"localhost/{self.recipe.repository}:{platform.arch}"

    def rootfs_for(self, platform: Platform) -> RootfsPlan:
        return next(r for r in self.rootfs if r.platform == platform)

    # The buildah commands, without the storage options the adapter adds in front.
    def base_steps(self, platform: Platform, container: str, rootfs_tar: str) -> list[list[str]]:
        """Import the rootfs tar as a one-layer base image (after ``buildah from scratch``)."""
        return [
            ["add", container, rootfs_tar, "/"],
            ["config", "--arch", platform.arch, "--os", platform.os,
             "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", container],
            ["commit", "--timestamp", str(self.epoch), "--format", "oci", "--rm", container,
             self.base_ref(platform)],
        ]

    def bud_argv(self, platform: Platform, context: str, ca_bundle: str) -> list[str]:
        return ["bud", "--pull=never", "--network=host", "--layers=false", "--format", "oci",
                "--platform", str(platform),
                "--build-arg", f"PLATFORM={platform}",
                "--build-arg", f"BASE_IMAGE={self.base_ref(platform)}",
                "--build-arg", f"SOURCE_DATE_EPOCH={self.epoch}",
                "--timestamp", str(self.epoch),
                # pip inside the build verifies the package index with the host's CA bundle
                "-v", f"{ca_bundle}:/etc/ssl/certs/ca-certificates.crt:ro",
                "-f", f"{context}/{self.recipe.dockerfile}", "-t", self.build_ref(platform), context]

    def push_argv(self, platform: Platform, layout: str) -> list[str]:
        return ["push", "--format", "oci", self.build_ref(platform), f"oci:{layout}:{self.tag(platform)}"]


def plan(files: Mapping[str, bytes], *, release: str = "bookworm", apt_sources: bytes,
         platforms: Sequence[Platform] | None = None, recipe: Recipe = AGENT) -> ImagePlan:
    """The build for these context files (repository path -> content; see ``is_context_file``).

    The recipe's Dockerfile is among the files, so two recipes never share a key."""
    platforms = recipe.platforms if platforms is None else platforms
    missing = [p for p in recipe.required if p not in files]
    if missing:
        raise AgentImageError(f"the build context lacks {', '.join(missing)}")
    chosen = tuple(sorted(set(platforms)))
    if not chosen:
        raise AgentImageError("no platform to build")
    rootfs = tuple(RootfsPlan(release, p, apt_sources) for p in chosen)
    listing = b"".join(f"{path}\0{hashlib.sha256(files[path]).hexdigest()}\n".encode() for path in sorted(files))
    key = _digest(str(RECIPE_VERSION).encode(), str(SOURCE_DATE_EPOCH).encode(), release.encode(),
                  ",".join(map(str, chosen)).encode(), ",".join(r.key for r in rootfs).encode(), listing)
    return ImagePlan(version=package_version(files[recipe.pyproject], recipe.pyproject), release=release,
                     platforms=chosen, rootfs=rootfs, key=key, recipe=recipe)


def package_version(pyproject: bytes, where: str = "agent/pyproject.toml") -> str:
    for line in pyproject.decode().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "version":
            return value.strip().strip('"')
    raise AgentImageError(f"{where} has no version")



def image_index(manifests: Sequence[tuple[Platform, Mapping[str, object]]]) -> bytes:
    """The OCI image index naming each platform's manifest descriptor, as canonical bytes.

    The bytes are the digest's input, so keys are sorted and nothing varies between builds.
    """
    entries = []
    for platform, descriptor in sorted(manifests, key=lambda item: item[0]):
        entries.append({"mediaType": MANIFEST_MEDIA_TYPE, "digest": descriptor["digest"],
                        "size": descriptor["size"],
                        "platform": {"architecture": platform.arch, "os": platform.os}})
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries}
    return json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
