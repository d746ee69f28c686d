"""``Will``: the message the broker publishes for us when we vanish without a DISCONNECT."""

from __future__ import annotations

from dataclasses import dataclass

from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["Will"]


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    content_type: str | None = "application/json"   # MQTT 5 only; JSON payloads are UTF-8 text

    def properties(self, protocol: MQTTProtocolVersion) -> Properties | None:
        if protocol != MQTTProtocolVersion.MQTTv5 or self.content_type is None:
            return None
        props = Properties(PacketTypes.WILLMESSAGE)
        props.ContentType = self.content_type
        props.PayloadFormatIndicator = 1
        return props
