"""Where an image is read from: a registry repository or an OCI layout folder, behind one interface.

``open_source("127.0.0.1:5000/digits:1.0")`` reads from a registry; ``open_source("out/")`` or
``open_source("oci:out/:1.0")`` from a layout folder. Everything a source returns is checked
against the digest that names it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edgekit_agent.errors import ImageLayoutError, ImageNotFoundError
from edgekit_agent.oci.layout import OciLayout
from edgekit_agent.oci.mediatypes import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    parse_json_object,
    signature_tag,
)
from edgekit_agent.oci.reference import Reference, parse_reference
from edgekit_agent.oci.registry import Manifest, RegistryClient, RegistryOptions
from edgekit_agent.oci.transport import MAX_ANSWER


class ImageSource(Protocol):
    """Read access to one image (and its cosign signatures)."""

    description: str
    docker_reference: str | None  # registry/repository, for signature payloads

    def resolve(self) -> Manifest: ...

    def manifest(self, digest: str) -> Manifest: ...

    def blob(self, digest: str, *, max_size: int = ...) -> bytes: ...

    def fetch_blob(self, digest: str, dest: Path, *, size: int | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> None: ...

    def signatures(self, digest: str) -> Manifest | None: ...

    def close(self) -> None: ...


def _media_type(data: bytes, fallback: str) -> str:
    try:
        obj = parse_json_object(data, "manifest")
    except ImageLayoutError:
        return fallback
    mt = obj.get("mediaType")
    return mt if isinstance(mt, str) else fallback


class RegistrySource:
    def __init__(self, ref: Reference, options: RegistryOptions | None = None,
                 client: RegistryClient | None = None) -> None:
        self.ref = ref
        self.client = client or RegistryClient(ref.api_host, options)
        self.description = str(ref)
        self.docker_reference: str | None = ref.name

    def resolve(self) -> Manifest:
        return self.client.get_manifest(self.ref.repository, self.ref.identifier)

    def manifest(self, digest: str) -> Manifest:
        return self.client.get_manifest(self.ref.repository, digest)

    def blob(self, digest: str, *, max_size: int = MAX_ANSWER) -> bytes:
        return self.client.get_blob(self.ref.repository, digest, max_size=max_size)

    def fetch_blob(self, digest: str, dest: Path, *, size: int | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> None:
        self.client.download_blob(self.ref.repository, digest, dest, size=size, on_bytes=on_bytes)

    def signatures(self, digest: str) -> Manifest | None:
        try:
            return self.client.get_manifest(self.ref.repository, signature_tag(digest))
        except ImageNotFoundError:
            return None

    def close(self) -> None:
        self.client.close()


class LayoutSource:
    def __init__(self, path: str | os.PathLike[str], tag: str | None = None) -> None:
        self.layout = OciLayout(path)
        self.tag = tag
        self.description = f"{self.layout.path}" + (f":{tag}" if tag else "")
        self.docker_reference: str | None = None

    def resolve(self) -> Manifest:
        desc = self.layout.find(self.tag)
        return self.manifest(desc["digest"], desc.get("mediaType", ""))

    def manifest(self, digest: str, media_type: str = "") -> Manifest:
        data = self.layout.read_blob(digest, max_size=4 << 20)
        return Manifest(data=data, media_type=_media_type(data, media_type), digest=digest)

    def blob(self, digest: str, *, max_size: int = 16 << 20) -> bytes:
        return self.layout.read_blob(digest, max_size=max_size)

    def fetch_blob(self, digest: str, dest: Path, *, size: int | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> None:
        self.layout.copy_blob(digest, dest, on_bytes=on_bytes)

    def signatures(self, digest: str) -> Manifest | None:
        desc = self.layout.find_tag(signature_tag(digest))
        return self.manifest(desc["digest"]) if desc else None

    def close(self) -> None:
        pass


def is_layout_path(text: str) -> bool:
    return text.startswith("oci:") or Path(text).is_dir()


# Names of files people point at by mistake (``edgekit show model.onnx``): as Docker Hub
# references they would cost a round of retries against docker.io before failing.
_FILE_SUFFIXES = (".onnx", ".json", ".npz", ".tar", ".tgz", ".gz", ".zip", ".pem", ".key", ".pub")


def not_an_image(text: str) -> str | None:
    """Why ``text`` is a file path rather than a layout folder or image reference, or None."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        return f"{text} is a file, not an OCI image layout folder or an image reference"
    last = text.rsplit("/", 1)[-1]
    if "@" not in text and ":" not in last and last.lower().endswith(_FILE_SUFFIXES):
        return f"{text} looks like a file name, and there is no such OCI image layout folder"
    return None


def open_source(text: str, options: RegistryOptions | None = None) -> ImageSource:
    """An image source for a registry reference, a layout folder, or ``oci:FOLDER[:TAG]``.

    A path to a file (or a file name) is refused at once, before any network access."""
    if text.startswith("oci:"):
        path, tag = text[4:], None
        if not Path(path).is_dir() and ":" in path:
            path, tag = path.rsplit(":", 1)
        return LayoutSource(path, tag or None)
    if Path(text).is_dir():
        return LayoutSource(text)
    if (why := not_an_image(text)) is not None:
        raise ImageLayoutError(why, hint="give a folder that edgekit package wrote, or registry/repository:tag")
    if text.startswith(("/", "./", "../")):
        return LayoutSource(text)
    return RegistrySource(parse_reference(text), options)


def manifest_kind(manifest: Manifest) -> str:
    """``index`` or ``manifest``; anything else is refused."""
    obj = manifest.json()
    media_type = manifest.media_type or obj.get("mediaType", "")
    if media_type in INDEX_TYPES or (not media_type and "manifests" in obj):
        return "index"
    if media_type in MANIFEST_TYPES or (not media_type and "layers" in obj):
        return "manifest"
    raise ImageLayoutError(f"{manifest.digest} has unsupported media type {media_type!r}")


__all__ = ["ImageSource", "LayoutSource", "RegistrySource", "is_layout_path", "manifest_kind", "not_an_image",
           "open_source"]
