"""The MQTT adapter of device benchmarks: ask a few devices of a group to time candidate images
beside the model they run, and collect their answers (``edgekit bench --group``).

1. subscribe to the group's retained statuses and the app's bench results; statuses say which
   devices are online, ready, answer benches for the app (``bench``) and of which class
   (``platform``);
2. ``timing.pick_devices`` picks ``per_class`` of each class; each gets a request on its own
   topic (``{root}/{group}/{device}/bench/{app}/request``) with one id;
3. wait, with a deadline, until every device asked has given a final answer (``done``,
   ``failed``, ``busy``, ``rejected``); ``timing.summarize`` folds them.

Why MQTT and not the agent's HTTP API: the agent's port listens on the device for the apps beside
it (127.0.0.1 by default, behind a NetworkPolicy in the cluster), and the fleet has no route to
devices' ports, while every agent already holds a connection to the broker; requests and answers
ride it, under the broker's ACLs (a device may be allowed to read only its own request topic).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from edgekit_agent.mqtt import connect_error
from edgekit_agent.mqtt.connecting import connect, new_client, protocol_for
from edgekit_agent.oci.reference import parse_reference
from edgekit_agent.protocol.topics import bench_request_topic, bench_result_subscription, check_segment

from edgekit.errors import (
    BenchInputError,
    BenchTimeoutError,
    BrokerError,
    CandidateRefusedError,
    ConfigError,
    EdgekitError,
    NoBenchDeviceError,
)
from edgekit.fleet.bench_answers import decode_answer
from edgekit.fleet.decoding import DEFAULT_MAX_PAYLOAD
from edgekit.fleet.settings import FleetSettings
from edgekit.fleet.timing import BenchDevice, BenchSummary, pick_devices, summarize

__all__ = ["GroupBench", "bench_group", "check_candidates", "discover_classes", "raise_for_summary"]

log = logging.getLogger("edgekit.fleet.bench")
FINAL = frozenset({"done", "failed", "busy", "rejected"})
MAX_CANDIDATES = 4  # the agents' default bound (bench_max_candidates)


@dataclass
class GroupBench:
    group: str
    app: str
    candidates: list[str]
    asked: list[BenchDevice]
    summary: BenchSummary
    seen: int = 0               # devices of the group with a status
    request_id: str = ""
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "app": self.app, "candidates": self.candidates, "request": self.request_id,
                "asked": [{"device": d.device, "platform": d.platform} for d in self.asked],
                "devices_seen": self.seen, **self.summary.to_dict(), "answers": self.answers}


def check_candidates(candidates: Sequence[str], *, limit: int = MAX_CANDIDATES) -> list[str]:
    """Pure: candidates as the agents will take them (pinned by digest, at most ``limit``)."""
    if not candidates:
        raise BenchInputError("no candidate image given")
    if len(candidates) > limit:
        raise BenchInputError(f"{len(candidates)} candidates; the agents time at most {limit} at once",
                              hint="split them over several benches")
    out: list[str] = []
    for image in candidates:
        try:
            ref = parse_reference(image)
        except EdgekitError as exc:
            raise BenchInputError(f"candidate {image!r}: {exc.one_line()}") from exc
        if not ref.digest:
            raise BenchInputError(f"candidate {image!r} is not pinned by digest",
                                  hint="name it as repository@sha256:<digest> (edgekit push prints it)")
        out.append(image)
    if len(set(out)) != len(out):
        raise BenchInputError("a candidate is named twice")
    return out


class _Listener:
    def __init__(self, root: str, group: str) -> None:
        self.prefix = f"{root.rstrip('/')}/{group}/"
        self.statuses: dict[str, dict[str, Any]] = {}
        self.last_status = time.monotonic()
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.refused: str | None = None

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            self.refused = str(rc)
        self.connected.set()

    def on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any = None) -> None:
        self.subscribed.set()

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.startswith(self.prefix):
            return
        rest = msg.topic[len(self.prefix):].split("/")
        if len(rest) == 2 and rest[1] == "status":
            if len(msg.payload) > DEFAULT_MAX_PAYLOAD:
                return
            try:
                data = orjson.loads(msg.payload)  # bounded depth: a hostile payload cannot raise past here
            except orjson.JSONDecodeError:
                return
            if isinstance(data, dict):
                self.statuses[rest[0]] = data
                self.last_status = time.monotonic()
        elif len(rest) == 4 and rest[1] == "bench" and rest[3] == "result":
            answer, why = decode_answer(msg.payload)
            # the topic names the device: a payload cannot answer for another one
            self.results.put({**answer, "device": rest[0]} if answer is not None
                             else {"device": rest[0], "ignored": why})


def _read_statuses(client: mqtt.Client, listener: _Listener, discover_s: float) -> dict[str, dict[str, Any]]:
    listener.subscribed.wait(10)
    # retained statuses arrive at once after the SUBACK; a short quiet spell means all are in
    deadline = time.monotonic() + discover_s
    while time.monotonic() < deadline and time.monotonic() - listener.last_status < 0.5:
        time.sleep(0.05)
    return dict(listener.statuses)


def discover_classes(settings: FleetSettings, *, group: str, app: str, discover_s: float = 5.0) -> dict[str, int]:
    """The device classes of the group that answer benches for ``app`` now: platform -> devices."""
    listener = _Listener(settings.topic_root, group)
    client, _url = _connect(settings, listener)
    try:
        client.subscribe(f"{settings.topic_root.rstrip('/')}/{group}/+/status", 1)
        statuses = _read_statuses(client, listener, discover_s)
    finally:
        client.loop_stop()
        client.disconnect()
    return {plat: len(devices) for plat, devices in pick_devices(statuses, app, 1_000_000).items()}


def bench_group(settings: FleetSettings, *, group: str, app: str, candidates: Sequence[str], per_class: int = 2,
                runs: int = 50, warmup: int = 5, timeout: float = 120.0, discover_s: float = 5.0,
                expected_platforms: Sequence[str] = (), classes: Sequence[str] | None = None,
                on_progress: Callable[[str], None] | None = None) -> GroupBench:
    """Ask up to ``per_class`` devices of each class to time ``candidates``; wait up to ``timeout``
    seconds for their answers; ``classes``: only devices of these platforms. Raises
    ``NoBenchDeviceError`` when no device can be asked and ``BenchTimeoutError`` when none answered
    with figures in time."""
    try:
        check_segment("group", group)
        check_segment("app", app)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--group" if "group" in str(exc) else "--app") from exc
    images = check_candidates(candidates)
    progress = on_progress or (lambda _text: None)
    root = settings.topic_root
    listener = _Listener(root, group)
    client, url = _connect(settings, listener)
    request_id = uuid.uuid4().hex[:16]
    try:
        client.subscribe([(f"{root.rstrip('/')}/{group}/+/status", 1),
                          (bench_result_subscription(root, group, app), 1)])
        statuses = _read_statuses(client, listener, discover_s)
        chosen = {plat: devs for plat, devs in pick_devices(statuses, app, per_class).items()
                  if classes is None or plat in classes}
        asked = [d for devices in chosen.values() for d in devices]
        if not asked:
            online = sum(1 for s in statuses.values() if s.get("state") == "online")
            only = f" ({', '.join(classes)})" if classes else ""
            raise NoBenchDeviceError(
                f"no device of group {group!r}{only} answers benches for app {app!r} ({len(statuses)} known, "
                f"{online} online) on {url}",
                hint="check the group and app names, that devices are online, and that their agents run "
                     "this release (status field `bench`)")
        progress(f"asking {len(asked)} device(s): " + ", ".join(f"{d.device} ({d.platform})" for d in asked))
        payload = json.dumps({"v": 1, "id": request_id, "candidates": images, "runs": runs, "warmup": warmup,
                              "max_seconds": max(1.0, timeout - 5.0)}).encode()
        for dev in asked:
            client.publish(bench_request_topic(root, group, dev.device, app), payload, qos=1)
        answers = _collect(listener, request_id, {d.device for d in asked}, time.monotonic() + timeout, progress)
    finally:
        client.loop_stop()
        client.disconnect()
    summary = summarize(asked, answers, images, expected_platforms)
    result = GroupBench(group, app, images, asked, summary, len(statuses), request_id, answers)
    if not summary.figures and not summary.refusals and not summary.rejected:
        raise BenchTimeoutError(
            f"none of the {len(asked)} device(s) asked answered within {timeout:g}s"
            + (f" ({len(summary.busy)} busy with another bench)" if summary.busy else ""),
            hint="raise --timeout, or lower --runs")
    return result


def raise_for_summary(result: GroupBench) -> None:
    """After the figures are shown: one error for what went wrong (refusals first)."""
    s = result.summary
    refused = s.refused_everywhere(result.candidates)
    if refused or s.refusals:
        first = next(r for r in s.refusals if not refused or r.image in refused)
        raise CandidateRefusedError(
            f"{first.device} ({first.platform}) refused {first.image}: {first.error}: {first.detail}",
            hint="sign the candidate with the release key the agents trust (edgekit sign), or push it again")
    if s.rejected and not s.figures:
        device, detail = s.rejected[0]
        raise BenchInputError(f"{device} refused the bench request: {detail}")


def _connect(settings: FleetSettings, listener: _Listener) -> tuple[mqtt.Client, str]:
    password = settings.read_password()
    last: EdgekitError | None = None
    for address in settings.addresses:
        client = new_client(settings, client_id=f"edgekit-bench-{uuid.uuid4().hex[:8]}",
                            protocol=protocol_for(settings.mqtt_protocol), tls=address.tls, password=password)
        client.on_connect = listener.on_connect
        client.on_subscribe = listener.on_subscribe
        client.on_message = listener.on_message
        try:
            connect(client, address.host, address.port, protocol=protocol_for(settings.mqtt_protocol),
                    keepalive=settings.mqtt_keepalive, timeout=10.0)
        except (OSError, ValueError) as exc:
            last = connect_error(exc, address.url)
            continue
        client.loop_start()
        if not listener.connected.wait(10) or listener.refused:
            client.loop_stop()
            last = BrokerError(f"{address.url} refused the connection: {listener.refused or 'no CONNACK'}")
            listener.connected.clear()
            listener.refused = None
            continue
        return client, address.url
    raise last or BrokerError("no broker configured")


def _collect(listener: _Listener, request_id: str, devices: set[str], deadline: float,
             progress: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    answers: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and set(answers) != devices:
        try:
            data = listener.results.get(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            continue
        device = str(data.get("device"))
        if "ignored" in data:
            if device in devices:
                progress(f"{device}: answer ignored: {data['ignored']}")
            continue
        if data.get("id") != request_id or device not in devices:
            continue
        if data.get("state") == "running":
            progress(f"{device}: timing")
        elif data.get("state") in FINAL:
            answers[device] = data
            progress(f"{device}: {data.get('state')} ({len(answers)}/{len(devices)})")
    return answers
