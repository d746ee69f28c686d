"""The exception tree: "should I retry?" is in the type, and a server's Retry-After reaches the error."""

from __future__ import annotations

import contextlib
import email.utils
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from edgekit_agent.errors import retry_after_seconds

import edgekit.errors as errors
from edgekit.kube.client import KubeClient, error_for_status


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("1.5") == 1.5
    now = 1_800_000_000.0
    assert retry_after_seconds(email.utils.formatdate(now + 20, usegmt=True), now=now) == pytest.approx(20.0)
    assert retry_after_seconds(email.utils.formatdate(now - 20, usegmt=True), now=now) == 0.0  # already past
    for junk in (None, "", "soon", "-3", "nan", "inf"):
        assert retry_after_seconds(junk) is None


def test_every_error_is_temporary_or_permanent_at_most() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert not (issubclass(cls, errors.TemporaryError) and issubclass(cls, errors.PermanentError)), name
    temporary = {errors.RegistryUnavailableError, errors.KubeUnavailableError}
    permanent = {errors.ConfigError, errors.RegistryAuthError, errors.ImageNotFoundError, errors.KubeAuthError,
                 errors.KubeForbiddenError, errors.KubeNotFoundError, errors.KubeInvalidError,
                 errors.SignatureInvalidError, errors.SignatureMissingError, errors.GroupNotFoundError,
                 errors.DigestRequiredError, errors.SignatureRequiredError}
    assert all(issubclass(cls, errors.TemporaryError) for cls in temporary)
    assert all(issubclass(cls, errors.PermanentError) for cls in permanent)
    # the area code wins over the classification's own
    assert (errors.RegistryAuthError.exit_code, errors.KubeUnavailableError.exit_code) == (22, 41)


def test_merged_errors_keep_the_codes_push_reports() -> None:
    assert errors.GroupNotFoundError.exit_code == 61 and issubclass(errors.GroupNotFoundError, errors.RolloutError)
    assert errors.DigestRequiredError.exit_code == 63
    assert not hasattr(errors, "UnknownGroupError") and not hasattr(errors, "UnpinnedImageError")


@pytest.mark.parametrize(("status", "header", "expected"), [(429, "5", 5.0), (503, "2", 2.0), (503, None, None),
                                                             (500, "9", 9.0)])
def test_kube_throttling_carries_retry_after(status: int, header: str | None, expected: float | None) -> None:
    exc = error_for_status(status, "too many requests", retry_after=header)
    assert isinstance(exc, errors.KubeUnavailableError) and exc.retry_after == expected


def test_kube_client_reads_retry_after_from_a_429() -> None:
    answered: list[str] = []

    class Throttling(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answered.append(self.path)
            body = json.dumps({"kind": "Status", "message": "too many requests, please try again later",
                               "code": 429}).encode()
            self.send_response(429)
            self.send_header("Retry-After", "4")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with _serving(Throttling) as url:
        from kubernetes import client as k8s

        configuration = k8s.Configuration()
        configuration.host = url
        configuration.retries = 0  # urllib3 would wait out one Retry-After itself (kubeconfig clients: 1 retry)
        with KubeClient(k8s.ApiClient(configuration)) as client, \
                pytest.raises(errors.KubeUnavailableError) as err:
            client.get("/api/v1/nodes")
    assert err.value.retry_after == 4.0 and "answered 429: too many requests" in err.value.message
    assert answered == ["/api/v1/nodes"]


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A plain HTTP server on a free loopback port, answering with ``handler``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
