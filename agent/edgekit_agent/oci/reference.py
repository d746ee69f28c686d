"""Image references: ``[registry/]repository[:tag][@sha256:digest]`` (the docker grammar).

The first path component is a registry when it contains ``.`` or ``:`` or is ``localhost``;
otherwise the image lives on Docker Hub (``docker.io``, ``library/`` for single names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from edgekit_agent.errors import ImageReferenceError
from edgekit_agent.oci.mediatypes import is_digest

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """``host[:port]`` to talk the distribution API to."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository``: what cosign puts in ``docker-reference``."""
        registry = "index.docker.io" if self.registry == DOCKER_HUB else self.registry
        return f"{registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """The digest when pinned, else the tag (``latest`` by default)."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)

    def with_tag(self, tag: str | None) -> Reference:
        return replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference; raise ``ImageReferenceError`` saying what is wrong."""
    original = text
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise ImageReferenceError(f"invalid image reference {original!r}: empty or contains spaces")
    if "://" in text:
        raise ImageReferenceError(f"invalid image reference {original!r}: drop the URL scheme "
                                  "(write host:port/repository:tag)")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not is_digest(digest):
            raise ImageReferenceError(f"invalid image reference {original!r}: digest must be "
                                      "sha256:<64 lowercase hex digits>")
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG.match(tag):
            raise ImageReferenceError(f"invalid image reference {original!r}: bad tag {tag!r}")
    parts = text.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                           or parts[0].startswith("[")):
        registry, path = parts[0], parts[1:]
        if not _HOST.match(registry):
            raise ImageReferenceError(f"invalid image reference {original!r}: bad registry {registry!r}")
    else:
        registry, path = DOCKER_HUB, parts
        if len(path) == 1:
            path = ["library", *path]
    for comp in path:
        if not _COMPONENT.match(comp):
            raise ImageReferenceError(f"invalid image reference {original!r}: repository component "
                                      f"{comp!r} must be lowercase letters, digits and . _ -")
    repository = "/".join(path)
    if len(repository) > 255:
        raise ImageReferenceError(f"invalid image reference {original!r}: repository name too long")
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)
