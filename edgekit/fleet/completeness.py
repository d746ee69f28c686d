"""Whether the watcher's picture of the fleet holds every device: the rules, as pure functions.

Why a picture can be partial: on subscribing, the broker sends every retained status at once. A
broker caps what it keeps for one client (mosquitto: ``max_inflight_messages`` in flight plus
``max_queued_messages``/``max_queued_bytes`` queued) and silently drops the rest: with stock
mosquitto (20 + 1000) a QoS 1 subscription to 2,000 retained statuses receives 1,020. So the
watcher takes the statuses at QoS 0 (mosquitto hands them straight to the socket, outside the
QoS 1 queue; a status is retained, so a later reconnect resends whatever a dropped connection
lost) and checks the result three ways:

1. **The burst is in.** The watcher subscribes in three packets: the broker's drop counter
   (``$SYS/broker/publish/messages/dropped``), the fleet's topics, then a marker subscription.
   mosquitto answers SUBSCRIBE packets in order and writes the retained messages of one before
   it reads the next, so the marker's SUBACK arrives after every status it sent (MQTT does not
   promise this ordering; on other brokers the marker only bounds the wait).
2. **This subscriber dropped nothing** (its apply queue, ``max_queue``).
3. **The broker dropped nothing** while it sent the burst: its drop counter from before the
   fleet subscription (the retained copy) equals its value in the first ``$SYS`` update after
   the marker (mosquitto publishes ``uptime`` first and ``bytes/sent`` last in each update, and
   a counter only when it changed). The counter is broker-wide and its retained copy may be up
   to one ``sys_interval`` old, so drops of other clients can read as ours. So a rise is
   checked again (``RECHECKS`` time): right at the end of that update (a fresh base), the
   watcher subscribes to the statuses once more, the broker resends them all, and the next update
   after a new marker decides. Until then, and when drops show again, the picture is
   incomplete: that errs on the safe side.

Where the broker does not publish the counter (another broker, an ACL that hides ``$SYS``,
``sys_interval 0``) the picture is complete but not ``verified``. Until the first ``$SYS`` update
after the marker (``sys_interval``, 10 s by default) it is complete and not yet verified.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

__all__ = ["DROPPED_TOPIC", "PASS_END_TOPIC", "PASS_START_TOPIC", "RECHECKS", "Completeness", "SyncProgress",
           "assess", "counter_value", "recheck"]

DROPPED_TOPIC: Final = "$SYS/broker/publish/messages/dropped"
PASS_START_TOPIC: Final = "$SYS/broker/uptime"       # the first topic of each $SYS update
PASS_END_TOPIC: Final = "$SYS/broker/bytes/sent"     # the last one (changes at every update we receive)
RECHECKS: Final = 1


@dataclass(frozen=True)
class Completeness:
    """Whether the watcher's picture holds every device (see the module docstring).

    - ``complete``: no sign of loss, and the retained burst is in; False: do not judge the fleet.
    - ``verified``: the broker's drop counter confirms nothing was dropped.
    - ``reason``: why it is incomplete or unverified (None when complete and verified).
    - ``statuses``: retained statuses received in the latest burst.
    - ``broker_dropped``: messages the broker dropped (any client's) while it sent the burst.
    - ``local_dropped``: messages this subscriber dropped (apply queue full).
    """

    complete: bool
    verified: bool
    reason: str | None
    statuses: int
    broker_dropped: int | None = None
    local_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for people."""
        if self.complete and self.verified:
            return f"complete ({self.statuses} retained statuses; the broker dropped none)"
        what = "complete, unverified" if self.complete else "INCOMPLETE"
        return f"{what}: {self.reason}"


@dataclass
class SyncProgress:
    """What the network thread saw of one subscription (reset at every connection)."""

    synced: bool = False                 # the marker's SUBACK arrived
    statuses: int = 0                    # retained statuses before the marker
    drop_base: int | None = None         # the broker's drop counter before the fleet subscription
    drop_seen: int | None = None         # its latest value in the update after the marker
    tick: bool = False                   # a $SYS update started after the marker
    verdict: bool = False                # that update ended: drop_seen is final
    sys_denied: bool = False
    rechecks: int = 0                    # bursts checked again after the counter rose
    suspect: int = 0                     # what the counter rose by in the previous check

    def dropped(self) -> int | None:
        """What the broker's counter rose by over the burst (None until the verdict)."""
        if not self.verdict or self.drop_base is None:
            return None
        return max(0, (self.drop_seen if self.drop_seen is not None else self.drop_base) - self.drop_base)


def recheck(progress: SyncProgress) -> SyncProgress | None:
    """The progress of a second look at the burst, when the counter rose and looks remain; the
    base is the counter's value in the update that just ended (the freshest there is)."""
    dropped = progress.dropped()
    if not dropped or progress.rechecks >= RECHECKS:
        return None
    base = progress.drop_seen if progress.drop_seen is not None else progress.drop_base
    return SyncProgress(drop_base=base, rechecks=progress.rechecks + 1, suspect=dropped,
                        sys_denied=progress.sys_denied)


def counter_value(payload: bytes | bytearray) -> int | None:
    try:
        return int(bytes(payload).split()[0])
    except (ValueError, IndexError):
        return None


def assess(progress: SyncProgress, *, local_dropped: int) -> Completeness:
    p = progress
    if p.rechecks and not p.verdict:
        return Completeness(False, False, f"the broker dropped {p.suspect} messages while it sent the retained "
                                          f"statuses; checking again", p.statuses, p.suspect, local_dropped)
    if not p.synced:
        return Completeness(False, False, "the retained status burst is not in yet", p.statuses,
                            local_dropped=local_dropped)
    if local_dropped:
        return Completeness(False, False, f"this subscriber dropped {local_dropped} messages (its apply "
                                          f"queue was full; raise max_queue)", p.statuses,
                            local_dropped=local_dropped)
    dropped = p.dropped()
    if dropped:
        looks = f", {p.rechecks + 1} times" if p.rechecks else ""
        return Completeness(False, False, f"the broker dropped {dropped} messages while it sent the "
                                          f"{p.statuses} retained statuses received{looks} (its queue limits: "
                                          f"max_queued_messages / max_queued_bytes)", p.statuses, dropped)
    if dropped == 0:
        return Completeness(True, True, None, p.statuses, 0)
    if p.drop_base is None or p.sys_denied:
        why = "the broker does not publish its drop counter ($SYS/broker/publish/messages/dropped)"
    else:
        why = "waiting for the broker's next $SYS update"
    return Completeness(True, False, why, p.statuses)
