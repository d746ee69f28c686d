"""Settings -> a paho client, ready to connect: protocol version, TLS, credentials, last will.

paho 2.x with the version-2 callback API. Each connection attempt gets a fresh client (paho's own
reconnect stays off), so nothing from a previous attempt lingers in it. MQTT 5 is tried first;
``falls_back`` says when to speak 3.1.1 instead.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekit_agent.errors import TelemetryTLSError
from edgekit_agent.mqtt.reasons import UNSUPPORTED_PROTOCOL, code_of, short
from edgekit_agent.mqtt.settings import MqttSettings
from edgekit_agent.mqtt.will import Will

__all__ = ["connect", "falls_back", "new_client", "protocol_for", "version_name"]


def protocol_for(setting: str) -> MQTTProtocolVersion:
    """The version to try first: 3.1.1 only when asked for, else 5."""
    return MQTTProtocolVersion.MQTTv311 if setting == "3.1.1" else MQTTProtocolVersion.MQTTv5


def version_name(protocol: MQTTProtocolVersion) -> str:
    return "5" if protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"


def falls_back(setting: str, protocol: MQTTProtocolVersion, reason: Any = None, *,
               dropped_before_connack: bool = False) -> bool:
    """Whether to retry with 3.1.1: on ``auto``, after MQTT 5 was refused as an unsupported
    version, or (when the caller counts that) the broker hung up before answering at all."""
    if setting != "auto" or protocol != MQTTProtocolVersion.MQTTv5:
        return False
    return code_of(reason) == UNSUPPORTED_PROTOCOL or dropped_before_connack


def new_client(settings: MqttSettings, *, client_id: str, protocol: MQTTProtocolVersion, tls: bool,
               password: str | None, will: Will | None = None, persistent: bool = False,
               client_class: Callable[..., paho.Client] = paho.Client, tls_hint: str | None = None,
               **extra: Any) -> paho.Client:
    """A client with credentials, TLS and will set; callbacks are the caller's to attach.

    ``persistent`` asks for a session the broker keeps (3.1.1: clean session off; MQTT 5 decides
    at ``connect`` through the session expiry). Unusable TLS files raise ``TelemetryTLSError``."""
    clean = None if protocol == MQTTProtocolVersion.MQTTv5 else not persistent
    client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                          clean_session=clean, reconnect_on_failure=False, **extra)
    if settings.mqtt_username:
        client.username_pw_set(settings.mqtt_username, password)
    if tls:
        try:
            client.tls_set(ca_certs=settings.mqtt_ca_file, certfile=settings.mqtt_cert_file,
                           keyfile=settings.mqtt_key_file, cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TelemetryTLSError(f"cannot use the TLS files: {short(exc)}", hint=tls_hint) from exc
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain,
                        properties=will.properties(protocol))
    return client


def connect(client: paho.Client, host: str, port: int, *, protocol: MQTTProtocolVersion, keepalive: int,
            session_expiry: int = 0, timeout: float | None = None) -> None:
    """Open the connection and send CONNECT (the CONNACK arrives in the loop). A clean start
    unless ``session_expiry`` > 0 (MQTT 5) asks the broker to keep the session. Socket and TLS
    errors propagate as paho raises them; ``reasons.connect_error`` names them."""
    if timeout is not None:
        client.connect_timeout = timeout
    if protocol != MQTTProtocolVersion.MQTTv5:
        client.connect(host, port, keepalive=keepalive)
        return
    props = Properties(PacketTypes.CONNECT)
    if session_expiry:
        props.SessionExpiryInterval = session_expiry
    client.connect(host, port, keepalive=keepalive, clean_start=session_expiry == 0, properties=props)
