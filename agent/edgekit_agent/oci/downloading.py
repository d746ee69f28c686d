"""Reading blobs from a registry: small ones in memory, layers streamed to disk, each checked
against its digest. A dropped download resumes with ``Range`` from the last byte received."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit_agent.errors import DigestMismatchError, RegistryUnavailableError
from edgekit_agent.oci.mediatypes import check_digest, verify_bytes
from edgekit_agent.oci.transport import BLOCK, MAX_ANSWER, TRANSIENT

if TYPE_CHECKING:
    from edgekit_agent.oci.registry import RegistryClient

__all__ = ["download_blob", "get_blob"]


def get_blob(client: RegistryClient, repository: str, digest: str, *, max_size: int = MAX_ANSWER) -> bytes:
    """A small blob (config, signature payload) in memory, checked against its digest; at most
    ``max_size + 1`` bytes are read whatever the answer's Content-Length says."""
    check_digest(digest)
    what = f"blob {digest[:19]}… of {repository}"
    resp = client.request("GET", f"/v2/{repository}/blobs/{digest}", repository=repository, what=what, stream=True)
    return verify_bytes(resp.read(max_size, what), digest, what)


def download_blob(client: RegistryClient, repository: str, digest: str, dest: Path, *, size: int | None = None,
                  on_bytes: Callable[[int], None] | None = None) -> None:
    """Stream a blob into ``dest``, resuming with ``Range`` after a dropped connection.

    The finished file must hash to ``digest`` (and have ``size`` bytes when given), else
    ``DigestMismatchError`` and ``dest`` is removed. With ``size`` (the descriptor's), no more
    than ``size + 1`` bytes are read, whatever the answer's Content-Length says.
    """
    check_digest(digest)
    what = f"blob {digest[:19]}… of {repository}"
    hasher = hashlib.sha256()
    written = 0
    failures = 0
    try:
        with open(dest, "wb") as out:
            while True:
                headers = {"Range": f"bytes={written}-"} if written else {}
                resp = client.request("GET", f"/v2/{repository}/blobs/{digest}", repository=repository,
                                      headers=headers, expect=(200, 206), what=what, stream=True)
                if written and resp.status == 200:  # the server ignored Range: start over
                    out.seek(0)
                    out.truncate()
                    hasher = hashlib.sha256()
                    if on_bytes:
                        on_bytes(-written)
                    written = 0
                announced = resp.raw.length
                if size is not None and announced is not None and announced > size - written:
                    resp.close()
                    client.drop_connection()
                    raise DigestMismatchError(f"{what} is announced with {written + announced} bytes, not {size}",
                                              hint="the content was tampered with")
                try:
                    while True:
                        chunk = resp.raw.read(BLOCK if size is None else min(BLOCK, size + 1 - written))
                        if not chunk:
                            break
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
                        if size is not None and written > size:
                            client.drop_connection()  # the rest of the body stays unread
                            raise DigestMismatchError(f"{what} is longer than its {size} bytes",
                                                      hint="the content was tampered with")
                    truncated = bool(resp.raw.length)  # bytes announced but never received
                    resp.close()
                    if truncated or (size is not None and written < size):
                        raise ConnectionResetError("connection closed mid-blob")
                    break
                except TRANSIENT as exc:
                    client.drop_connection()
                    failures += 1
                    if failures > client.options.retries:
                        raise RegistryUnavailableError(
                            f"download of {what} keeps failing at byte {written}: {exc} "
                            f"(after {failures} tries)") from exc
                    client.pause(failures - 1)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatchError(f"{what} hashes to {actual[:19]}…",
                                      hint="the blob in the registry was tampered with or corrupted")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise
