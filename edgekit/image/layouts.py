"""Writing OCI image layout folders atomically.

A ``LayoutWriter`` builds the folder under a temporary name next to the destination and
renames it into place on ``commit``; on any error (or an interrupt) the temporary folder is
removed, so a failed ``package`` or ``pull`` never leaves a half-written layout behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from edgekit_agent.oci.layout import INDEX_FILE, LAYOUT_FILE, LAYOUT_VERSION
from edgekit_agent.oci.mediatypes import OCI_INDEX, canonical_json, check_digest, sha256_digest

from edgekit.errors import OutputError


def check_output_dir(dest: Path, *, force: bool) -> None:
    """Refuse to overwrite a non-empty folder (or a file) unless ``force``."""
    if dest.exists():
        if not dest.is_dir():
            raise OutputError(f"{dest} exists and is not a folder")
        if any(dest.iterdir()) and not force:
            raise OutputError(f"{dest} already exists and is not empty", hint="pass --force to replace it")


class LayoutWriter:
    def __init__(self, dest: str | os.PathLike[str], *, force: bool = False) -> None:
        self.dest = Path(dest)
        check_output_dir(self.dest, force=force)
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.tmp-", dir=self.dest.parent))
        except OSError as exc:
            raise OutputError(f"cannot write to {self.dest.parent}: {exc.strerror}") from exc
        umask = os.umask(0)
        os.umask(umask)
        self.root.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        (self.root / "blobs" / "sha256").mkdir(parents=True)
        (self.root / LAYOUT_FILE).write_bytes(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        self._committed = False

    def __enter__(self) -> LayoutWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._committed:
            self.abort()

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = check_digest(digest).partition(":")
        return self.root / "blobs" / algo / hexpart

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def add_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            path.write_bytes(data)
        return digest

    def add_file(self, src: Path, digest: str) -> None:
        """Move a finished, already verified blob file into the layout."""
        dest = self.blob_path(digest)
        if dest.exists():
            src.unlink()
        else:
            os.replace(src, dest)

    def temp_file(self, name: str) -> Path:
        return self.root / f".{name}.partial"

    def commit(self, manifests: list[dict[str, Any]]) -> Path:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.root / INDEX_FILE).write_bytes(canonical_json(index))
        for leftover in self.root.glob(".*.partial"):
            leftover.unlink()
        try:
            if self.dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.old-", dir=self.dest.parent))
                os.rename(self.dest, old / "x")
                os.rename(self.root, self.dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.root, self.dest)
        except OSError as exc:
            raise OutputError(f"cannot move the layout into {self.dest}: {exc.strerror}") from exc
        self._committed = True
        return self.dest

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
