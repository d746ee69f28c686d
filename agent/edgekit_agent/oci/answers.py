"""What registry answers mean: distribution API error bodies and failures as image errors.

Pure: the client reads the answer and raises what these functions return.
401/403 -> ``RegistryAuthError``, 404 -> ``ImageNotFoundError``, a connection that keeps failing
-> ``RegistryUnavailableError``, anything else unexpected -> ``ImageError``.
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from typing import Any

from edgekit_agent import safejson
from edgekit_agent.errors import ImageError, ImageNotFoundError, RegistryAuthError, RegistryUnavailableError
from edgekit_agent.oci.credentials import Credentials

__all__ = ["answer_error", "registry_message", "repository_of", "safe_json", "unreachable_error"]


def registry_message(body: Any) -> str:
    """The first error of a distribution API error body, as ``CODE: message``."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        err = body["errors"][0]
        if isinstance(err, dict):
            code, msg = err.get("code", ""), err.get("message", "")
            return f"{code}: {msg}".strip(": ")
    return ""


def safe_json(data: bytes) -> Any:
    try:
        return safejson.loads(data) if data else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def repository_of(url: str) -> str | None:
    """The repository an API URL (``/v2/<repo>/manifests|blobs|tags/...``) is about."""
    path = urllib.parse.urlsplit(url).path
    for marker in ("/manifests/", "/blobs/", "/tags/"):
        if path.startswith("/v2/") and marker in path:
            return path[4:path.index(marker)]
    return None


def answer_error(registry: str, credentials: Credentials | None, *, status: int, reason: str, url: str,
                 body: Any, what: str) -> ImageError:
    """The error for an unexpected answer ``status`` (with its JSON ``body``) to request ``what``."""
    msg = registry_message(body)
    detail = f": {msg}" if msg else ""
    if status == 401:
        if credentials is None:
            return RegistryAuthError(f"registry {registry} needs credentials for {what}",
                                     hint="pass --username/--password-stdin or docker login")
        return RegistryAuthError(f"registry {registry} refused the credentials of user "
                                 f"{credentials.username!r} for {what}",
                                 hint="check --username/--password-stdin or docker login")
    if status == 403:
        return RegistryAuthError(f"registry {registry} denied {what}{detail}")
    if status == 404:
        code = msg.split(":", 1)[0]
        if code == "NAME_UNKNOWN" and (repo := repository_of(url)):
            return ImageNotFoundError(f"repository {registry}/{repo} not found")
        return ImageNotFoundError(f"{what} not found")
    return ImageError(f"registry {registry} answered {status} {reason} to {what}{detail}")


def unreachable_error(registry: str, exc: BaseException, tries: int) -> RegistryUnavailableError:
    """The error once connecting keeps failing with ``exc``, after ``tries`` tries."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError | socket.timeout):
        reason = "timed out"
    return RegistryUnavailableError(
        f"cannot reach registry {registry}: {reason} (after {tries} tries)",
        hint="is the registry running and the address right?")
