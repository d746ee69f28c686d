"""The agent's settings: one frozen dataclass, loaded as defaults < file < ``EDGEKIT_AGENT_*`` env < flags.

Every check names its field, so ``edgekit-agent check-config`` (and ``serve``) print one line and
exit 2 on a bad value. The device id defaults to the Kubernetes node name (``NODE_NAME``, set from
the downward API) and then the host name.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from edgekit_agent.errors import ConfigError
from edgekit_agent.layered import load_layered
from edgekit_agent.protocol.topics import DEFAULT_ROOT, check_segment

ENV_PREFIX = "EDGEKIT_AGENT_"
MQTT_PROTOCOLS = ("auto", "5", "3.1.1")
LOG_LEVELS = ("debug", "info", "warning", "error")
# json.loads recurses once per level; far below Python's recursion limit even on a handler thread
MAX_JSON_DEPTH = 256


@dataclass(frozen=True)
class AgentSettings:
    # identity
    device: str = ""
    group: str = "default"
    # model
    model_dir: str = "/model"
    model_name: str | None = None
    image: str | None = None
    public_key: str | None = None
    execution_providers: tuple[str, ...] = ()
    registry_insecure: bool = False
    registry_ca_file: str | None = None
    intra_op_threads: int = 0
    # telemetry
    broker_url: str | None = None
    topic_root: str = DEFAULT_ROOT
    mqtt_protocol: str = "auto"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_password_file: str | None = None
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    mqtt_keepalive: int = 30
    reconnect_min: float = 0.5
    reconnect_max: float = 60.0
    auth_retry_limit: int = 5
    message_expiry: int = 86_400
    interval: float = 10.0
    probe_interval: float = 300.0
    error_burst_ratio: float = 0.1
    error_burst_min: int = 5
    # store-and-forward
    spool_dir: str | None = "/var/lib/edgekit-agent/spool"
    spool_max_bytes: int = 16 * 1024 * 1024
    spool_max_age: float = 7 * 86_400.0
    # local API
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    max_request_bytes: int = 64 * 1024 * 1024
    max_json_depth: int = 32
    max_connections: int = 64
    header_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    api_token_file: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.device:
            object.__setattr__(self, "device", os.environ.get("NODE_NAME") or socket.gethostname())
        for name in ("device", "group"):
            try:
                check_segment(name, getattr(self, name))
            except ValueError as exc:
                raise ConfigError(str(exc), field=name) from exc
        if not self.topic_root or any(c in self.topic_root for c in "+#") or self.topic_root.startswith("/"):
            raise ConfigError(f"{self.topic_root!r} is not a valid topic root", field="topic_root")
        _positive(self, "interval", "probe_interval", "reconnect_min", "reconnect_max", "spool_max_age",
                  "header_timeout_s", "body_timeout_s")
        _at_least(self, 1, "spool_max_bytes", "mqtt_keepalive", "auth_retry_limit", "max_request_bytes",
                  "error_burst_min", "max_json_depth", "max_connections")
        if self.max_json_depth > MAX_JSON_DEPTH:
            raise ConfigError(f"must be <= {MAX_JSON_DEPTH}, got {self.max_json_depth}", field="max_json_depth")
        _at_least(self, 0, "intra_op_threads", "listen_port", "message_expiry")
        if self.listen_port > 65535:
            raise ConfigError(f"{self.listen_port} is not a TCP port", field="listen_port")
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError("must be >= reconnect_min", field="reconnect_max")
        if not 0 < self.error_burst_ratio <= 1:
            raise ConfigError("must be in (0, 1]", field="error_burst_ratio")
        if self.mqtt_protocol not in MQTT_PROTOCOLS:
            raise ConfigError(f"expected one of {', '.join(MQTT_PROTOCOLS)}, got {self.mqtt_protocol!r}",
                              field="mqtt_protocol")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}",
                              field="log_level")
        if self.broker_url is not None:
            _check_broker_url(self.broker_url)
        if self.mqtt_password is not None and self.mqtt_password_file is not None:
            raise ConfigError("set mqtt_password or mqtt_password_file, not both", field="mqtt_password")
        if (self.mqtt_password is not None or self.mqtt_password_file is not None) and not self.mqtt_username:
            raise ConfigError("a password needs mqtt_username", field="mqtt_username")
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ConfigError("a client certificate needs both mqtt_cert_file and mqtt_key_file",
                              field="mqtt_cert_file" if self.mqtt_cert_file is None else "mqtt_key_file")
        tls_files = (self.mqtt_ca_file, self.mqtt_cert_file)
        if any(tls_files) and self.broker_url and not self.broker_url.startswith("mqtts://"):
            raise ConfigError("TLS files are set but the URL is not mqtts://", field="broker_url")
        if self.image is not None and "@sha256:" not in self.image:
            raise ConfigError(f"{self.image!r} must be pinned by digest (…@sha256:…)", field="image")

    # -- derived values ------------------------------------------------------------------------
    @property
    def broker_host(self) -> str:
        return urlsplit(self.broker_url or "").hostname or "127.0.0.1"

    @property
    def broker_port(self) -> int:
        parts = urlsplit(self.broker_url or "")
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def broker_tls(self) -> bool:
        return bool(self.broker_url and self.broker_url.startswith("mqtts://"))

    @property
    def image_digest(self) -> str | None:
        return self.image.rsplit("@", 1)[1] if self.image else None

    def registry_options(self) -> Any:
        """``RegistryOptions`` for fetching ``image`` (and verifying its signature)."""
        from edgekit_agent.oci import RegistryOptions

        return RegistryOptions(insecure=self.registry_insecure, ca_file=self.registry_ca_file)

    def read_password(self) -> str | None:
        """The MQTT password, read from ``mqtt_password_file`` when that is set."""
        if self.mqtt_password_file is None:
            return self.mqtt_password
        try:
            with open(self.mqtt_password_file, encoding="utf-8") as fh:
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read {self.mqtt_password_file}: {exc.strerror}",
                              field="mqtt_password_file") from exc

    def read_api_token(self) -> str | None:
        """The bearer token the inference API requires, read from ``api_token_file`` (None: no token)."""
        if self.api_token_file is None:
            return None
        try:
            with open(self.api_token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read {self.api_token_file}: {reason}", field="api_token_file") from exc
        if not token:
            raise ConfigError(f"{self.api_token_file} is empty", field="api_token_file")
        return token

    def check_files(self) -> None:
        """Check that every file setting names a readable file (``check-config`` and ``serve``)."""
        for name in ("mqtt_password_file", "mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", "public_key",
                     "registry_ca_file", "api_token_file"):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"{path} does not exist or is not readable", field=name)
        self.read_api_token()  # an empty token file would lock every client out

    def redacted(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["mqtt_password"] is not None:
            out["mqtt_password"] = "***"
        out["execution_providers"] = list(self.execution_providers)
        return out


def _positive(s: AgentSettings, *names: str) -> None:
    for name in names:
        value = getattr(s, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"must be a positive number of seconds, got {value!r}", field=name)


def _at_least(s: AgentSettings, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(s, name) < minimum:
            raise ConfigError(f"must be >= {minimum}, got {getattr(s, name)!r}", field=name)


def _check_broker_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{url!r} is not a valid URL: {exc}", field="broker_url") from exc
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}", field="broker_url")
    if port == 0 or parts.path not in ("", "/") or parts.username or parts.password:
        raise ConfigError(f"{url!r}: only scheme, host and port are allowed (credentials go in "
                          "mqtt_username / mqtt_password_file)", field="broker_url")


def load_settings(file: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> AgentSettings:
    """Load settings from ``file`` < ``EDGEKIT_AGENT_*`` environment < ``overrides``."""
    return load_layered(AgentSettings, file=file, env_prefix=ENV_PREFIX, env=env, overrides=overrides)


__all__ = ["ENV_PREFIX", "AgentSettings", "load_settings"]
