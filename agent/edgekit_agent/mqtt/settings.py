"""The MQTT client settings both clients share: one set of names for the agent and the fleet watcher.

``AgentSettings`` and ``FleetSettings`` inherit these fields, so a name means the same in an agent's
``config.json``, in ``EDGEKIT_AGENT_*`` and in ``EDGEKIT_FLEET_*``. Where a broker URL lives differs
(one ``broker_url`` on a device, a failover list ``brokers`` for the fleet), so the checks that TLS
files come with an ``mqtts://`` URL, and that a password does not cross the network in clear text
(``check_plaintext_password``), are called by each subclass.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgekit_agent.errors import ConfigError

__all__ = ["MQTT_FILE_FIELDS", "MQTT_PROTOCOLS", "MqttSettings"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

MQTT_PROTOCOLS = ("auto", "5", "3.1.1")
MQTT_FILE_FIELDS = ("mqtt_password_file", "mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")


@dataclass(frozen=True)
class MqttSettings:
    mqtt_protocol: str = "auto"              # auto = 5, falling back to 3.1.1
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_password_file: str | None = None
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    mqtt_keepalive: int = 30
    # A password over plain mqtt:// to a broker off this host is readable by anyone on the path:
    # refused unless this says the network is trusted.
    mqtt_allow_plaintext_password: bool = False
    reconnect_min: float = 0.5               # backoff between attempts, with jitter
    reconnect_max: float = 60.0

    def __post_init__(self) -> None:
        if self.mqtt_protocol not in MQTT_PROTOCOLS:
            raise ConfigError(f"expected one of {', '.join(MQTT_PROTOCOLS)}, got {self.mqtt_protocol!r}",
                              field="mqtt_protocol")
        for name in ("reconnect_min", "reconnect_max"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"must be a positive number of seconds, got {value!r}", field=name)
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError("must be >= reconnect_min", field="reconnect_max")
        if self.mqtt_keepalive < 1:
            raise ConfigError(f"must be >= 1, got {self.mqtt_keepalive!r}", field="mqtt_keepalive")
        if self.mqtt_password is not None and self.mqtt_password_file is not None:
            raise ConfigError("set mqtt_password or mqtt_password_file, not both", field="mqtt_password")
        if (self.mqtt_password is not None or self.mqtt_password_file is not None) and not self.mqtt_username:
            raise ConfigError("a password needs mqtt_username", field="mqtt_username")
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ConfigError("a client certificate needs both mqtt_cert_file and mqtt_key_file",
                              field="mqtt_cert_file" if self.mqtt_cert_file is None else "mqtt_key_file")

    @property
    def tls_files(self) -> bool:
        """Whether a CA or a client certificate is set (then the URL must be ``mqtts://``)."""
        return bool(self.mqtt_ca_file or self.mqtt_cert_file)

    def check_plaintext_password(self, urls: Iterable[str], field: str) -> None:
        """Refuse a password that would go to a broker in clear text (``mqtt://``, not loopback)."""
        if self.mqtt_allow_plaintext_password or (self.mqtt_password is None and self.mqtt_password_file is None):
            return
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme == "mqtt" and not _is_loopback(parts.hostname or ""):
                raise ConfigError(f"{url} is plain MQTT: the password would cross the network in clear text",
                                  field=field, hint="use mqtts:// (and mqtt_ca_file), or set "
                                                    "mqtt_allow_plaintext_password on a network you trust")

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

    def check_files(self, *more: str) -> None:
        """Check that every file setting (the MQTT ones and ``more``) names a readable file."""
        for name in (*MQTT_FILE_FIELDS, *more):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"{path} does not exist or is not readable", field=name)
