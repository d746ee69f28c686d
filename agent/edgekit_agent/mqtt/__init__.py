"""One MQTT seam for edgekit: a thin, typed layer over paho-mqtt 2.x used by the agent's publisher
and the fleet watcher alike.

- ``settings``: the client settings both share (``mqtt_*`` names, reconnect bounds);
- ``connecting``: settings -> paho client (protocol version and the 5 -> 3.1.1 fallback, TLS,
  credentials, ``will.Will``) and CONNECT;
- ``backoff``: exponential reconnect delays with jitter;
- ``reasons``: reason codes and socket errors -> the ``TelemetryError`` family (``reason_code`` kept);
- ``readahead``: the subscriber's fast path, the only code that touches paho's private methods.

Connection loops stay with each client: the publisher drains a spool, the watcher feeds a tracker.
This package namespace holds only what does not import paho, so that reading settings (every
``edgekit`` and ``edgekit-agent`` command does) stays cheap; import ``connecting``, ``will`` and
``readahead`` from their modules.
"""

from edgekit_agent.mqtt.backoff import Backoff, backoff_delay
from edgekit_agent.mqtt.reasons import AUTH_CODES, UNSUPPORTED_PROTOCOL, connack_error, connect_error, suback_error
from edgekit_agent.mqtt.settings import MQTT_PROTOCOLS, MqttSettings

__all__ = [
    "AUTH_CODES",
    "MQTT_PROTOCOLS",
    "UNSUPPORTED_PROTOCOL",
    "Backoff",
    "MqttSettings",
    "backoff_delay",
    "connack_error",
    "connect_error",
    "suback_error",
]
