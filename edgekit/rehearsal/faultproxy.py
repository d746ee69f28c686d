"""A small HTTP/1.1 proxy on 127.0.0.1 that counts requests and injects faults (tests only).

Put it in front of a real registry to see what a client really sends and to make the network
misbehave on purpose:

    proxy = FaultProxy("127.0.0.1:5000").start()
    proxy.add_fault(Fault(method="GET", path=r"/blobs/", status=500, times=2))   # 500, 500, then pass
    proxy.add_fault(Fault(path=r"/manifests/", status=503, headers={"Retry-After": "1"}))
    proxy.add_fault(Fault(method="GET", path=r"/blobs/", drop_response_after=1 << 20))  # cut mid-blob
    proxy.add_fault(Fault(method="PATCH", path=r"/uploads/", drop_request_after=8 << 20))
    proxy.requests      # [(method, path, status), ...]

``drop_request_after`` forwards that many body bytes upstream and then closes both sides, as
a connection that dies mid-upload does; ``drop_response_after`` relays that many response body
bytes and then closes. Each fault fires ``times`` times, then the proxy passes traffic through.

A lying or hostile registry, for the client's size bounds:

    proxy.add_fault(Fault(path=r"/manifests/", omit_length=True, extra_bytes=64 << 20))  # chunked, endless
    proxy.add_fault(Fault(path=r"/blobs/", content_length=10, extra_bytes=1 << 20))     # lies, then streams on

``omit_length`` sends the body chunked with no Content-Length; ``content_length`` announces that
value instead of the real one; ``extra_bytes`` streams that many bytes after the real body (then
closes, unless chunked). ``relayed`` counts the body bytes the proxy got into the socket.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgekit.rehearsal.processes import free_port

__all__ = ["Fault", "FaultProxy"]

_BLOCK = 1 << 20
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Fault:
    method: str | None = None
    path: str = ""
    status: int | None = None  # answer this instead of forwarding
    headers: dict[str, str] = field(default_factory=dict)  # sent with ``status`` (e.g. Retry-After)
    drop_request_after: int | None = None
    drop_response_after: int | None = None
    omit_length: bool = False
    content_length: int | None = None
    extra_bytes: int = 0
    times: int = 1
    relayed: int = 0

    @property
    def rewrites_body(self) -> bool:
        return self.omit_length or self.content_length is not None or self.extra_bytes > 0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and (self.method in (None, method)) and bool(re.search(self.path, path))


class FaultProxy:
    def __init__(self, upstream: str, *, port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self.requests: list[tuple[str, str, int]] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def count(self, method: str | None = None, path: str = "") -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if method in (None, m) and re.search(path, p))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                method, path = self.command, self.path
                fault = proxy._take_fault(method, path)
                length = int(self.headers.get("Content-Length") or 0)
                if fault and fault.status:
                    self.rfile.read(length)
                    body = b'{"errors":[{"code":"UNKNOWN","message":"injected fault"}]}'
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for key, value in fault.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body)
                    proxy._record(method, path, fault.status)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                    for key, value in self.headers.items():
                        if key.lower() not in _HOP:
                            upstream.putheader(key, value)
                    upstream.endheaders()
                    left = length
                    limit = fault.drop_request_after if fault and fault.drop_request_after is not None else None
                    sent = 0
                    while left > 0:
                        chunk = self.rfile.read(min(_BLOCK, left))
                        if not chunk:
                            break
                        if limit is not None and sent + len(chunk) >= limit:
                            upstream.send(chunk[: limit - sent])
                            proxy._record(method, path, 0)
                            self._cut()
                            return
                        upstream.send(chunk)
                        sent += len(chunk)
                        left -= len(chunk)
                    resp = upstream.getresponse()
                    if fault and fault.rewrites_body and method != "HEAD":
                        proxy._record(method, path, resp.status)
                        self._rewrite(resp, fault)
                        return
                    self.send_response_only(resp.status, resp.reason)
                    for key, value in resp.getheaders():
                        if key.lower() not in _HOP:
                            self.send_header(key, value)
                    self.end_headers()
                    proxy._record(method, path, resp.status)
                    relay_limit = (fault.drop_response_after if fault and fault.drop_response_after is not None
                                   else None)
                    relayed = 0
                    while method != "HEAD":
                        chunk = resp.read(_BLOCK)
                        if not chunk:
                            break
                        if relay_limit is not None and relayed + len(chunk) >= relay_limit:
                            self.wfile.write(chunk[: relay_limit - relayed])
                            self.wfile.flush()
                            self._cut()
                            return
                        self.wfile.write(chunk)
                        relayed += len(chunk)
                finally:
                    upstream.close()

            def _rewrite(self, resp: http.client.HTTPResponse, fault: Fault) -> None:
                self.send_response_only(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in _HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                real = resp.getheader("Content-Length")
                if fault.omit_length:
                    self.send_header("Transfer-Encoding", "chunked")
                elif fault.content_length is not None or real is not None:
                    self.send_header("Content-Length", str(fault.content_length if fault.content_length is not None
                                                           else real))
                self.end_headers()
                filler = bytes(_BLOCK)

                def chunks() -> Iterator[bytes]:
                    while chunk := resp.read(_BLOCK):
                        yield chunk
                    left = fault.extra_bytes
                    while left > 0:
                        yield filler[: min(_BLOCK, left)]
                        left -= min(_BLOCK, left)

                try:
                    for chunk in chunks():
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if fault.omit_length else chunk)
                        self.wfile.flush()
                        with proxy._lock:
                            fault.relayed += len(chunk)
                    if fault.omit_length:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                except OSError:  # the client stopped reading and closed
                    pass
                if fault.extra_bytes or fault.content_length is not None:
                    self._cut()

            def _cut(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"faultproxy:{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
