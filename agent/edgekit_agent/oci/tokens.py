"""Registry auth headers: HTTP basic, or bearer tokens from the realm of a ``WWW-Authenticate`` challenge.

Pure: the request for a token and what the token service's answer means. The client sends the
request (with its retries) and caches the tokens per scope set.
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

from edgekit_agent.errors import RegistryAuthError
from edgekit_agent.oci.credentials import Credentials

__all__ = ["basic_authorization", "token_from_answer", "token_request"]


def basic_authorization(credentials: Credentials | None) -> str | None:
    if credentials is None:
        return None
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def token_request(registry: str, params: dict[str, str], scopes: tuple[str, ...]) -> urllib.parse.SplitResult:
    """The token service URL (realm, service and scopes from the challenge ``params``) to GET."""
    realm = params.get("realm")
    if not realm:
        raise RegistryAuthError(f"registry {registry} asks for a bearer token without a realm")
    query = [("service", params["service"])] if params.get("service") else []
    query += [("scope", s) for s in scopes]
    url = urllib.parse.urlsplit(realm)
    return url._replace(query=(url.query + "&" if url.query else "") + urllib.parse.urlencode(query))


def token_from_answer(registry: str, credentials: Credentials | None, status: int, body: Any) -> str:
    """The token in the token service's answer (``status`` and parsed JSON ``body``), or why not."""
    if status in (401, 403):
        who = f"user {credentials.username!r}" if credentials else "anonymous access"
        raise RegistryAuthError(f"token service of {registry} refused {who}",
                                hint="check --username/--password-stdin or docker login")
    if status != 200:
        raise RegistryAuthError(f"token service of {registry} answered {status}")
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryAuthError(f"token service of {registry} sent no token")
    return token
