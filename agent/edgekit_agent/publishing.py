"""The MQTT adapter: one connection per agent, fed from the spool, with backoff, will and fallback.

Built on ``edgekit_agent.mqtt`` (client set-up, will, fallback, backoff, reason codes -- shared
with the fleet watcher). Each connection attempt uses a fresh paho ``Client``, so
no message queued inside paho survives a disconnect: the spool is the only outbox, and what was
not acknowledged is sent again from there, oldest first.

- Last will: a retained ``offline`` status on the device's ``status`` topic; the retained
  ``online`` birth follows every successful connect (then the spool is drained).
- MQTT 5 first (message expiry, content type, PUBACK reason codes that reveal ACL denials);
  when the broker answers "unsupported protocol version" the agent speaks 3.1.1 from then on.
- Reconnect with exponential backoff and jitter (``reconnect_min`` .. ``reconnect_max``).
- Credentials refused: a one-line error, then at most ``auth_retry_limit`` attempts in total,
  then the publisher stays in the ``rejected`` state (the agent keeps serving and spooling).
- A publish the broker denies (MQTT 5 PUBACK "Not authorized") is dropped from the spool, counted
  and reported through ``on_problem``; it would never be accepted on retry.

Thread model: one thread runs paho's ``loop`` and reconnects. paho calls ``on_publish`` while
holding its own message lock, so callbacks only record what happened; the loop thread acts on it
afterwards. ``put`` may be called from any thread.

Commands: ``commands`` maps topics to handlers (the device bench request topic). They are
subscribed at QoS 1 at every connect (each connection is a clean session), and a message that
arrives is queued by paho's callback and handed to its handler by the loop thread, which must
therefore return at once (the bench starts its own worker).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgekit_agent import safejson
from edgekit_agent.errors import TelemetryError
from edgekit_agent.mqtt import AUTH_CODES, Backoff
from edgekit_agent.mqtt.connecting import connect, falls_back, new_client, protocol_for, version_name
from edgekit_agent.mqtt.reasons import code_of
from edgekit_agent.mqtt.will import Will
from edgekit_agent.settings import AgentSettings
from edgekit_agent.spool import Spool, SpoolEntry

log = logging.getLogger("edgekit_agent")

_WINDOW = 32  # unacknowledged publishes in flight


@dataclass
class PublisherCounters:
    connects: int = 0
    connect_failures: int = 0
    auth_failures: int = 0
    published: int = 0
    acked: int = 0
    denied: int = 0
    replayed: int = 0


def mark_replayed(payload: bytes) -> bytes:
    data = safejson.loads(payload)
    data["replayed"] = True
    return json.dumps(data, separators=(",", ":")).encode()


def default_client_id(settings: AgentSettings) -> str:
    """``edgekit-agent-<device>``, plus ``-<spool_instance>`` when the agent has one (the revision,
    on Kubernetes). While a wave replaces a pod, the old revision's agent (still draining its spool)
    and the new one run side by side on the node; with one id between them the broker would close
    each one's connection whenever the other connected. An agent of the same revision that starts
    again (a container restart) still takes its predecessor's stale connection over."""
    base = f"edgekit-agent-{settings.device}"
    return f"{base}-{settings.spool_instance}" if settings.spool_instance else base


class MqttPublisher:
    """Sends spooled telemetry to one broker; see the module docstring."""

    def __init__(self, settings: AgentSettings, spool: Spool, *,
                 status: Callable[[str], tuple[str, bytes]],
                 on_problem: Callable[[str, str, dict[str, Any]], None] | None = None,
                 client_id: str | None = None, rng: random.Random | None = None,
                 commands: Mapping[str, Callable[[bytes], object]] | None = None) -> None:
        self.settings = settings
        self._commands = dict(commands or {})
        self._received: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=64)
        self.spool = spool
        self._status = status  # state -> (topic, payload); called for birth, will and offline
        self._on_problem = on_problem
        self.client_id = client_id or default_client_id(settings)
        self._backoff = Backoff(settings.reconnect_min, settings.reconnect_max, rng)
        self.counters = PublisherCounters()
        self.state = "idle"
        self.last_error: str | None = None
        self.protocol = protocol_for(settings.mqtt_protocol)
        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pump_lock = threading.Lock()
        self._inflight: dict[int, SpoolEntry] = {}
        self._cursor = 0
        self._acks: collections.deque[tuple[int, int]] = collections.deque()
        self._connack: ReasonCode | None = None
        self._lost = False
        self._stopping = False
        self._status_mids: set[int] = set()
        # Held while a status is published and its mid recorded, and while acks are matched: else
        # a PUBACK handled in between leaves the mid waiting forever (and ``flush`` with it).
        self._status_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._password = settings.read_password()
        self._last_logged: dict[str, float] = {}

    # -- public API --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> MqttPublisher:
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.settings.device}", daemon=True)
        self._thread.start()
        return self

    def put(self, topic: str, payload: bytes, created: float) -> None:
        """Spool a message (marked replayed when we are offline) and send it if we can."""
        self.spool.append(topic, payload, created, replayed=not self.connected)
        if self.connected:
            self._pump()

    def publish_status(self) -> None:
        """Publish the current status now (retained); only when connected, never spooled."""
        client = self._client
        if client is not None and self.connected:
            self._publish_status(client, "online")

    def _publish_status(self, client: paho.Client, state: str) -> int:
        topic, payload = self._status(state)
        with self._status_lock:
            info = client.publish(topic, payload, qos=1, retain=True, properties=self._props(False))
            self._status_mids.add(info.mid)
        return int(info.mid)

    def pending(self) -> int:
        return self.spool.stats()[0]

    def flush(self, timeout: float) -> bool:
        """Wait until everything spooled has been acknowledged (``False`` on timeout or offline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending() == 0 and not self._status_mids:
                return True
            if not self.connected:
                return False
            time.sleep(0.02)
        return False

    def retry(self) -> None:
        """Leave the ``rejected`` state and try again (e.g. after new credentials were mounted)."""
        self.counters.auth_failures = 0
        self._password = self.settings.read_password()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful: drain the spool (up to ``timeout``), publish the retained offline status,
        DISCONNECT cleanly. Takes at most ``timeout`` + 6 s."""
        client = self._client
        if client is not None and self.connected:
            self.flush(timeout)
            with contextlib.suppress(Exception):
                mid = self._publish_status(client, "offline")
                deadline = time.monotonic() + 2.0
                while mid in self._status_mids and self.connected and time.monotonic() < deadline:
                    time.sleep(0.01)
            # The loop thread must still be running to write the DISCONNECT packet.
            self._stopping = True
            with contextlib.suppress(Exception):
                client.disconnect()
            deadline = time.monotonic() + 1.0
            while self.connected and time.monotonic() < deadline:
                time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(3.0)  # one ``loop(timeout=0.5)`` pass notices ``_stop``
        self.state = "stopped"

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would (the broker sends the will)."""
        client = self._client
        self._stop.set()
        self._wake.set()
        if client is not None:
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._thread is not None:
            self._thread.join(5)
        self.state = "stopped"

    # -- connection loop ---------------------------------------------------------------------
    def _props(self, expiring: bool) -> Properties | None:
        if self.protocol != MQTTProtocolVersion.MQTTv5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.PayloadFormatIndicator = 1
        if expiring and self.settings.message_expiry:
            props.MessageExpiryInterval = self.settings.message_expiry
        return props

    def _new_client(self) -> paho.Client:
        topic, payload = self._status("will")
        client = new_client(self.settings, client_id=self.client_id, protocol=self.protocol,
                            tls=self.settings.broker_tls, password=self._password, will=Will(topic, payload))
        client.max_inflight_messages_set(_WINDOW)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self._connack = rc

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._lost = True

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        # Called under paho's message lock: record only (see the module docstring).
        self._acks.append((mid, rc.value if rc is not None else 0))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # Called from paho's loop: record only; ``_process_commands`` hands it over.
        self._received.append((message.topic, bytes(message.payload)))

    def _process_commands(self) -> None:
        while self._received:
            topic, payload = self._received.popleft()
            handler = self._commands.get(topic)
            if handler is None:
                continue
            try:
                handler(payload)
            except Exception:  # a command must never stop telemetry
                log.exception("mqtt: handling a message on %s failed", topic)

    def _log(self, key: str, level: int, msg: str, *args: Any) -> None:
        """Log at most once per 30 s per key (a broker down for hours must not flood the log)."""
        now = time.monotonic()
        if now - self._last_logged.get(key, -1e9) >= 30:
            self._last_logged[key] = now
            log.log(level, msg, *args)

    def _run(self) -> None:
        while not self._stop.is_set() and not self._stopping:
            if self.state == "rejected":
                self._wake.wait()
                self._wake.clear()
                if self._stop.is_set():
                    break
                self.state = "connecting"
            outcome = self._session()
            if self._stop.is_set():
                break
            if outcome == "retry-now":
                continue
            if outcome == "lost":  # we were connected: start the backoff from the bottom again
                self._backoff.reset()
            if outcome == "rejected":
                self.state = "rejected"
                continue
            delay = self._backoff.next()
            self.state = "backoff"
            self._wake.wait(delay)
            self._wake.clear()

    def _session(self) -> str:
        """One connection: connect, wait for CONNACK, run until it drops. Returns what happened."""
        s = self.settings
        self.state = "connecting"
        self._connack = None
        self._lost = False
        self._acks.clear()
        try:
            client = self._new_client()
        except TelemetryError as exc:   # unusable TLS files: retrying later may find good ones
            self.counters.connect_failures += 1
            self.last_error = exc.one_line()
            self._log("tls", logging.ERROR, "mqtt: %s", self.last_error)
            return "failed"
        try:
            connect(client, s.broker_host, s.broker_port, protocol=self.protocol, keepalive=s.mqtt_keepalive)
        except (OSError, ValueError) as exc:
            self.counters.connect_failures += 1
            self.last_error = f"cannot reach {s.broker_url}: {exc}"
            self._log("connect", logging.WARNING, "mqtt: %s; will retry with backoff", self.last_error)
            return "failed"
        self._client = client
        deadline = time.monotonic() + max(10.0, s.mqtt_keepalive)
        try:
            while not self._stop.is_set():
                rc = client.loop(timeout=0.5)
                if self._connack is not None and not self.connected:
                    verdict = self._handle_connack(self._connack)
                    if verdict != "connected":
                        return verdict
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._lost:
                    if self._stopping:
                        self._process_acks()
                        return "stopped"
                    if self.connected:
                        self.last_error = f"connection to {s.broker_url} lost ({paho.error_string(rc)})"
                        log.warning("mqtt: %s; spooling until it is back", self.last_error)
                    return "lost" if self.connected else "failed"
                if not self.connected and time.monotonic() > deadline:
                    self.last_error = f"no CONNACK from {s.broker_url}"
                    return "failed"
                if self.connected:
                    self._process_acks()
                    self._pump()
                    self._process_commands()
            return "stopped"
        finally:
            was_connected = self.connected
            self._connected.clear()
            with self._pump_lock:
                self._inflight.clear()
                self._cursor = 0
                self.spool.sent_through = 0
            with self._status_lock:
                self._status_mids.clear()
            if was_connected:
                # Whatever is still spooled was not sent when it was made: it is replayed now.
                self.spool.mark_replayed()
            if self._stop.is_set():
                self._process_acks()
            with contextlib.suppress(Exception):
                if not self._stop.is_set():
                    sock = client.socket()
                    if sock is not None:
                        sock.close()

    def _handle_connack(self, rc: ReasonCode) -> str:
        s = self.settings
        if not rc.is_failure:
            self.counters.connects += 1
            self.counters.auth_failures = 0
            self.state = "connected"
            self.last_error = None
            log.info("mqtt: connected to %s (MQTT %s)", s.broker_url, version_name(self.protocol))
            self._connected.set()
            client = self._client
            for topic in self._commands:
                if client is not None:
                    client.subscribe(topic, qos=1)
            self.publish_status()
            self._pump()
            return "connected"
        self.counters.connect_failures += 1
        if falls_back(s.mqtt_protocol, self.protocol, rc):
            log.info("mqtt: %s does not speak MQTT 5; falling back to 3.1.1", s.broker_url)
            self.protocol = MQTTProtocolVersion.MQTTv311
            return "retry-now"
        if code_of(rc) in AUTH_CODES:
            self.counters.auth_failures += 1
            self.last_error = (f"broker {s.broker_url} refused the connection: {rc} "
                               f"(user {s.mqtt_username or '<none>'})")
            left = s.auth_retry_limit - self.counters.auth_failures
            if left <= 0:
                log.error("mqtt: %s; giving up after %d attempts (telemetry stays spooled; fix the "
                          "credentials and restart the agent)", self.last_error, self.counters.auth_failures)
                if self._on_problem:
                    self._on_problem("broker_rejected", self.last_error,
                                     {"reason": str(rc), "attempts": self.counters.auth_failures})
                return "rejected"
            log.error("mqtt: %s; %d attempt(s) left", self.last_error, left)
            return "failed"
        self.last_error = f"broker {s.broker_url} refused the connection: {rc}"
        log.warning("mqtt: %s", self.last_error)
        return "failed"

    def _process_acks(self) -> None:
        done: list[int] = []
        while self._acks:
            mid, code = self._acks.popleft()
            with self._status_lock:
                was_status = mid in self._status_mids
                self._status_mids.discard(mid)
            if was_status:
                continue
            with self._pump_lock:
                entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            done.append(entry.id)
            if code >= 0x80:
                self.counters.denied += 1
                text = f"broker denied publishing to {entry.topic} (reason {code})"
                self._log(f"deny:{entry.topic}", logging.ERROR,
                          "mqtt: %s; dropping it (check that the device id matches the MQTT user)", text)
                if self._on_problem:
                    self._on_problem("publish_denied", text, {"topic": entry.topic, "reason_code": code})
            else:
                self.counters.acked += 1
        if done:
            self.spool.delete(done)

    def _pump(self) -> None:
        """Publish spooled entries in order, keeping at most ``_WINDOW`` unacknowledged."""
        with self._pump_lock:
            client = self._client
            if client is None or not self.connected:
                return
            room = _WINDOW - len(self._inflight)
            if room <= 0:
                return
            for entry in self.spool.peek(self._cursor, room):
                payload = mark_replayed(entry.payload) if entry.replayed else entry.payload
                info = client.publish(entry.topic, payload, qos=1, retain=False, properties=self._props(True))
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                    break
                self._inflight[info.mid] = entry
                self._cursor = entry.id
                self.spool.sent_through = entry.id
                self.counters.published += 1
                if entry.replayed:
                    self.counters.replayed += 1
