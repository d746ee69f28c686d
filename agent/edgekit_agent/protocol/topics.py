"""Topic names: ``{root}/{group}/{device}/{kind}`` with kind one of status, health, event."""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

DEFAULT_ROOT: Final = "edgekit/v1"
KINDS: Final = ("status", "health", "event")
Kind = Literal["status", "health", "event"]

# QoS and retain per kind (contract 3.2): status is retained so a new subscriber sees every
# device's birth or death at once; health and events are QoS 1 so a broker queues them.
QOS: Final = {"status": 1, "health": 1, "event": 1}
RETAIN: Final = {"status": True, "health": False, "event": False}

_FORBIDDEN = set("/+#\x00")


class TopicParts(NamedTuple):
    root: str
    group: str
    device: str
    kind: str


def check_segment(name: str, value: str) -> str:
    """A group or device id must be one non-empty topic level without wildcards."""
    if not value or any(ch in _FORBIDDEN for ch in value) or value.startswith("$"):
        raise ValueError(f"{name} {value!r} cannot be used as an MQTT topic level")
    return value


def device_topic(root: str, group: str, device: str, kind: Kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{root.rstrip('/')}/{check_segment('group', group)}/{check_segment('device', device)}/{kind}"


def subscription(
    root: str = DEFAULT_ROOT, group: str | None = None, kind: str = "+", shared_group: str | None = None
) -> str:
    """A subscription filter; ``shared_group`` makes it an MQTT 5 shared subscription."""
    topic = f"{root.rstrip('/')}/{group or '+'}/+/{kind}"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


def parse_topic(topic: str, root: str = DEFAULT_ROOT) -> TopicParts | None:
    """Split a device topic; ``None`` when it is not one of ours."""
    prefix = root.rstrip("/") + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    if len(rest) != 3 or rest[2] not in KINDS or not rest[0] or not rest[1]:
        return None
    return TopicParts(root.rstrip("/"), rest[0], rest[1], rest[2])


# Device benchmarks (``edgekit bench --group``): a command topic per device and app, and the
# agent's answers beside it. Five levels below the root, so the telemetry filters above
# (``{root}/+/+/+``) never receive them. The root's ``v1`` versions them with the telemetry.
BENCH_QOS: Final = 1


def bench_request_topic(root: str, group: str, device: str, app: str) -> str:
    return (f"{root.rstrip('/')}/{check_segment('group', group)}/{check_segment('device', device)}"
            f"/bench/{check_segment('app', app)}/request")


def bench_result_topic(root: str, group: str, device: str, app: str) -> str:
    return (f"{root.rstrip('/')}/{check_segment('group', group)}/{check_segment('device', device)}"
            f"/bench/{check_segment('app', app)}/result")


def bench_result_subscription(root: str, group: str, app: str) -> str:
    """Every device's answers for one group and app."""
    return f"{root.rstrip('/')}/{check_segment('group', group)}/+/bench/{check_segment('app', app)}/result"
