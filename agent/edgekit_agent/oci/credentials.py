"""Registry credentials: explicit username/password, or docker ``config.json`` / containers ``auth.json``.

Only static credentials are read (``auth`` or ``username``/``password`` entries); credential
helpers (``credsStore``/``credHelpers``) need the docker CLI and are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgekit_agent import safejson
from edgekit_agent.errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password
        return f"Credentials(username={self.username!r}, password=***)"


def default_config_paths() -> list[Path]:
    """Where docker, podman and skopeo keep logins, in the order we look."""
    paths: list[Path] = []
    if env := os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env))
    if env := os.environ.get("DOCKER_CONFIG"):
        paths.append(Path(env) / "config.json")
    paths.append(Path.home() / ".docker" / "config.json")
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(runtime) / "containers" / "auth.json")
    return paths


def _host_keys(registry: str) -> list[str]:
    keys = [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/",
            f"https://{registry}/v2/"]
    if registry in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    return keys


def _decode(entry: dict[str, object], path: Path, key: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: auths.{key}.auth is not base64 of user:password",
                              field="docker-config") from exc
        if not sep:
            raise ConfigError(f"{path}: auths.{key}.auth is not base64 of user:password",
                              field="docker-config")
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str):
        return Credentials(name, secret)
    return None


def load_docker_credentials(registry: str, config_path: str | os.PathLike[str] | None = None) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]``) from the first config file that has them."""
    paths = [Path(config_path)] if config_path else default_config_paths()
    for path in paths:
        try:
            data = safejson.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if config_path:
                raise ConfigError(f"docker config {path} does not exist", field="docker-config") from None
            continue
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read docker config {path}: {exc}", field="docker-config") from exc
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            continue
        for key in _host_keys(registry):
            entry = auths.get(key)
            if isinstance(entry, dict) and (creds := _decode(entry, path, key)):
                return creds
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``WWW-Authenticate: Bearer realm="…",service="…",scope="…"`` into scheme and params."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params
