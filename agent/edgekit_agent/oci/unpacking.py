"""Unpacking a model layer into a folder without trusting its tar headers.

Only the model files are accepted: ``model/`` itself and the files a ``LayerBudget`` names
(``edgekit.json``, the model and the probe). Anything else — other names, sub-folders, links,
devices, a ``model/.edgekit-image.json`` — is refused (``UnexpectedLayerEntryError``), and so are
absolute paths, ``..`` and duplicates (``ImageLayoutError``). File modes are not taken from the
archive.

The unpacking is bounded before it writes: an entry larger than its budget is refused from its
header, the uncompressed stream may not exceed the sum of the budgets plus a small slack
(``LayerTooLargeError``, which also bounds pax headers), the number of entries is capped
(``TooManyLayerEntriesError``), and after the end-of-archive block only zero padding up to one
tar record may follow (``TrailingLayerDataError``) — nothing is drained. The uncompressed stream
is hashed on the way, so the caller can compare it with the config's ``diff_id``.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from edgekit_agent.errors import (
    ImageLayoutError,
    LayerTooLargeError,
    TooManyLayerEntriesError,
    TrailingLayerDataError,
    UnexpectedLayerEntryError,
)
from edgekit_agent.modelmeta import METADATA_FILE, MODEL_FILE, PROBE_FILE, ModelMetadata

__all__ = ["DEFAULT_MAX_BYTES", "MAX_ENTRIES", "LayerBudget", "layer_budget", "unpack_model_layer"]

MODEL_PREFIX = "model"
DEFAULT_MAX_BYTES = 4 << 30  # a model file onnx can load (< 2 GiB protobuf) plus its probe, with room
MAX_ENTRIES = 16  # model/ and three files; a few more for tools that add folder entries twice
METADATA_MAX_BYTES = 1 << 20  # edgekit.json is a few KiB
_SLACK = 64 << 10  # tar headers, pax records, block padding and tarfile's read-ahead
_TAIL = tarfile.RECORDSIZE + 2 * tarfile.BLOCKSIZE  # end-of-archive blocks padded to a record
_BLOCK = 1 << 20


@dataclass(frozen=True)
class LayerBudget:
    """The files a model layer may hold (name -> most bytes) and the cap on entries."""

    files: Mapping[str, int] = field(default_factory=dict)
    max_entries: int = MAX_ENTRIES

    @property
    def stream_bytes(self) -> int:
        return sum(self.files.values()) + _SLACK


def layer_budget(meta: ModelMetadata | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> LayerBudget:
    """What a layer may unpack to: the sizes ``meta`` records (the image config's signed copy of
    ``edgekit.json``), or ``max_bytes`` for each file when they are not known."""
    if meta is None:
        return LayerBudget({METADATA_FILE: METADATA_MAX_BYTES, MODEL_FILE: max_bytes, PROBE_FILE: max_bytes})
    probe = meta.probe.size if meta.probe.size is not None else max_bytes
    return LayerBudget({METADATA_FILE: METADATA_MAX_BYTES, meta.model.path: meta.model.size, meta.probe.path: probe})


class _BoundedReader:
    """Hashes what it reads; raises once more than ``limit`` bytes were asked of it."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self._raw = raw
        self.limit = limit
        self.hasher = hashlib.sha256()
        self.pos = 0
        self.end_of_data = 0  # stream offset just past the last non-zero byte
        self.too_much: type[ImageLayoutError] = LayerTooLargeError
        self.what = ""

    def read(self, n: int = -1) -> bytes:
        room = max(self.limit - self.pos, 0)
        data = self._raw.read(room + 1 if n < 0 or n > room else n)
        if len(data) > room:
            raise self.too_much(self.what or f"model layer unpacks to more than {self.limit} bytes")
        self.hasher.update(data)
        kept = len(data.rstrip(b"\0"))
        if kept:
            self.end_of_data = self.pos + kept
        self.pos += len(data)
        return data


def _member_path(name: str) -> PurePosixPath | None:
    """The path below ``model/`` of an archive entry, or None for ``model/`` itself."""
    pure = PurePosixPath(name)
    parts = [p for p in pure.parts if p not in ("", ".")]
    if pure.is_absolute() or ".." in parts or not parts or parts[0] != MODEL_PREFIX:
        raise ImageLayoutError(f"model layer has an entry outside model/: {name!r}")
    rest = parts[1:]
    return PurePosixPath(*rest) if rest else None


def _check_member(member: tarfile.TarInfo, budget: LayerBudget) -> str | None:
    """The file name an entry writes, or None for the ``model/`` folder entry; refuses the rest."""
    rel = _member_path(member.name)
    if rel is None:
        if not member.isdir():
            raise ImageLayoutError("model layer: 'model' is not a folder")
        return None
    key = str(rel)
    if key not in budget.files:
        raise UnexpectedLayerEntryError(f"model layer has {member.name!r}, which is not one of the model files "
                                        f"({', '.join(sorted(budget.files))})")
    if not member.isfile():
        raise UnexpectedLayerEntryError(f"model layer entry {member.name!r} is not a regular file "
                                        "(links and devices are refused)")
    if member.size > budget.files[key]:
        raise LayerTooLargeError(f"model layer entry {member.name!r} is {member.size} bytes, more than the "
                                 f"{budget.files[key]} recorded for it")
    return key


def unpack_model_layer(layer: Path, dest: Path, *, budget: LayerBudget | None = None) -> str:
    """Extract the model files of a gzip tar layer into ``dest`` (must exist, empty).

    Returns the ``sha256:`` digest of the uncompressed tar (the layer's diff_id).
    """
    budget = budget or layer_budget(None)
    seen: set[str] = set()
    entries = 0
    try:
        with open(layer, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            reader = _BoundedReader(gz, budget.stream_bytes)  # type: ignore[arg-type]
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    entries += 1
                    if entries > budget.max_entries:
                        raise TooManyLayerEntriesError(f"model layer has more than {budget.max_entries} entries")
                    key = _check_member(member, budget)
                    if key is None:
                        continue
                    if key in seen:
                        raise ImageLayoutError(f"model layer has {member.name!r} twice")
                    seen.add(key)
                    target = dest / key
                    src = tar.extractfile(member)
                    assert src is not None
                    with open(target, "xb") as out:
                        while chunk := src.read(_BLOCK):
                            out.write(chunk)
                    target.chmod(0o644)
                end = tar.offset  # where the end-of-archive blocks start
            # Only the end-of-archive blocks and zero padding to a record may follow; read that much, no more.
            reader.limit = min(reader.limit, end + _TAIL)
            reader.too_much = TrailingLayerDataError
            reader.what = f"model layer has more than {_TAIL} bytes after the end of its tar archive"
            while reader.read(_BLOCK):
                pass
            if reader.end_of_data > end:
                raise TrailingLayerDataError(f"model layer has {reader.end_of_data - end} bytes of data after the "
                                             "end of its tar archive")
            return "sha256:" + reader.hasher.hexdigest()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileExistsError):
            raise ImageLayoutError(f"model layer has a duplicate entry: {exc.filename}") from exc
        raise ImageLayoutError(f"model layer is not a valid gzip tar: {exc}") from exc
