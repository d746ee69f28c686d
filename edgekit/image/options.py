"""Registry settings for the central commands: flags < ``EDGEKIT_REGISTRY_*`` environment < defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekit_agent.layered import load_layered
from edgekit_agent.oci.credentials import Credentials
from edgekit_agent.oci.registry import RegistryOptions

from edgekit.errors import ConfigError

ENV_PREFIX = "EDGEKIT_REGISTRY_"


@dataclass(frozen=True)
class RegistrySettings:
    insecure: bool = False  # skip TLS verification, allow plain HTTP
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    docker_config: str | None = None  # default: $DOCKER_CONFIG/config.json, ~/.docker/config.json
    retries: int = 4
    timeout: float = 60.0
    chunk_size_mb: int = 64  # uploads above this size go in PATCH chunks of this size
    token_hosts: tuple[str, ...] = ()  # token realms on other hosts than the registry that may see credentials

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"RegistrySettings(insecure={self.insecure}, ca_file={self.ca_file!r}, username={self.username!r})"

    def to_options(self) -> RegistryOptions:
        if self.password is not None and not self.username:
            raise ConfigError("a password needs a username", field="--username")
        if self.username and self.password is None:
            raise ConfigError("a username needs a password (--password-stdin or EDGEKIT_REGISTRY_PASSWORD)",
                              field="--password-stdin")
        if self.retries < 0:
            raise ConfigError("must be >= 0", field="--retries")
        if self.chunk_size_mb < 1:
            raise ConfigError("must be >= 1", field="chunk_size_mb")
        creds = Credentials(self.username, self.password) if self.username and self.password is not None else None
        return RegistryOptions(insecure=self.insecure, ca_file=self.ca_file, credentials=creds,
                               docker_config=self.docker_config, retries=self.retries, timeout=self.timeout,
                               token_hosts=self.token_hosts)


def load_registry_settings(**overrides: Any) -> RegistrySettings:
    return load_layered(RegistrySettings, env_prefix=ENV_PREFIX, overrides=overrides)
