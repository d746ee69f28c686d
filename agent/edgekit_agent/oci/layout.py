"""Reading an OCI image layout folder (``oci-layout``, ``index.json``, ``blobs/sha256/…``).

Every blob read from the folder is checked against its digest, so a layout that was edited,
truncated or half-copied is refused (``ImageLayoutError`` for structure, ``DigestMismatchError``
for content).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit_agent import safejson
from edgekit_agent.errors import DigestMismatchError, ImageLayoutError, ImageNotFoundError
from edgekit_agent.oci.mediatypes import (
    ANN_REF_NAME,
    check_descriptor,
    check_digest,
    parse_json_object,
    verify_bytes,
)

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
_BLOCK = 1 << 20


class OciLayout:
    """An OCI image layout folder, opened for reading."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ImageLayoutError(f"{self.path} is not a folder")
        try:
            marker = safejson.loads((self.path / LAYOUT_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ImageLayoutError(f"{self.path} is not an OCI image layout (no {LAYOUT_FILE} file)") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ImageLayoutError(f"{self.path / LAYOUT_FILE} is unreadable: {exc}") from exc
        if not isinstance(marker, dict) or not isinstance(marker.get("imageLayoutVersion"), str):
            raise ImageLayoutError(f"{self.path / LAYOUT_FILE} has no imageLayoutVersion")
        try:
            raw = (self.path / INDEX_FILE).read_bytes()
        except OSError as exc:
            raise ImageLayoutError(f"{self.path} is not an OCI image layout: cannot read {INDEX_FILE}: "
                                   f"{exc.strerror}") from exc
        self.index = parse_json_object(raw, str(self.path / INDEX_FILE))
        manifests = self.index.get("manifests")
        if not isinstance(manifests, list):
            raise ImageLayoutError(f"{self.path / INDEX_FILE} has no manifests list")
        self.manifests: list[dict[str, Any]] = [
            check_descriptor(d, f"{INDEX_FILE} entry {i}") for i, d in enumerate(manifests)]

    def __repr__(self) -> str:
        return f"OciLayout({str(self.path)!r})"

    @staticmethod
    def ref_name(desc: dict[str, Any]) -> str | None:
        ann = desc.get("annotations")
        name = ann.get(ANN_REF_NAME) if isinstance(ann, dict) else None
        return name if isinstance(name, str) else None

    def images(self) -> list[dict[str, Any]]:
        """Index entries that are images (not cosign signature manifests)."""
        return [d for d in self.manifests if not (self.ref_name(d) or "").endswith((".sig", ".att"))]

    def find(self, tag: str | None = None) -> dict[str, Any]:
        """The descriptor named ``tag``, or the only image when no tag is given."""
        if tag:
            for desc in self.manifests:
                if self.ref_name(desc) == tag:
                    return desc
            names = ", ".join(sorted(n for d in self.images() if (n := self.ref_name(d)))) or "none"
            raise ImageNotFoundError(f"no image tagged {tag!r} in layout {self.path} (tags: {names})")
        images = self.images()
        if len(images) == 1:
            return images[0]
        if not images:
            raise ImageLayoutError(f"layout {self.path} holds no image")
        names = ", ".join(sorted(n for d in images if (n := self.ref_name(d))))
        raise ImageLayoutError(f"layout {self.path} holds {len(images)} images; name one of: {names}")

    def find_tag(self, tag: str) -> dict[str, Any] | None:
        for desc in self.manifests:
            if self.ref_name(desc) == tag:
                return desc
        return None

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = check_digest(digest).partition(":")
        path = self.path / "blobs" / algo / hexpart
        if not path.is_file():
            raise ImageLayoutError(f"layout {self.path} is missing blob {digest[:19]}…",
                                   hint="the folder is incomplete; package or pull it again")
        return path

    def read_blob(self, digest: str, *, max_size: int = 16 << 20) -> bytes:
        path = self.blob_path(digest)
        if path.stat().st_size > max_size:
            raise ImageLayoutError(f"blob {digest[:19]}… in {self.path} is larger than {max_size} bytes")
        return verify_bytes(path.read_bytes(), digest, f"blob {digest[:19]}… in layout {self.path}")

    def copy_blob(self, digest: str, dest: Path, *, on_bytes: Callable[[int], None] | None = None) -> None:
        """Copy a blob to ``dest``, checking its digest on the way."""
        src = self.blob_path(digest)
        hasher = hashlib.sha256()
        try:
            with open(src, "rb") as fin, open(dest, "wb") as fout:
                while chunk := fin.read(_BLOCK):
                    hasher.update(chunk)
                    fout.write(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            if "sha256:" + hasher.hexdigest() != digest:
                raise DigestMismatchError(f"blob {digest[:19]}… in layout {self.path} does not match its digest",
                                          hint="the layout folder was modified or corrupted")
        except BaseException:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise

    def verify_blob_file(self, digest: str, *, on_bytes: Callable[[int], None] | None = None) -> Path:
        """Hash a (large) blob in place; return its path when it matches."""
        path = self.blob_path(digest)
        hasher = hashlib.sha256()
        with open(path, "rb") as fin:
            while chunk := fin.read(_BLOCK):
                hasher.update(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        if "sha256:" + hasher.hexdigest() != digest:
            raise DigestMismatchError(f"blob {digest[:19]}… in layout {self.path} does not match its digest",
                                      hint="the layout folder was modified or corrupted")
        return path


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link a blob when on the same file system (blobs are immutable), else copy it."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
