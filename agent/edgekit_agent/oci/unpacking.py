"""Unpacking a model layer into a folder without trusting its tar headers.

Only regular files and folders under ``model/`` are accepted; absolute paths, ``..``, links,
devices and duplicate names are refused (``ImageLayoutError``). File modes are not taken from
the archive. The uncompressed stream is hashed on the way, so the caller can compare it with
the config's ``diff_id``.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from edgekit_agent.errors import ImageLayoutError

MODEL_PREFIX = "model"
_BLOCK = 1 << 20


class _HashingReader:
    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        while self.read(_BLOCK):
            pass


def _member_path(name: str) -> PurePosixPath | None:
    """The path below ``model/`` of an archive entry, or None for ``model/`` itself."""
    pure = PurePosixPath(name)
    parts = [p for p in pure.parts if p not in ("", ".")]
    if pure.is_absolute() or ".." in parts or not parts or parts[0] != MODEL_PREFIX:
        raise ImageLayoutError(f"model layer has an entry outside model/: {name!r}")
    rest = parts[1:]
    return PurePosixPath(*rest) if rest else None


def unpack_model_layer(layer: Path, dest: Path, *, max_bytes: int | None = None) -> str:
    """Extract the ``model/`` tree of a gzip tar layer into ``dest`` (must exist, empty).

    Returns the ``sha256:`` digest of the uncompressed tar (the layer's diff_id).
    """
    total = 0
    seen: set[str] = set()
    try:
        with open(layer, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            reader = _HashingReader(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    rel = _member_path(member.name)
                    if rel is None:
                        if not member.isdir():
                            raise ImageLayoutError("model layer: 'model' is not a folder")
                        continue
                    key = str(rel)
                    if key in seen:
                        raise ImageLayoutError(f"model layer has {member.name!r} twice")
                    seen.add(key)
                    target = dest.joinpath(*rel.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                    elif member.isfile():
                        total += member.size
                        if max_bytes is not None and total > max_bytes:
                            raise ImageLayoutError(f"model layer unpacks to more than {max_bytes} bytes")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        src = tar.extractfile(member)
                        assert src is not None
                        with open(target, "xb") as out:
                            while chunk := src.read(_BLOCK):
                                out.write(chunk)
                        target.chmod(0o644)
                    else:
                        raise ImageLayoutError(f"model layer entry {member.name!r} is not a regular file "
                                               "(links and devices are refused)")
            reader.drain()
            return "sha256:" + reader.hasher.hexdigest()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileExistsError):
            raise ImageLayoutError(f"model layer has a duplicate entry: {exc.filename}") from exc
        raise ImageLayoutError(f"model layer is not a valid gzip tar: {exc}") from exc
