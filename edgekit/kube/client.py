"""The one seam between edgekit and the Kubernetes API.

Every request edgekit makes goes through :meth:`KubeClient.request`, which counts it (benchmarks and
tests assert that group listing and applying take a constant number of calls, not one per node),
decodes JSON, and translates failures into the ``KubeError`` family:

    connection refused / timeout / TLS / 5xx / 429  -> KubeUnavailableError  41 (a TemporaryError;
                                                       ``retry_after`` from a ``Retry-After`` header)
    401                                             -> KubeAuthError         42
    403                                             -> KubeForbiddenError    43
    404                                             -> KubeNotFoundError     44
    409                                             -> KubeConflictError     45
    400 / 422                                       -> KubeInvalidError      46

Code that uses the typed ``kubernetes.client`` APIs directly can wrap calls in :func:`translating`
to get the same errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import urllib3
from edgekit_agent.errors import retry_after_seconds

if TYPE_CHECKING:
    from kubernetes import client as k8s

from edgekit.errors import (
    ConfigError,
    KubeAuthError,
    KubeConflictError,
    KubeError,
    KubeForbiddenError,
    KubeInvalidError,
    KubeNotFoundError,
    KubeUnavailableError,
)

__all__ = ["KubeClient", "RequestLog", "error_for_status", "translating"]

DEFAULT_TIMEOUT = (5.0, 60.0)  # (connect, read) seconds


def _status_message(body: bytes | str | None, fallback: str) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the raw text, else ``fallback``."""
    if not body:
        return fallback
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300] or fallback
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return fallback


def error_for_status(status: int, message: str, *, server: str = "", retry_after: str | None = None) -> KubeError:
    """The ``KubeError`` subclass for an HTTP status from the API server (``retry_after``: the
    answer's ``Retry-After`` header, kept on the temporary error so a retrying caller waits that long)."""
    where = f" ({server})" if server else ""
    if status == 401:
        return KubeAuthError(f"the Kubernetes API{where} refused the credentials: {message}",
                             hint="the token or client certificate is expired or unknown; "
                                  "refresh the kubeconfig")
    if status == 403:
        return KubeForbiddenError(f"forbidden: {message}",
                                  hint="grant the needed RBAC (see `edgekit install --dry-run`)")
    if status == 404:
        return KubeNotFoundError(message)
    if status == 409:
        hint = ("another field manager owns these fields; rerun with --force-conflicts to take them over"
                if "conflict" in message.lower() and "apply" in message.lower() else None)
        return KubeConflictError(message, hint=hint)
    if status in (400, 422):
        return KubeInvalidError(f"rejected by the API server: {message}")
    if status == 429 or status >= 500:
        return KubeUnavailableError(f"the Kubernetes API{where} answered {status}: {message}",
                                    retry_after=retry_after_seconds(retry_after))
    return KubeError(f"the Kubernetes API{where} answered {status}: {message}")


def _unavailable(server: str, exc: BaseException) -> KubeUnavailableError:
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    text = " ".join(str(reason).split())
    if "Connection refused" in text:
        text = "connection refused"
    return KubeUnavailableError(f"cannot reach the Kubernetes API at {server}: {text}",
                                hint="is the cluster running and the kubeconfig's server address right?")


@contextlib.contextmanager
def translating(server: str = "") -> Iterator[None]:
    """Translate ``kubernetes.client`` / urllib3 errors raised inside the block into KubeErrors."""
    # The kubernetes package takes ~0.15 s to import: only code that talks to a cluster pays for it.
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        if exc.status in (0, None):
            raise _unavailable(server, exc) from exc
        raise error_for_status(int(exc.status), _status_message(exc.body, str(exc.reason)),
                               server=server, retry_after=(exc.headers or {}).get("Retry-After")) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise _unavailable(server, exc) from exc


@dataclass
class RequestLog:
    """Every request made through a client: ``(method, path)``; thread-safe."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, method: str, path: str) -> None:
        with self._lock:
            self.calls.append((method, path))

    def __len__(self) -> int:
        return len(self.calls)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()


class KubeClient:
    """A thin JSON client over ``kubernetes.client.ApiClient`` (auth, TLS, proxies from kubeconfig)."""

    def __init__(self, api: k8s.ApiClient, *, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.api = api
        self.server = str(api.configuration.host)
        self.timeout = timeout
        self.log = RequestLog()

    @classmethod
    def from_kubeconfig(cls, path: str | Path | None = None, *, context: str | None = None,
                        timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> KubeClient:
        """Load a kubeconfig (``path``, else ``$KUBECONFIG``, else ``~/.kube/config``)."""
        where = str(path) if path else "the default kubeconfig"
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"kubeconfig {path} does not exist", field="kubeconfig")
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config

        # $KUBECONFIG is read now: the kubernetes client reads it once, when first imported
        config_file = str(path) if path else (os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser()))
        configuration = k8s.Configuration()
        try:
            k8s_config.load_kube_config(config_file=config_file, context=context,
                                        client_configuration=configuration, persist_config=False)
        except k8s_config.ConfigException as exc:
            raise ConfigError(f"cannot use {where}: {' '.join(str(exc).split())}",
                              field="kubeconfig") from exc
        except (OSError, ValueError, TypeError) as exc:  # unreadable files, bad base64 in the file
            raise ConfigError(f"cannot use {where}: {exc}", field="kubeconfig") from exc
        configuration.retries = 1
        return cls(k8s.ApiClient(configuration), timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------------
    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: tuple[float, float] | float | None = None) -> Any:
        """One API request; returns the decoded JSON answer (``None`` for an empty body)."""
        params = [(k, str(v).lower() if isinstance(v, bool) else str(v))
                  for k, v in (query or {}).items() if v is not None]
        url_path = path + (("?" + urlencode(params)) if params else "")
        headers: dict[str, str] = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        _method, url, headers, _body, _post = self.api.param_serialize(
            method=method, resource_path=url_path, header_params=headers, auth_settings=["BearerToken"])
        self.log.add(method, path)
        if isinstance(body, (str, bytes)):  # the REST layer serialises JSON/YAML bodies itself
            body = json.loads(body)
        with translating(self.server):
            response = self.api.call_api(method, url, header_params=headers, body=body,
                                         _request_timeout=timeout or self.timeout)
            raw = response.read()
        if response.status >= 400:
            raise error_for_status(response.status, _status_message(raw, str(response.reason)),
                                   server=self.server, retry_after=response.headers.get("Retry-After"))
        if not raw:
            return None
        return json.loads(raw)

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str, **query: Any) -> Any:
        try:
            return self.get(path, **query)
        except KubeNotFoundError:
            return None

    def list(self, path: str, *, label_selector: str | None = None, field_selector: str | None = None,
             page_size: int = 2000) -> list[dict[str, Any]]:
        """All items of a collection, in pages of ``page_size`` (one call per page, not per item)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            answer = self.request("GET", path, query={
                "labelSelector": label_selector, "fieldSelector": field_selector,
                "limit": page_size, "continue": token})
            items.extend(answer.get("items") or [])
            token = (answer.get("metadata") or {}).get("continue")
            if not token:
                return items

    def version(self) -> dict[str, Any]:
        """``/version`` of the API server (also a cheap reachability + credentials check)."""
        answer: dict[str, Any] = self.get("/version")
        return answer
