"""HTTP plumbing under the registry client: connections, responses, re-sendable bodies.

Standard library only (the device runs it). Connections write 1 MiB at a time: ``http.client``'s
default 8 KiB block size halves upload throughput.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from edgekit_agent import safejson
from edgekit_agent.errors import ImageError, ImageLayoutError

__all__ = ["BLOCK", "MAX_ANSWER", "RETRY_STATUS", "TRANSIENT", "AnswerTooLargeError", "BodySource", "FileSlice",
           "Response", "connect", "is_loopback", "read_capped", "ssl_context"]

BLOCK = 1 << 20
# The most we read of any answer held in memory (manifests, indexes, configs, signature payloads,
# token and error answers), whatever Content-Length says or when there is none.
MAX_ANSWER = 4 << 20
# Answers worth the same request again after a pause.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# Failures of the connection itself (resets, refusals, timeouts): also worth a retry.
TRANSIENT = (OSError, http.client.HTTPException)


class AnswerTooLargeError(ImageLayoutError):
    """An answer went past the bytes we allow for it (sent, or announced by Content-Length)."""


def read_capped(raw: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    """The body of ``raw``, refused as soon as it passes ``limit`` bytes: at most ``limit + 1``
    are read, with or without (or with a lying) Content-Length."""
    if raw.length is not None and raw.length > limit:
        raise AnswerTooLargeError(f"{what} is larger than {limit} bytes (Content-Length {raw.length})")
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        chunk = raw.read(min(BLOCK, limit + 1 - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    if got > limit:
        raise AnswerTooLargeError(f"{what} is larger than {limit} bytes")
    return b"".join(parts)


class BodySource(Protocol):
    """A request body that can be sent again after a retry."""

    length: int

    def open(self) -> IO[bytes]: ...


@dataclass
class Response:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    raw: http.client.HTTPResponse
    url: str
    # Called when the body is left unread: the connection then carries stray bytes and must go.
    abandon: Callable[[], None] | None = None

    def read(self, limit: int = MAX_ANSWER, what: str = "") -> bytes:
        """The whole body, at most ``limit`` bytes (``AnswerTooLargeError`` past that)."""
        try:
            return read_capped(self.raw, limit, what or f"the answer to {self.url}")
        except AnswerTooLargeError:
            if self.abandon is not None:
                self.abandon()
            raise
        finally:
            self.raw.close()

    def discard(self) -> bytes:
        """The body when it is small (for messages), else nothing: read no further, drop the connection."""
        try:
            return self.read()
        except AnswerTooLargeError:
            return b""

    def json(self) -> Any:
        try:
            data = self.read()
        except AnswerTooLargeError:
            return {}
        try:
            return safejson.loads(data) if data else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}

    def close(self) -> None:
        self.raw.close()

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class _ProgressReader:
    """A file wrapper that reports bytes as ``http.client`` reads them."""

    def __init__(self, fh: IO[bytes], limit: int, on_bytes: Callable[[int], None] | None) -> None:
        self._fh, self._left, self._on_bytes = fh, limit, on_bytes

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        if self._on_bytes and data:
            self._on_bytes(len(data))
        return data

    def close(self) -> None:
        self._fh.close()


@dataclass
class FileSlice:
    """``length`` bytes of ``path`` from ``offset``: an upload body that can be re-sent."""

    path: Path
    offset: int
    length: int
    on_bytes: Callable[[int], None] | None = None
    _sent: int = field(default=0, init=False)

    def open(self) -> IO[bytes]:
        fh = open(self.path, "rb")  # noqa: SIM115 - closed by the request
        fh.seek(self.offset)
        if self.on_bytes and self._sent:
            self.on_bytes(-self._sent)  # a retry sends the slice again
        self._sent = self.length

        return _ProgressReader(fh, self.length, self.on_bytes)  # type: ignore[return-value]


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") or "]:" in host else host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def ssl_context(insecure: bool, ca_file: str | None) -> ssl.SSLContext:
    """The system trust store, a custom CA file, or no verification at all (``insecure``)."""
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ImageError(f"cannot load CA file {ca_file}: {exc}") from exc


def connect(scheme: str, netloc: str, *, timeout: float,
            context: Callable[[], ssl.SSLContext]) -> http.client.HTTPConnection:
    """A connection (not yet opened); ``context`` is only called for HTTPS."""
    if scheme == "https":
        return http.client.HTTPSConnection(netloc, timeout=timeout, context=context(), blocksize=BLOCK)
    return http.client.HTTPConnection(netloc, timeout=timeout, blocksize=BLOCK)
