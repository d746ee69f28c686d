"""Local inference API: the Open Inference Protocol (KServe v2) REST subset, plus ``/metrics``.

    GET  /v2/health/live                 200 while the process runs
    GET  /v2/health/ready                200 when a model is loaded and its probe passes, else 503
    GET  /v2                             server metadata (extensions: binary_tensor_data)
    GET  /v2/models/{name}[/versions/v]  model metadata; ``/ready`` suffix: model readiness
    POST /v2/models/{name}[/versions/v]/infer
    GET  /metrics                        Prometheus text

Inference bodies are JSON, or JSON followed by raw little-endian tensors (the binary tensor data
extension: header ``Inference-Header-Content-Length`` gives the JSON length; each binary input
carries ``parameters.binary_data_size``; outputs are returned binary when asked with
``parameters.binary_data`` per output or ``binary_data_output`` for all). Every malformed request
gets a 4xx with ``{"error": reason}`` and the server keeps going. Bound to 127.0.0.1 by default.

One client must not take the server down, so: at most ``max_connections`` connections are served
at once (more are answered 503 and closed at accept); a request's line and headers must arrive
within ``header_timeout_s`` and its body within ``body_timeout_s`` (deadlines, not per-read
timeouts, so dripping a byte a second does not help); bodies over ``max_request_bytes``, and JSON
over ``max_json_bytes``, are refused from their declared lengths, unread, and the bodies over
64 KiB being read or decoded at once share a budget of twice ``max_request_bytes``; a binary part
is read only once the JSON header accounts for its every byte; JSON is parsed within bounds
(``parsing.py``), over 16 KiB in a helper process (``parser_process.py``) so that it never holds
this process's GIL while small requests wait. With ``api_token_file`` set every endpoint but
the two health probes needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgekit_agent import __version__
from edgekit_agent.core import AgentCore
from edgekit_agent.errors import InferenceRequestError, ModelNotReadyError
from edgekit_agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgekit_agent.metrics import render_metrics
from edgekit_agent.oip import HEADER_LENGTH, decode_infer_header, encode_infer_response
from edgekit_agent.parser_process import INLINE_BYTES, ParserProcess
from edgekit_agent.tensors import TensorInfo

log = logging.getLogger("edgekit_agent")

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # kubelet probes carry no token
_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")


# -- HTTP plumbing ----------------------------------------------------------------------------------
_REFUSED = b'{"error":"too many connections"}'
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_REFUSED), _REFUSED))


# what is read into it is dropped, so one buffer serves every connection
_DISCARD = bytearray(1 << 20)
_TRUNC = getattr(socket, "MSG_TRUNC", 0)


class _ByteBudget:
    """Bytes of request bodies held at once (being read, decoded or run).

    Bodies up to ``SMALL`` bytes do not count: ``max_connections`` of them are bounded anyway, and
    ordinary requests must not queue behind big ones."""

    SMALL = 64 * 1024

    def __init__(self, total: int) -> None:
        self._free = total
        self._cond = threading.Condition()

    def take(self, n: int, timeout: float) -> bool:
        if n <= self.SMALL:
            return True
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= n, timeout):
                return False
            self._free -= n
            return True

    def give(self, n: int) -> None:
        if n <= self.SMALL:
            return
        with self._cond:
            self._free += n
            self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], core: AgentCore) -> None:
        s = core.settings
        self.core = core
        self.token = s.read_api_token()
        self.slots = threading.BoundedSemaphore(s.max_connections)
        self.budget = _ByteBudget(2 * s.max_request_bytes)
        self.parser = ParserProcess()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Decided at accept, before a thread exists: excess connections cost one small write.
        if not self.slots.acquire(blocking=False):
            self.core.connections_refused += 1
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_REFUSAL)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _DeadlineReader(io.RawIOBase):
    """The socket as the handler's ``rfile``, each read bounded by the phase's deadline."""

    def __init__(self, handler: _Handler) -> None:
        self._handler = handler
        self._sock: socket.socket = handler.connection

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        h = self._handler
        remaining = h.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            return self._sock.recv_into(buffer)
        except TimeoutError:
            h.server.core.connections_timed_out[h.phase] += 1
            raise
        finally:
            self._sock.settimeout(h.server.core.settings.body_timeout_s)  # bounds our writes too


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body of a keep-alive response
    # waits for the client's delayed ACK (~40 ms on Linux).
    disable_nagle_algorithm = True
    server_version = f"edgekit-agent/{__version__}"
    server: _Server
    deadline = math.inf
    phase = "header"
    unread = 0  # body bytes left unread when answering early; drained before closing

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.unread:
                self._drain()

    def _drain(self) -> None:
        # Closing with unread bytes makes the kernel send RST, which can destroy our answer before
        # the client reads it; so read (and drop) what the client still sends, for a bounded time.
        # MSG_TRUNC makes Linux drop TCP data in the kernel, uncopied: refusing a big body costs
        # about as much CPU as refusing a small one.
        sock, left, chunk = self.connection, self.unread, _DISCARD
        deadline = time.monotonic() + min(2.0, self.server.core.settings.header_timeout_s)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            while left > 0 and (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                n = sock.recv_into(chunk, len(chunk), _TRUNC)
                if n == 0:
                    break
                left -= n

    def _declared_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            return 0

    def _start_phase(self, phase: str, seconds: float) -> None:
        self.phase, self.deadline = phase, time.monotonic() + seconds

    def handle_one_request(self) -> None:
        # The request line and headers, or an idle keep-alive connection's next request, must
        # come within header_timeout_s; the base class closes the connection on TimeoutError.
        self._start_phase("header", self.server.core.settings.header_timeout_s)
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError):
            self.close_connection = True
        except Exception as exc:  # a bug of ours: one line in the log, a 500, the server goes on
            log.error("http %s %s: %s: %s", self.command, self.path, type(exc).__name__, exc)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._json(500, {"error": "internal error"})

    def _authorized(self, path: str) -> bool:
        token = self.server.token
        if token is None or path in OPEN_PATHS:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            return True
        self.close_connection = True
        self.unread = self._declared_length()
        self._error(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        return False

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc, separators=(",", ":")).encode(), headers=headers)

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        if 400 <= status < 500:
            self.server.core.requests_rejected += 1
        self._json(status, {"error": message}, headers)

    # GET / HEAD
    def do_GET(self) -> None:
        core = self.server.core
        path = self.path.split("?", 1)[0]
        if not self._authorized(path):
            return
        if path == "/v2/health/live":
            self._json(200, {"live": True})
        elif path == "/v2/health/ready":
            self._ready(core)
        elif path in ("/v2", "/v2/"):
            self._json(200, {"name": "edgekit-agent", "version": __version__, "extensions": ["binary_tensor_data"]})
        elif path == "/metrics":
            self._send(200, render_metrics(core).encode(), METRICS_CONTENT_TYPE)
        elif m := _MODEL_PATH.match(path):
            if not self._model_matches(core, m.group("name"), m.group("version")):
                return
            rest = m.group("rest")
            if rest == "/ready":
                self._ready(core)
            elif rest == "/infer":
                self._error(405, "use POST for /infer")
            else:
                self._json(200, self._metadata(core))
        else:
            self._error(404, f"no such endpoint {path}")

    do_HEAD = do_GET

    def _ready(self, core: AgentCore) -> None:
        if core.ready:
            self._json(200, {"ready": True})
        else:
            self._json(503, {"ready": False, "reason": core.not_ready_reason})

    def _model_matches(self, core: AgentCore, name: str, version: str | None) -> bool:
        model = core.model
        if model is None:
            if core.model_ref is not None and name == core.model_ref["name"]:
                self._error(503, core.not_ready_reason or "model not loaded")
            else:
                self._error(404, f"unknown model {name!r}: no model is loaded")
            return False
        if name != model.name:
            self._error(404, f"unknown model {name!r}; this agent serves {model.name!r}")
            return False
        if version is not None and version != model.meta.version:
            self._error(404, f"model {name!r} has no version {version!r}; it is {model.meta.version!r}")
            return False
        return True

    @staticmethod
    def _metadata(core: AgentCore) -> dict[str, Any]:
        model = core.model
        assert model is not None

        def spec(t: TensorInfo) -> dict[str, Any]:
            return {"name": t.name, "datatype": t.oip_datatype, "shape": list(t.shape)}

        return {"name": model.name, "versions": [model.meta.version], "platform": "onnxruntime_onnx",
                "inputs": [spec(t) for t in model.session.inputs],
                "outputs": [spec(t) for t in model.session.outputs],
                "parameters": {"digest": model.digest, "precision": model.meta.precision,
                               "providers": list(model.session.providers)}}

    def do_POST(self) -> None:
        core = self.server.core
        path = self.path.split("?", 1)[0]
        if not self._authorized(path):
            return
        m = _MODEL_PATH.match(path)
        if not m or m.group("rest") != "/infer":
            self._discard_body()
            self._error(404 if not m else 405, f"no POST endpoint {path}")
            return
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            self.unread = self.server.core.settings.max_request_bytes
            self._error(411, "chunked bodies are not supported; send Content-Length")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            self._error(411, "Content-Length is required")
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._error(400, f"bad Content-Length {length_text!r}")
            return
        if length > core.settings.max_request_bytes:
            self._refuse_unread(length, 413, f"request of {length} bytes is over the limit of "
                                             f"{core.settings.max_request_bytes}")
            return
        header_text = self.headers.get(HEADER_LENGTH)
        try:
            header_length = length if header_text is None else int(header_text)
            if not 0 <= header_length <= length:
                raise ValueError
        except ValueError:
            self._refuse_unread(length, 400, f"bad {HEADER_LENGTH} {header_text!r} for a body of {length} bytes")
            return
        if header_length > core.settings.max_json_bytes:
            self._refuse_unread(length, 413, f"the request's JSON of {header_length} bytes is over the limit of "
                                             f"{core.settings.max_json_bytes}; send tensors as binary data "
                                             f"({HEADER_LENGTH})")
            return
        if not self.server.budget.take(length, core.settings.body_timeout_s):
            core.requests_busy += 1
            self.close_connection = True
            self.unread = length
            self._json(503, {"error": "busy: too many request bytes in flight"}, {"Retry-After": "1"})
            return
        try:
            self._infer(core, m, header_length, length - header_length)
        finally:
            self.server.budget.give(length)

    def _refuse_unread(self, unread: int, status: int, message: str) -> None:
        """Answer before reading the body, then close (what the client still sends is drained)."""
        self.close_connection = True
        self.unread = unread
        self._error(status, message)

    def _infer(self, core: AgentCore, m: re.Match[str], json_length: int, binary_length: int) -> None:
        # The JSON part first: a binary part is read only once the JSON says it has the right length.
        self._start_phase("body", core.settings.body_timeout_s)
        json_part = self.rfile.read(json_length)
        if len(json_part) != json_length:
            self.close_connection = True
            return
        # answered before the binary part is read: close, and drain what the client still sends
        self.unread, closing = binary_length, self.close_connection
        self.close_connection = closing or bool(binary_length)
        if not self._model_matches(core, m.group("name"), m.group("version")):
            return
        model = core.model
        assert model is not None
        inputs, outputs, depth = model.session.inputs, model.session.outputs, core.settings.max_json_depth
        try:
            if json_length <= INLINE_BYTES:
                header = decode_infer_header(json_part, binary_length, inputs, outputs, max_depth=depth)
            else:
                header = self.server.parser.decode(json_part, binary_length, inputs, outputs, max_depth=depth,
                                                   timeout=core.settings.body_timeout_s)
        except InferenceRequestError as exc:
            if exc.status == 503:
                core.requests_busy += 1
                self._json(503, {"error": exc.one_line()}, {"Retry-After": "1"})
            else:
                self._error(exc.status, exc.one_line())
            return
        del json_part
        binary = self.rfile.read(binary_length) if binary_length else b""
        self.unread = 0
        if len(binary) != binary_length:
            self.close_connection = True
            return
        self.close_connection = closing
        req = header.complete(binary)
        try:
            results = core.infer(req.feeds, req.outputs)
        except ModelNotReadyError as exc:
            self._error(503, exc.one_line())
            return
        except InferenceRequestError as exc:
            self._json(500, {"error": exc.one_line()})
            return
        body_out, head_len = encode_infer_response(model.name, model.meta.version, req, results)
        if head_len is None:
            self._send(200, body_out)
        else:
            self._send(200, body_out, "application/octet-stream", {HEADER_LENGTH: str(head_len)})

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= _ByteBudget.SMALL:
            self._start_phase("body", self.server.core.settings.body_timeout_s)
            self.rfile.read(length)
        elif length:  # a body nobody wants is not worth copying: dropped in the kernel as we close
            self.close_connection = True
            self.unread = length

    def do_PUT(self) -> None:
        if not self._authorized(self.path.split("?", 1)[0]):
            return
        self._discard_body()
        self._error(405, f"method {self.command} is not allowed")

    do_DELETE = do_PUT
    do_PATCH = do_PUT


class InferenceServer:
    """The HTTP server in a background thread; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, core: AgentCore, host: str | None = None, port: int | None = None) -> None:
        self.core = core
        host = core.settings.listen_host if host is None else host
        port = core.settings.listen_port if port is None else port
        self._httpd = _Server((host, port), core)
        address = self._httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> InferenceServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.parser.close()
