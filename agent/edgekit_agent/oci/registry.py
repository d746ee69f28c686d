"""A small OCI distribution API client on the standard library (so it runs on a device).

The client holds the connection, the auth state and the retry loops; the pieces it builds on:
``transport`` (connections, responses, re-sendable bodies), ``tokens`` (auth headers),
``answers`` (registry answers as image errors), ``downloading`` (blobs, resumed and verified).

What it does, and why each part is here:

- one keep-alive HTTP(S) connection per client, 1 MiB socket writes (``http.client``'s default
  8 KiB block size halves upload throughput);
- TLS with the system trust store, a custom CA file, or ``insecure`` (no verification; plain
  HTTP is tried when the server does not speak TLS, also for loopback registries);
- auth: the ``WWW-Authenticate`` challenge of ``/v2/`` decides between HTTP basic and bearer
  tokens (fetched per scope from the realm, with basic credentials when we have them and the realm
  may see them: ``tokens.credentials_withheld``);
- bounded reads: an answer held in memory stops at 4 MiB (``transport.MAX_ANSWER``) and a blob
  at its descriptor's size + 1, whatever Content-Length says;
- retries with exponential backoff (or the answer's ``Retry-After``, up to ``max_backoff``) on
  429/5xx answers and on connection resets, refusals and timeouts; once they are used up,
  ``RegistryUnavailableError`` (with ``retry_after`` when the registry named a delay);
- blob downloads that resume with ``Range`` after a dropped connection, and verify the digest.

Registry answers map onto the image error family: 401/403 -> ``RegistryAuthError``,
404 -> ``ImageNotFoundError``, content that does not hash right -> ``DigestMismatchError``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent import __version__, safejson
from edgekit_agent.errors import ImageError, RegistryAuthError, RegistryUnavailableError, retry_after_seconds
from edgekit_agent.oci import downloading
from edgekit_agent.oci.answers import answer_error, registry_message, safe_json, unreachable_error
from edgekit_agent.oci.credentials import Credentials, load_docker_credentials, parse_challenge
from edgekit_agent.oci.mediatypes import ACCEPT, sha256_digest, verify_bytes
from edgekit_agent.oci.tokens import (
    TOKEN_HOSTS_HINT,
    basic_authorization,
    credentials_withheld,
    token_from_answer,
    token_request,
)
from edgekit_agent.oci.transport import (
    MAX_ANSWER,
    RETRY_STATUS,
    TRANSIENT,
    BodySource,
    Response,
    connect,
    is_loopback,
    read_capped,
    ssl_context,
)

__all__ = ["Manifest", "RegistryClient", "RegistryOptions"]

log = logging.getLogger("edgekit_agent")



@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries. ``insecure`` skips TLS verification and allows plain HTTP."""

    insecure: bool = False
    ca_file: str | None = None
    credentials: Credentials | None = None
    docker_config: str | None = None
    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    timeout: float = 60.0
    plain_http: bool | None = None  # None: HTTPS, falling back to HTTP for insecure/loopback hosts
    token_hosts: tuple[str, ...] = ()  # token realms on other hosts that may see our credentials
    user_agent: str = f"edgekit/{__version__}"


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry stored it (the bytes are what the digest names)."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        from edgekit_agent.oci.mediatypes import parse_json_object

        return parse_json_object(self.data, f"manifest {self.digest}")


class RegistryClient:
    """Talks to one registry (``host[:port]``)."""

    def __init__(self, registry: str, options: RegistryOptions | None = None, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.registry = registry
        self.options = options or RegistryOptions()
        self._sleep = sleep
        self._scheme: str | None = "http" if self.options.plain_http else None
        self._conn: http.client.HTTPConnection | None = None
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._pinged = False
        self._tokens: dict[tuple[str, ...], str] = {}
        self._withheld: str | None = None  # why our credentials did not go to the token service
        creds = self.options.credentials
        if creds is None:
            creds = load_docker_credentials(registry, self.options.docker_config)
        self.credentials = creds
        self.requests = 0  # HTTP requests sent (tests and benchmarks read it)

    # --- connections ---------------------------------------------------------------------------
    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        return connect(scheme, netloc, timeout=self.options.timeout,
                       context=lambda: ssl_context(self.options.insecure, self.options.ca_file))

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = self._connect(self._scheme or "https", self.registry)
        return self._conn

    def drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.drop_connection()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return f"{self._scheme or 'https'}://{self.registry}"

    # --- retries -------------------------------------------------------------------------------
    def backoff(self, attempt: int, retry_after: str | None = None) -> float:
        asked = retry_after_seconds(retry_after)
        if asked is not None:
            return min(asked, self.options.max_backoff)
        delay = min(self.options.backoff * (2 ** attempt), self.options.max_backoff)
        return delay * random.uniform(0.8, 1.2)

    def pause(self, attempt: int, retry_after: str | None = None) -> None:
        """Sleep before retry number ``attempt`` (0-based)."""
        self._sleep(self.backoff(attempt, retry_after))

    def _unreachable(self, exc: BaseException, tries: int) -> RegistryUnavailableError:
        return unreachable_error(self.registry, exc, tries)

    # --- the ping and auth ---------------------------------------------------------------------
    def _ping(self) -> None:
        """``GET /v2/``: pick the scheme, learn the auth challenge."""
        if self._pinged:
            return
        allow_http = self.options.plain_http is not False and (self.options.insecure or is_loopback(self.registry))
        if self._scheme is None:
            self._scheme = "https"
        last: BaseException | None = None
        tries = attempt = 0
        while attempt <= self.options.retries:
            tries += 1
            asked: str | None = None  # the answer's Retry-After
            try:
                resp = self._send_once("GET", "/v2/", {})
                status, body = resp.status, resp.discard()
            except ssl.SSLCertVerificationError as exc:
                self.drop_connection()
                raise ImageError(f"TLS verification of registry {self.registry} failed: {exc.verify_message}",
                                 hint="pass --ca-file with the registry's CA, or --insecure") from exc
            except ssl.SSLError as exc:
                self.drop_connection()
                if allow_http and self._scheme == "https":
                    self._scheme = "http"  # a plain-HTTP registry answered the TLS hello
                    continue
                raise ImageError(f"TLS handshake with registry {self.registry} failed: {exc.reason or exc}",
                                 hint="for a plain-HTTP registry pass --insecure") from exc
            except TRANSIENT as exc:
                self.drop_connection()
                last = exc
            else:
                if status not in RETRY_STATUS:
                    if status == 401:
                        header = resp.headers.get("WWW-Authenticate", "")
                        self._challenge = parse_challenge(header) if header else ("basic", {})
                    elif status != 200:
                        raise ImageError(f"{self.base_url}/v2/ answered {status}: not an OCI registry? "
                                         f"{registry_message(safe_json(body))}".strip())
                    self._pinged = True
                    return
                asked = resp.headers.get("Retry-After")
                last = RegistryUnavailableError(f"registry {self.registry} answered {status} to GET /v2/",
                                                retry_after=retry_after_seconds(asked))
            if attempt < self.options.retries:
                self._sleep(self.backoff(attempt, asked))
            attempt += 1
        if isinstance(last, RegistryUnavailableError):
            raise RegistryUnavailableError(f"{last.message} (after {tries} tries)", retry_after=last.retry_after,
                                           hint="the registry keeps failing; try again later")
        assert last is not None
        raise self._unreachable(last, tries)

    def _basic(self) -> str | None:
        return basic_authorization(self.credentials)

    def _token(self, scopes: tuple[str, ...], *, refresh: bool = False) -> str | None:
        assert self._challenge is not None
        if not refresh and scopes in self._tokens:
            return self._tokens[scopes]
        url = token_request(self.registry, self._challenge[1], scopes)
        path = f"{url.path}?{url.query}"
        withheld = credentials_withheld(self.registry, url, self.options.token_hosts) if self.credentials else None
        self._withheld = withheld
        if withheld:
            log.warning("asking %s for an anonymous token: the credentials for %s are not sent because %s",
                        url.netloc, self.registry, withheld)
        headers = {"Authorization": basic} if not withheld and (basic := self._basic()) else {}
        conn = self._connect(url.scheme or "https", url.netloc)
        try:
            for attempt in range(self.options.retries + 1):
                try:
                    self.requests += 1
                    conn.request("GET", path, headers={**headers, "User-Agent": self.options.user_agent})
                    resp = conn.getresponse()
                    status, body = resp.status, read_capped(resp, MAX_ANSWER, f"token answer of {url.netloc}")
                except TRANSIENT as exc:
                    conn.close()
                    if attempt == self.options.retries:
                        raise RegistryUnavailableError(f"cannot reach token service {url.netloc}: {exc}") from exc
                    self._sleep(self.backoff(attempt))
                    continue
                if status in RETRY_STATUS and attempt < self.options.retries:
                    self._sleep(self.backoff(attempt))
                    continue
                break
        finally:
            conn.close()
        token = token_from_answer(self.registry, self.credentials, status, safe_json(body), withheld=withheld)
        self._tokens[scopes] = token
        return token

    def _authorization(self, scopes: tuple[str, ...], *, refresh: bool = False) -> str | None:
        if self._challenge is None:
            return None
        scheme = self._challenge[0]
        if scheme == "bearer":
            token = self._token(scopes, refresh=refresh)
            return f"Bearer {token}" if token else None
        return self._basic()

    # --- requests ------------------------------------------------------------------------------
    def _send_once(self, method: str, url: str, headers: dict[str, str],
                   body: bytes | BodySource | None = None) -> Response:
        conn = self._connection()
        headers = {"User-Agent": self.options.user_agent, **headers}
        payload: Any = None
        if isinstance(body, bytes):
            payload = body
            headers["Content-Length"] = str(len(body))
        elif body is not None:
            payload = body.open()
            headers["Content-Length"] = str(body.length)
        elif method in ("PUT", "POST", "PATCH"):
            headers["Content-Length"] = "0"
        self.requests += 1
        try:
            conn.request(method, url, body=payload, headers=headers)
            raw = conn.getresponse()
        finally:
            if payload is not None and not isinstance(payload, bytes):
                payload.close()
        return Response(raw.status, raw.reason, raw.headers, raw, url, abandon=self.drop_connection)

    def request(self, method: str, path: str, *, repository: str | None = None,
                actions: Iterable[str] = ("pull",), extra_scopes: Iterable[str] = (),
                headers: dict[str, str] | None = None, body: bytes | BodySource | None = None,
                expect: Iterable[int] = (200,), what: str = "", stream: bool = False,
                retry: bool = True) -> Response:
        """Send one API request with auth, redirects and retries; map failures to image errors.

        ``path`` is ``/v2/...`` or an absolute URL the registry gave us (upload locations).
        With ``stream``, the caller reads and closes the response body. ``retry=False`` is for
        requests that are not safe to repeat as they are (upload bodies): the first connection
        error or 5xx raises ``RegistryUnavailableError`` and the caller recovers.
        """
        retries = self.options.retries if retry else 0
        self._ping()
        scopes = tuple(extra_scopes)
        if repository:
            scopes = (f"repository:{repository}:{','.join(actions)}", *scopes)
        expect = tuple(expect)
        what = what or f"{method} {path}"
        reauthed = False
        attempt = 0
        tries = 0
        while True:
            tries += 1
            hdrs = dict(headers or {})
            auth = self._authorization(scopes, refresh=reauthed)
            if auth:
                hdrs["Authorization"] = auth
            url = self._relative(path)
            try:
                resp = self._send_once(method, url, hdrs, body)
                if method in ("GET", "HEAD") and resp.status in (301, 302, 303, 307, 308):
                    resp = self._follow(method, resp, hdrs)
            except ssl.SSLCertVerificationError as exc:
                self.drop_connection()
                raise ImageError(f"TLS verification of registry {self.registry} failed: {exc.verify_message}",
                                 hint="pass --ca-file with the registry's CA, or --insecure") from exc
            except TRANSIENT as exc:
                self.drop_connection()
                if attempt >= retries:
                    raise self._unreachable(exc, tries) from exc
                self._sleep(self.backoff(attempt))
                attempt += 1
                continue
            if resp.status == 401 and not reauthed:
                header = resp.headers.get("WWW-Authenticate")
                resp.discard()
                if header:
                    self._challenge = parse_challenge(header)
                reauthed = True
                continue
            if resp.status in RETRY_STATUS and resp.status not in expect:
                resp.discard()
                if attempt >= retries:
                    raise RegistryUnavailableError(
                        f"registry {self.registry} answered {resp.status} {resp.reason} to {what} "
                        f"(after {tries} tries)", hint="the registry keeps failing; try again later",
                        retry_after=retry_after_seconds(resp.headers.get("Retry-After")))
                self._sleep(self.backoff(attempt, resp.headers.get("Retry-After")))
                attempt += 1
                continue
            if resp.status not in expect:
                self._raise_for(resp, what)
            if not stream and method == "HEAD":
                resp.discard()
            return resp

    def _relative(self, path: str) -> str:
        if path.startswith("/"):
            return path
        url = urllib.parse.urlsplit(path)
        if url.netloc and url.netloc != self.registry:
            raise ImageError(f"registry {self.registry} sent an upload location on another host: {url.netloc}")
        return urllib.parse.urlunsplit(("", "", url.path, url.query, ""))

    def _follow(self, method: str, resp: Response, headers: dict[str, str]) -> Response:
        for _ in range(5):
            location = resp.headers.get("Location")
            resp.discard()
            if not location:
                raise ImageError(f"registry {self.registry} redirected without a location")
            target = urllib.parse.urlsplit(urllib.parse.urljoin(f"{self.base_url}{resp.url}", location))
            rel = urllib.parse.urlunsplit(("", "", target.path, target.query, ""))
            if target.netloc == self.registry and target.scheme == (self._scheme or "https"):
                resp = self._send_once(method, rel, headers)
            else:  # storage backends (S3 and the like) must not see our registry credentials
                conn = self._connect(target.scheme, target.netloc)
                hdrs = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                hdrs["User-Agent"] = self.options.user_agent
                self.requests += 1
                conn.request(method, rel, headers=hdrs)
                raw = conn.getresponse()
                resp = Response(raw.status, raw.reason, raw.headers, raw, urllib.parse.urlunsplit(target))
            if resp.status not in (301, 302, 303, 307, 308):
                return resp
        raise ImageError(f"registry {self.registry}: too many redirects")

    def _raise_for(self, resp: Response, what: str) -> None:
        error = answer_error(self.registry, self.credentials, status=resp.status, reason=resp.reason, url=resp.url,
                             body=resp.json(), what=what)
        if isinstance(error, RegistryAuthError) and self._withheld:
            error = RegistryAuthError(f"{error.message}; the credentials were not sent to its token service "
                                      f"because {self._withheld}", hint=TOKEN_HOSTS_HINT)
        raise error

    # --- reading -------------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str, *, accept: str = ACCEPT) -> Manifest:
        """The manifest or index ``reference`` (tag or digest) names, checked against its digest."""
        sep = "@" if reference.startswith("sha256:") else ":"
        what = f"{self.registry}/{repository}{sep}{reference}"
        resp = self.request("GET", f"/v2/{repository}/manifests/{reference}", repository=repository,
                            headers={"Accept": accept}, what=f"image {what}", stream=True)
        data = resp.read(MAX_ANSWER, f"manifest {what}")
        digest = sha256_digest(data)
        if reference.startswith("sha256:"):
            verify_bytes(data, reference, f"manifest {what}")
        media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            media_type = safejson.loads(data).get("mediaType") or media_type
        return Manifest(data=data, media_type=media_type, digest=digest)

    def manifest_exists(self, repository: str, reference: str) -> str | None:
        """The digest of manifest ``reference`` when it exists, else None (HEAD, no body)."""
        resp = self.request("HEAD", f"/v2/{repository}/manifests/{reference}", repository=repository,
                            headers={"Accept": ACCEPT}, expect=(200, 404), what=f"manifest {reference}")
        if resp.status == 404:
            return None
        return resp.headers.get("Docker-Content-Digest") or ""

    def blob_exists(self, repository: str, digest: str, *, actions: Iterable[str] = ("pull",)) -> bool:
        resp = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", repository=repository,
                            actions=actions, expect=(200, 404), what=f"blob {digest}")
        return resp.status == 200

    def get_blob(self, repository: str, digest: str, *, max_size: int = MAX_ANSWER) -> bytes:
        """A small blob (config, signature payload) in memory, checked against its digest."""
        return downloading.get_blob(self, repository, digest, max_size=max_size)

    def download_blob(self, repository: str, digest: str, dest: Path, *, size: int | None = None,
                      on_bytes: Callable[[int], None] | None = None) -> None:
        """Stream a blob into ``dest``, resumed after dropped connections and verified
        (see ``downloading.download_blob``)."""
        downloading.download_blob(self, repository, digest, dest, size=size, on_bytes=on_bytes)
