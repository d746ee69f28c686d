"""The subscriber's fast path: paho's client with a read-ahead socket and a lean PUBLISH reader.

paho's reader makes three ``recv`` calls and one ``select`` per packet and builds an
``MQTTMessage`` with MQTT 5 ``Properties`` for each; that is most of its per-message cost. This
client overrides three *private* paho methods (``_create_socket``, ``_handle_publish``, and calls
``_packet_queue``) and reads ``_in_packet``, ``_sock`` and ``_protocol``. Private code can change in
any paho release, so it is confined to this module, the package pins paho to ``PAHO_RANGE``
(pyproject.toml), ``tests/test_mqtt_seam.py`` checks that range and the seams' signatures, and
constructing the client outside the range raises ``PahoVersionError`` instead of misreading packets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import paho.mqtt as paho_mqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["PAHO_RANGE", "PahoVersionError", "ReadAheadClient", "check_paho"]

PAHO_RANGE: Final = ((2, 2), (2, 3))   # tested: from the first, below the second (major, minor)
_PUBACK: Final = 0x40
_CHUNK: Final = 262_144

Sink = Callable[[str, "bytes | bytearray", bool], None]


class PahoVersionError(RuntimeError):
    """The installed paho-mqtt is outside the range the private overrides were written for."""


def check_paho(version: str | None = None) -> None:
    """Raise ``PahoVersionError`` unless ``version`` (default: the installed paho) is in ``PAHO_RANGE``."""
    found = version if version is not None else str(getattr(paho_mqtt, "__version__", "unknown"))
    try:
        major_minor = tuple(int(p) for p in found.split(".")[:2])
    except ValueError:
        major_minor = ()
    lo, hi = PAHO_RANGE
    if not lo <= major_minor < hi:
        raise PahoVersionError(
            f"edgekit_agent.mqtt.readahead overrides private paho-mqtt methods tested on "
            f">={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}; found paho-mqtt {found}. Install a paho-mqtt in that "
            "range (as pyproject.toml pins it), or re-check the overrides and widen PAHO_RANGE.")


class _ReadAhead:
    """A socket wrapper that reads big chunks and serves paho's small reads from memory."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        pos = self._pos
        avail = len(self._buf) - pos
        if avail <= 0:
            self._buf = self._sock.recv(_CHUNK)   # BlockingIOError / SSLWantRead propagate to paho
            pos = self._pos = 0
            avail = len(self._buf)
            if avail == 0:
                return b""
        if n >= avail:
            self._pos = len(self._buf)
            return self._buf[pos:] if pos else self._buf
        self._pos = pos + n
        return self._buf[pos:pos + n]

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return self.buffered() + inner

    def send(self, data: bytes | bytearray) -> int:
        return int(self._sock.send(data))

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._sock.getpeercert(binary_form)


class ReadAheadClient(paho.Client):
    """paho's client with a read-ahead socket and a lean path for incoming QoS 0/1 PUBLISH packets.

    The lean path hands (topic, payload, retained) straight to ``sink`` -- no ``MQTTMessage``, no
    MQTT 5 ``Properties`` object, no topic matcher -- and batches the PUBACKs of one read into a
    single write. QoS 2 and odd packets go through paho's own code (and ``on_message``).
    """

    def __init__(self, *args: Any, sink: Sink | None = None, **kwargs: Any) -> None:
        check_paho()
        super().__init__(*args, **kwargs)
        self._sink = sink
        self._acks = bytearray()

    def _create_socket(self) -> Any:
        return _ReadAhead(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock = self._sock
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, _ReadAhead) and sock.buffered():
            before = sock.buffered()
            rc = super().loop_read(max_packets)
            if sock.buffered() >= before:
                break  # an incomplete packet: wait for the socket
            sock = self._sock
        if self._acks and self._sock is not None:
            acks = bytes(self._acks)
            self._acks.clear()
            self._packet_queue(_PUBACK, acks, 0, 0)
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        sink = self._sink
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if sink is None or qos == 2:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        n = len(packet)
        if n < 2:
            return super()._handle_publish()
        pos = 2 + ((packet[0] << 8) | packet[1])
        topic = packet[2:pos]
        mid: bytes | bytearray = b""
        if qos:
            mid = packet[pos:pos + 2]
            pos += 2
        if self._protocol == paho.MQTTv5:
            # Skip the properties (message expiry and the like: nothing the tracker uses).
            length, mult = 0, 1
            while True:
                if pos >= n or mult > 0x200000:
                    return super()._handle_publish()
                byte = packet[pos]
                pos += 1
                length += (byte & 0x7F) * mult
                mult <<= 7
                if not byte & 0x80:
                    break
            pos += length
        if pos > n or not topic or len(mid) != qos * 2:
            return super()._handle_publish()
        sink(topic.decode("utf-8", "replace"), packet[pos:], bool(header & 0x01))
        if qos:
            self._acks += b"\x40\x02" + mid
        return MQTTErrorCode.MQTT_ERR_SUCCESS
