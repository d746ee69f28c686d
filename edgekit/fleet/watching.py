"""``FleetWatcher``: the MQTT adapter (paho-mqtt 2.x) that keeps a ``FleetState`` current.

Two threads, so that the thread reading the socket never waits for anything else:

- the **network thread** runs paho's loop, (re)connects with backoff (rotating through the
  configured brokers), subscribes, and only appends each message to a queue (with its arrival
  time): no decoding, no locks, no passes over the fleet;
- the **apply thread** takes messages off the queue in batches and feeds them through the pure
  ``Ingestor`` under the state lock, which readers (``view()``, ``snapshot()``) take too, so every
  answer is consistent. It measures its own lag (arrival -> applied) and the age of live reports
  (applied - the report's ``ts``, which includes any broker backlog).

On (re)connect it subscribes again and the broker resends every retained status, which rebuilds
device status after a broker restart. Statuses are taken at QoS 0 so that the retained burst is not
cut to the broker's QoS 1 queue (stock mosquitto: 1,020 of 2,000), health and events at QoS 1;
``completeness()`` says whether the picture holds every device (``edgekit.fleet.completeness``).
MQTT 5 is tried first; ``auto`` falls back to 3.1.1 when the broker does not speak 5. With
``shared_group``, health and event topics are subscribed through the MQTT 5 shared subscription
``$share/NAME/...`` (the broker hands each message to one member), while status stays a plain
subscription, because brokers do not send retained messages to shared ones.

Client set-up, the 5 -> 3.1.1 fallback, backoff and reason codes come from ``edgekit_agent.mqtt``
(shared with the agent's publisher). Messages are read by its ``ReadAheadClient``: a read-ahead
buffer and a lean PUBLISH reader, the one place that touches paho's private methods.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from edgekit_agent.mqtt import Backoff, connack_error, connect_error, suback_error
from edgekit_agent.mqtt.connecting import connect, falls_back, new_client, protocol_for, version_name
from edgekit_agent.mqtt.readahead import ReadAheadClient, check_paho
from edgekit_agent.mqtt.reasons import short
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

from edgekit.errors import BrokerError, BrokerProtocolError, TelemetryError, TelemetryTLSError
from edgekit.fleet.completeness import (
    DROPPED_TOPIC,
    PASS_END_TOPIC,
    PASS_START_TOPIC,
    Completeness,
    SyncProgress,
    assess,
    counter_value,
    recheck,
)
from edgekit.fleet.decoding import Decoder
from edgekit.fleet.ingesting import Ingestor, RateLimitedLog
from edgekit.fleet.settings import BrokerAddress, FleetSettings
from edgekit.fleet.state import FleetState
from edgekit.fleet.views import FleetSnapshot, FleetView

__all__ = ["FleetWatcher"]

LOG: Final = logging.getLogger("edgekit.fleet.watcher")
_BATCH: Final = 2048
_IDLE_SLEEP: Final = 0.005
_HANDOFF_S: Final = 0.02    # queued longer than this: the apply thread takes over
_SAMPLE_EVERY: Final = 16
_SAMPLES: Final = 2048
_TLS_HINT: Final = "check --ca-file / --cert-file / --key-file"
_ids = itertools.count()


class _Samples:
    """Recent samples of a duration, for p50/p99/max."""

    def __init__(self) -> None:
        self._values: deque[float] = deque(maxlen=_SAMPLES)

    def add(self, value: float) -> None:
        self._values.append(value)

    def summary(self) -> dict[str, float | None]:
        values = sorted(self._values)
        if not values:
            return {"p50": None, "p99": None, "max": None}
        n = len(values)
        return {"p50": round(values[n // 2], 4), "p99": round(values[min(n - 1, int(n * 0.99))], 4),
                "max": round(values[-1], 4)}


class FleetWatcher:
    """Subscribe to the fleet's telemetry and keep a ``FleetState`` current (thread-safe).

        with FleetWatcher(settings).start() as watcher:
            watcher.wait_settled()
            stats = watcher.view().window(devices, since, digest)
    """

    def __init__(self, settings: FleetSettings, *, state: FleetState | None = None,
                 on_applied: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.state = state or FleetState(settings.tracker())
        self.decoder = Decoder(settings.topic_root, max_payload=settings.max_payload)
        self.ingestor = Ingestor(self.state, self.decoder, log=RateLimitedLog(LOG))
        self.lock = threading.Lock()
        self._on_applied = on_applied
        self._addresses = settings.addresses
        # (topic, payload, retained, arrival): plain values, so the paho message is freed at once
        # (a backlog of live MQTTMessage objects makes the cyclic GC rescan them, over and over).
        self._queue: deque[tuple[str, bytes | bytearray, bool, float]] = deque()
        self._stop = threading.Event()
        self._ready = threading.Event()          # connected and subscribed (at least once)
        self._connected = False
        self._fatal: TelemetryError | None = None
        self._protocol = protocol_for(settings.mqtt_protocol)
        self._client_id = settings.client_id or f"edgekit-fleet-{socket.gethostname()}-{os.getpid()}-{next(_ids)}"
        self._net: threading.Thread | None = None
        self._apply: threading.Thread | None = None
        self._broker: BrokerAddress | None = None
        self._pending_sub: set[int] = set()
        self._connack: Any = None
        self._refused = 0                          # connection attempts that failed at the socket
        self._sampled = 0
        self._sync = SyncProgress()
        self._quiet_mids: set[int] = set()         # subscriptions that are no part of start()
        self._sync_mid: int | None = None
        self._status_topic = ""
        self._client: mqtt.Client | None = None
        self._sync_received = 0                  # messages received when the marker arrived
        # figures
        self.connects = 0
        self.disconnects = 0
        self.received = 0
        self.dropped = 0
        self.applied = 0
        self.last_error: str | None = None
        self.subscribed_at: float | None = None   # wall time of the latest SUBACK
        self._last_arrival = 0.0                   # monotonic time of the latest message
        self._lag = _Samples()
        self._age = _Samples()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> FleetWatcher:
        """Start both threads; wait until connected and subscribed, or raise why not."""
        if self._net is not None:
            return self
        check_paho()   # the read-ahead client's paho range: fail here, not in the network thread
        self.settings.check_files()
        self._apply = threading.Thread(target=self._apply_loop, name="edgekit-fleet-apply", daemon=True)
        self._net = threading.Thread(target=self._network_loop, name="edgekit-fleet-mqtt", daemon=True)
        self._apply.start()
        self._net.start()
        limit = timeout if timeout is not None else self.settings.connect_timeout * len(self._addresses) + 2
        deadline = time.monotonic() + limit
        while not self._ready.is_set():
            if self._fatal is not None:
                self.stop()
                raise self._fatal
            if time.monotonic() > deadline or self._refused >= len(self._addresses):
                error = self.last_error or "no answer"
                self.stop()
                raise BrokerError(f"cannot reach {', '.join(a.url for a in self._addresses)}: {error}",
                                             hint="check --broker and that the broker runs")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._net, self._apply):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> FleetWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reading ----------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    def view(self) -> FleetView:
        return FleetView(self.state, self.lock, self.info, self.completeness)

    def snapshot(self, *, group: str | None = None, with_devices: bool = False) -> FleetSnapshot:
        return self.view().snapshot(group=group, with_devices=with_devices)

    def info(self) -> dict[str, Any]:
        """The watcher's own health: connection, queue, lag, seq gaps."""
        return {
            "broker": self._broker.url if self._broker else None,
            "connected": self._connected,
            "protocol": version_name(self._protocol),
            "shared_group": self.settings.shared_group,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "last_error": self.last_error,
            "received": self.received,
            "queued": len(self._queue),
            "dropped": self.dropped,
            "applied": self.applied,
            "lag_s": self._lag.summary(),
            "report_age_s": self._age.summary(),
            "seq_gaps": self.state.counters.seq_gaps,
        }

    def completeness(self) -> Completeness:
        """Whether the picture holds every device (False while the retained burst is not in)."""
        return assess(self._sync, local_dropped=self.dropped)

    @property
    def rechecking(self) -> bool:
        """The broker's drop counter rose during the burst and the statuses are being taken again."""
        return self._sync.rechecks > 0 and not self._sync.verdict

    def wait_verified(self, timeout: float) -> Completeness:
        """Wait (at most ``timeout``) until the broker's counters confirm or refute completeness."""
        deadline = time.monotonic() + timeout
        while True:
            found, sync = self.completeness(), self._sync
            final = sync.verdict or sync.sys_denied or (sync.synced and sync.drop_base is None)
            if final or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def wait_settled(self, timeout: float = 30.0) -> bool:
        """Wait until the retained burst after subscribing is in (the marker subscription's SUBACK
        arrived after it) and applied. False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self._ready.is_set() and self._sync.synced
                    and self.applied + self.dropped >= self._sync_received):
                return True
            time.sleep(0.02)
        return False

    def wait_drained(self, timeout: float = 30.0) -> bool:
        """Wait until every message received so far is applied."""
        deadline = time.monotonic() + timeout
        while self.applied + self.dropped < self.received:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def wait_for(self, predicate: Callable[[FleetView], bool], timeout: float = 30.0,
                 poll: float = 0.05) -> bool:
        view = self.view()
        deadline = time.monotonic() + timeout
        while True:
            if predicate(view):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)

    # -- applying ------------------------------------------------------------------------------
    def _drain(self, limit: int) -> int:
        """Apply up to ``limit`` queued messages; the caller holds ``self.lock``."""
        queue = self._queue
        ingest = self.ingestor.ingest
        offset = time.time() - time.monotonic()
        count = 0
        oldest = None
        sampled = self._sampled
        try:
            while queue and count < limit:
                topic, payload, retained, arrived = queue.popleft()
                if oldest is None:
                    oldest = arrived
                outcome = ingest(topic, payload, arrived + offset, retained)
                count += 1
                sampled += 1
                if sampled >= _SAMPLE_EVERY and outcome == "latest":
                    sampled = 0
                    report = self.ingestor.last
                    if report is not None and not getattr(report, "replayed", False):
                        self._age.add(max(0.0, time.time() - report.ts))
        except Exception:  # never let one bad message stop the tracker
            LOG.exception("fleet watcher: unexpected error applying a message (continuing)")
        self._sampled = sampled
        if oldest is not None:
            self._lag.add(time.monotonic() - oldest)
        self.applied += count
        return count

    def _apply_inline(self) -> None:
        """Network thread: apply what arrived, unless a reader holds the lock (then leave it to
        the apply thread, so reading the socket never waits for a reader)."""
        if self._queue and self.lock.acquire(blocking=False):
            try:
                while self._queue:
                    self._drain(_BATCH)
            finally:
                self.lock.release()
            self._notify()

    def _apply_loop(self) -> None:
        """Apply thread: picks up messages that waited (the network thread found the lock taken)."""
        queue = self._queue
        while not self._stop.is_set() or queue:
            try:
                waited = time.monotonic() - queue[0][3]
            except IndexError:     # empty (or emptied by the network thread just now)
                waited = 0.0
            if waited < _HANDOFF_S:
                time.sleep(_IDLE_SLEEP)
                continue
            with self.lock:
                self._drain(_BATCH)
            self._notify()

    def _notify(self) -> None:
        if self._on_applied is not None:
            with contextlib.suppress(Exception):
                self._on_applied(self.applied)

    # -- the network thread -----------------------------------------------------------------------
    def _network_loop(self) -> None:
        index = 0
        backoff = Backoff(self.settings.reconnect_min, self.settings.reconnect_max)
        fell_back = False
        while not self._stop.is_set():
            address = self._addresses[index % len(self._addresses)]
            try:
                client = self._make_client(address)
                self._connack = None
                self._broker = address
                self._connect(client, address)
            except TelemetryError as exc:
                self._fail(exc)
                if self._stop.is_set():
                    return
            except OSError as exc:
                error = connect_error(exc, address.url, tls_hint=_TLS_HINT)
                if isinstance(error, TelemetryTLSError):
                    self._fail(error)
                    if self._stop.is_set():
                        return
                else:
                    self.last_error = short(exc) if len(self._addresses) == 1 else f"{address.url}: {short(exc)}"
                    self._refused += 1
                    LOG.debug("connect to %s failed: %s", address.url, exc)
            except Exception as exc:  # a bug must not end the thread silently: log, back off, retry
                LOG.exception("fleet watcher: unexpected error connecting to %s", address.url)
                self.last_error = f"{address.url}: {short(exc)}"
            else:
                try:
                    ended_before_connack = self._run(client)
                except Exception as exc:
                    LOG.exception("fleet watcher: unexpected error in the MQTT loop (reconnecting)")
                    self.last_error = f"{address.url}: {short(exc)}"
                    self._connected = False
                    ended_before_connack = False
                if (not fell_back and self.connects == 0
                        and falls_back(self.settings.mqtt_protocol, self._protocol, self._connack,
                                       dropped_before_connack=ended_before_connack)):
                    # A broker that only speaks 3.1.1 refuses (CONNACK 0x01, which paho reads as
                    # "unsupported protocol version") or drops a version-5 CONNECT.
                    LOG.info("%s does not take MQTT 5; falling back to 3.1.1", address.url)
                    self._protocol = MQTTProtocolVersion.MQTTv311
                    fell_back = True
                    self._stop.wait(0.05)
                    continue
                if self._connack is not None and not self._connack.is_failure:
                    backoff.reset()
            if self._stop.is_set():
                break
            index += 1 if len(self._addresses) > 1 else 0
            self._stop.wait(backoff.next())

    def _fail(self, exc: TelemetryError) -> None:
        self.last_error = exc.message
        if not self._ready.is_set():
            self._fatal = exc          # start() raises it
            self._stop.set()
        else:
            LOG.warning("fleet watcher: %s (retrying)", exc.one_line())

    def _make_client(self, address: BrokerAddress) -> mqtt.Client:
        s = self.settings
        client = new_client(s, client_id=self._client_id, protocol=self._protocol, tls=address.tls,
                            password=s.read_password(), persistent=s.session_expiry > 0,
                            client_class=ReadAheadClient, tls_hint=_TLS_HINT, sink=self._on_publish)
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _connect(self, client: mqtt.Client, address: BrokerAddress) -> None:
        s = self.settings
        connect(client, address.host, address.port, protocol=self._protocol, keepalive=s.mqtt_keepalive,
                session_expiry=s.session_expiry, timeout=s.connect_timeout)

    def _run(self, client: mqtt.Client) -> bool:
        """Run paho's loop until disconnected or stopped; True when it ended before a CONNACK."""
        started = time.monotonic()
        while not self._stop.is_set():
            rc = client.loop(timeout=0.1)
            self._apply_inline()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if self._connack is None and time.monotonic() - started > self.settings.connect_timeout:
                self.last_error = "no CONNACK in time"
                break
            if self._fatal is not None:
                break
        ended_early = self._connack is None
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.05)
        self._connected = False
        return ended_early

    # paho callbacks (network thread) ----------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connack = reason
        url = self._broker.url if self._broker else "?"
        if reason.is_failure:
            error = connack_error(reason, url, version=self.settings.mqtt_protocol,
                                  auth_hint="check --username / --password-file or the client certificate")
            if isinstance(error, BrokerProtocolError):
                self.last_error = f"{url}: {reason}"
                if self.settings.mqtt_protocol != "auto":
                    self._fail(error)
            elif isinstance(error, BrokerError):
                self.last_error = error.message
            else:
                self._fail(error)
            return
        self._connected = True
        self.connects += 1
        self.last_error = None
        s = self.settings
        root = s.topic_root.rstrip("/")
        group = s.group or "+"
        share = f"$share/{s.shared_group}/" if s.shared_group else ""
        # Status at QoS 0: the retained burst then bypasses the broker's QoS 1 queue (see
        # edgekit.fleet.completeness); a reconnect resends every retained status anyway.
        self._status_topic = f"{root}/{group}/+/status"
        topics = [(self._status_topic, 0),
                  (f"{share}{root}/{group}/+/health", 1),
                  (f"{share}{root}/{group}/+/event", 1)]
        self._sync = SyncProgress()
        self._client = client
        # Three SUBSCRIBE packets, answered in order: the broker's drop counter before the burst,
        # the fleet, then a marker whose SUBACK follows the whole burst (and which brings the
        # $SYS updates that close the drop count).
        self._quiet_mids.clear()
        self._subscribe(client, [(DROPPED_TOPIC, 0)], pending=False)
        self._subscribe(client, topics, pending=True)
        self._sync_mid = self._subscribe(client, [(PASS_START_TOPIC, 0), (PASS_END_TOPIC, 0)], pending=False)
        if getattr(flags, "session_present", False):
            # The broker kept our session (and subscriptions); it may deliver a backlog before the
            # SUBACK, so do not make start() wait for it.
            self._mark_subscribed()

    def _subscribe(self, client: mqtt.Client, topics: list[tuple[str, int]], *, pending: bool) -> int | None:
        rc, mid = client.subscribe(topics)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return None
        if pending:
            self._pending_sub.add(mid)
        else:
            self._quiet_mids.add(mid)
        return mid

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        denied = [r for r in reasons if getattr(r, "is_failure", False)]
        if mid in self._quiet_mids:   # $SYS may be hidden by the ACL: that is allowed
            self._quiet_mids.discard(mid)
            self._sync.sys_denied = self._sync.sys_denied or bool(denied)
            if mid == self._sync_mid:
                self._sync_received = self.received
                self._sync.synced = True
            return
        self._pending_sub.discard(mid)
        if denied:
            self._fail(suback_error(denied[0], self._broker.url if self._broker else "the broker",
                                    hint="the broker ACL must let this user read the topic root"))
            return
        self._mark_subscribed()

    def _mark_subscribed(self) -> None:
        self.subscribed_at = time.time()
        self._ready.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._connected:
            self.disconnects += 1
        self._connected = False
        if reason is not None and getattr(reason, "is_failure", False):
            self.last_error = f"disconnected: {reason}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # paho's own path (QoS 2, or a packet the lean reader leaves to paho)
        self._on_publish(msg.topic, msg.payload, bool(msg.retain))

    def _on_publish(self, topic: str, payload: bytes | bytearray, retained: bool) -> None:
        if topic.startswith("$SYS/"):
            self._on_sys(topic, payload, retained)
            return
        arrived = time.monotonic()
        self.received += 1
        if retained and not self._sync.synced and topic.endswith("/status"):
            self._sync.statuses += 1
        if len(self._queue) >= self.settings.max_queue:
            self.dropped += 1
            return
        self._queue.append((topic, payload, retained, arrived))

    def _on_sys(self, topic: str, payload: bytes | bytearray, retained: bool) -> None:
        """The broker's counters (network thread): see ``edgekit.fleet.completeness``."""
        sync = self._sync
        if topic == DROPPED_TOPIC:
            if retained and not sync.synced and sync.drop_base is None:
                sync.drop_base = counter_value(payload)      # its value before the fleet subscription
            elif sync.tick and not sync.verdict and not retained:
                sync.drop_seen = counter_value(payload)
        elif retained or not sync.synced:
            return                                           # an update from before the marker
        elif topic == PASS_START_TOPIC:
            sync.tick = True
        elif topic == PASS_END_TOPIC and sync.tick and not sync.verdict:
            sync.verdict = True
            again = recheck(sync)
            if again is not None and self._client is not None:
                # The counter rose, maybe from other clients' drops: have the statuses sent once
                # more, now, against this fresh value.
                self._sync = again
                self._subscribe(self._client, [(self._status_topic, 0)], pending=False)
                self._sync_mid = self._subscribe(self._client, [(PASS_START_TOPIC, 0), (PASS_END_TOPIC, 0)],
                                                 pending=False)
