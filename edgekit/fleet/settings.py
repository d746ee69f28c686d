"""Settings of the fleet telemetry subscriber: typed, frozen, layered (file < ``EDGEKIT_FLEET_*`` < flags).

Broker URLs and credentials follow the agent's conventions (``edgekit_agent.settings``):
``mqtt://host[:port]`` or ``mqtts://host[:port]`` only, credentials in their own settings (a
password file is preferred to a password on the command line). Several URLs are tried in order
and rotated through on reconnects (failover between brokers of one fleet).

The MQTT client fields are ``edgekit_agent.mqtt.MqttSettings``'s, named as on the agent
(``mqtt_username``, ``mqtt_ca_file``, ...). The fleet's former names (``username``, ``ca_file``,
...) are still read from files, ``EDGEKIT_FLEET_*`` and overrides, with a deprecation warning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from edgekit_agent.errors import ConfigError
from edgekit_agent.layered import load_layered
from edgekit_agent.mqtt.settings import MqttSettings
from edgekit_agent.protocol import DEFAULT_ROOT
from edgekit_agent.protocol.topics import check_segment

from edgekit.fleet.decoding import DEFAULT_MAX_PAYLOAD
from edgekit.fleet.state import TrackerConfig

__all__ = ["ENV_PREFIX", "RENAMED", "BrokerAddress", "FleetSettings", "load_fleet_settings", "parse_broker_url"]

ENV_PREFIX = "EDGEKIT_FLEET_"
# former name -> the shared name (accepted with a deprecation warning by load_fleet_settings)
RENAMED = {"username": "mqtt_username", "password": "mqtt_password", "password_file": "mqtt_password_file",
           "ca_file": "mqtt_ca_file", "cert_file": "mqtt_cert_file", "key_file": "mqtt_key_file",
           "keepalive": "mqtt_keepalive"}


class BrokerAddress(NamedTuple):
    url: str
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str, field: str = "brokers") -> BrokerAddress:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{url!r} is not a valid URL: {exc}", field=field) from exc
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}", field=field)
    if port == 0 or parts.path not in ("", "/") or parts.username or parts.password or parts.query:
        raise ConfigError(f"{url!r}: only scheme, host and port are allowed (credentials go in "
                          "--username / --password-file)", field=field)
    tls = parts.scheme == "mqtts"
    return BrokerAddress(url, parts.hostname, port or (8883 if tls else 1883), tls)


@dataclass(frozen=True)
class FleetSettings(MqttSettings):
    # where
    brokers: tuple[str, ...] = ("mqtt://127.0.0.1:1883",)
    topic_root: str = DEFAULT_ROOT
    group: str | None = None
    shared_group: str | None = None
    # how (and the MQTT client fields of MqttSettings)
    client_id: str | None = None
    session_expiry: int = 0          # > 0: a persistent session the broker keeps (and queues for)
    connect_timeout: float = 10.0
    reconnect_max: float = 30.0
    # what to make of it
    interval: float = 10.0
    silent_after: float = 3.0
    history: int = 32
    max_error_rate: float = 0.05
    flood_limit: int = 600
    flood_window_s: float = 60.0
    max_devices: int = 1_000_000
    max_hist_bytes: int = 1024       # a report's packed latency histogram kept up to this size
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_queue: int = 1_000_000       # messages received but not yet applied, before we drop

    def __post_init__(self) -> None:
        if not self.brokers:
            raise ConfigError("at least one broker URL is needed", field="brokers")
        addresses = [parse_broker_url(u) for u in self.brokers]
        if any(a.tls for a in addresses) != all(a.tls for a in addresses):
            raise ConfigError("mix of mqtt:// and mqtts:// brokers", field="brokers")
        if not self.topic_root or any(c in self.topic_root for c in "+#") or self.topic_root.startswith("/"):
            raise ConfigError(f"{self.topic_root!r} is not a valid topic root", field="topic_root")
        for name in ("group", "shared_group"):
            value = getattr(self, name)
            if value is not None:
                try:
                    check_segment(name, value)
                except ValueError as exc:
                    raise ConfigError(str(exc), field=name) from exc
        super().__post_init__()
        for name in ("interval", "silent_after", "connect_timeout", "flood_window_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"must be a positive number, got {value!r}", field=name)
        for name, minimum in (("mqtt_keepalive", 5), ("history", 1), ("flood_limit", 1), ("max_devices", 1),
                              ("max_hist_bytes", 0), ("max_payload", 256), ("max_queue", 1000), ("session_expiry", 0)):
            if getattr(self, name) < minimum:
                raise ConfigError(f"must be >= {minimum}, got {getattr(self, name)!r}", field=name)
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigError("must be in [0, 1]", field="max_error_rate")
        if self.tls_files and not addresses[0].tls:
            raise ConfigError("TLS files are set but the broker URL is not mqtts://", field="brokers")
        self.check_plaintext_password(self.brokers, "brokers")
        if self.session_expiry and not self.client_id:
            raise ConfigError("a persistent session (session_expiry > 0) needs a fixed client_id",
                              field="client_id")

    @property
    def addresses(self) -> list[BrokerAddress]:
        return [parse_broker_url(u) for u in self.brokers]

    def tracker(self) -> TrackerConfig:
        return TrackerConfig(interval=self.interval, silent_after=self.silent_after, history=self.history,
                             max_error_rate=self.max_error_rate, flood_limit=self.flood_limit,
                             flood_window_s=self.flood_window_s, max_devices=self.max_devices,
                             max_hist_bytes=self.max_hist_bytes)


def load_fleet_settings(file: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                        overrides: Mapping[str, Any] | None = None) -> FleetSettings:
    """defaults < ``file`` < ``EDGEKIT_FLEET_*`` environment < ``overrides`` (None values skipped);
    the former names in ``RENAMED`` are read too, with a deprecation warning."""
    return load_layered(FleetSettings, file=file, env_prefix=ENV_PREFIX, env=env, overrides=overrides,
                        renamed=RENAMED)
