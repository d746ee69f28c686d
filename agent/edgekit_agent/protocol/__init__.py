"""The telemetry protocol: MQTT topics, payload types and their JSON Schemas (contract 3.2).

Defined once, here; the central package and third-party subscribers import it from here.
"""

from edgekit_agent.protocol.payloads import (
    EVENT_KINDS,
    SCHEMA_VERSION,
    Event,
    Health,
    LatencyMs,
    ModelRef,
    ProbeState,
    Status,
    event_payload,
    health_payload,
    status_payload,
)
from edgekit_agent.protocol.schemas import load_schema, schema_path
from edgekit_agent.protocol.topics import (
    DEFAULT_ROOT,
    KINDS,
    TopicParts,
    device_topic,
    parse_topic,
    subscription,
)

__all__ = [
    "DEFAULT_ROOT",
    "EVENT_KINDS",
    "KINDS",
    "SCHEMA_VERSION",
    "Event",
    "Health",
    "LatencyMs",
    "ModelRef",
    "ProbeState",
    "Status",
    "TopicParts",
    "device_topic",
    "event_payload",
    "health_payload",
    "load_schema",
    "parse_topic",
    "schema_path",
    "status_payload",
    "subscription",
]
