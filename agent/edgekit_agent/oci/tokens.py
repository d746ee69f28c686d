"""Registry auth headers: HTTP basic, or bearer tokens from the realm of a ``WWW-Authenticate`` challenge.

Pure: the request for a token, whether our basic credentials may go to its realm, and what the
token service's answer means. The client sends the request (with its retries) and caches the
tokens per scope set.

The realm is whatever URL the registry's challenge names, so a hostile or spoofed registry could
collect our password there. Credentials go only to an HTTPS realm (or one on loopback) on the
registry's own host, a known token service of that registry, or a host the user allowlists
(``token_hosts``); any other realm is asked for an anonymous token.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterable
from typing import Any

from edgekit_agent.errors import RegistryAuthError
from edgekit_agent.oci.credentials import Credentials
from edgekit_agent.oci.transport import is_loopback

__all__ = ["KNOWN_TOKEN_HOSTS", "TOKEN_HOSTS_HINT", "basic_authorization", "credentials_withheld", "token_from_answer",
           "token_request"]

# Token services that live on another host than their registry.
KNOWN_TOKEN_HOSTS = {
    "docker.io": ("auth.docker.io",),
    "index.docker.io": ("auth.docker.io",),
    "registry-1.docker.io": ("auth.docker.io",),
    "registry.gitlab.com": ("gitlab.com",),
}
TOKEN_HOSTS_HINT = ("if that host is the registry's own token service, add it to token_hosts "
                    "(EDGEKIT_REGISTRY_TOKEN_HOSTS)")


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


def credentials_withheld(registry: str, realm: urllib.parse.SplitResult, allowed_hosts: Iterable[str] = ()
                         ) -> str | None:
    """Why basic credentials must not go to the token ``realm`` of ``registry``, or None if they may."""
    host = (realm.hostname or "").lower()
    registry_host = (urllib.parse.urlsplit(f"//{registry}").hostname or registry).lower()
    if realm.scheme != "https" and not is_loopback(realm.netloc):
        return f"its token realm {realm.scheme}://{realm.netloc} is not HTTPS"
    allowed = {registry_host, *KNOWN_TOKEN_HOSTS.get(registry_host, ()), *(h.lower() for h in allowed_hosts)}
    if host not in allowed:
        return f"its token realm {host} is another host than the registry's"
    return None


def token_from_answer(registry: str, credentials: Credentials | None, status: int, body: Any, *,
                      withheld: str | None = None) -> str:
    """The token in the token service's answer (``status`` and parsed JSON ``body``), or why not.
    ``withheld`` says why our credentials were not sent."""
    if status in (401, 403):
        if credentials is not None and withheld:
            raise RegistryAuthError(f"token service of {registry} refused anonymous access; the credentials "
                                    f"for {registry} were not sent because {withheld}",
                                    hint=TOKEN_HOSTS_HINT)
        who = f"user {credentials.username!r}" if credentials else "anonymous access"
        raise RegistryAuthError(f"token service of {registry} refused {who}",
                                hint="check --username/--password-stdin or docker login")
    if status != 200:
        raise RegistryAuthError(f"token service of {registry} answered {status}")
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryAuthError(f"token service of {registry} sent no token")
    return token
