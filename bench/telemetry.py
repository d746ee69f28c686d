"""Benchmarks of fleet telemetry (issue 5).

    .venv/bin/python bench/telemetry.py                       # everything (about 5 minutes)
    .venv/bin/python bench/telemetry.py --devices 1000,10000 --messages 100000 --skip-lag

(a) ingest: the same stream of real health payloads (protocol builders, QoS 1, ~440 bytes) is
    queued by mosquitto for a persistent session, then drained by `mosquitto_sub -q 1` and by a
    `FleetWatcher` (full decoding, staleness, seq tracking, per-group aggregates, history), each
    in its own process pinned to one core (the broker on the other), at 1,000 / 10,000 / 100,000
    distinct devices. The ratio is taken within the same run, on the same stream.
(b) memory per tracked device at 100,000 devices: RSS growth of a process holding the tracker
    after one status and 32 health reports per device (history ring full: steady state).
(c) scaling: 1 vs 2 watcher processes in one MQTT 5 shared subscription draining the same queue.
(d) lag: 10,000 devices at 1 report/s each for --lag-seconds; report age = time applied minus
    the payload's ts (set when it is sent; same clock), so it includes any broker backlog.
(e) `edgekit fleet status` time to first table for 10,000 devices with retained status: the
    command as a user runs it (process start included), `--wait 0`, output to a pipe.

The machine has 2 cores shared with everything else running; the broker, the publisher and the
subscriber(s) compete for them, which is noted next to each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from edgekit_agent.protocol import device_topic, health_payload, status_payload  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgekit.rehearsal.mosquitto import MosquittoBroker  # noqa: E402

console = Console(width=170)
rows: list[tuple[str, str, str, str]] = []
DIGEST = "sha256:" + "3f" * 32
MODEL = {"name": "resnet18", "version": "1.4.0", "digest": DIGEST}
GROUP_COUNT = 10
SUB_CPU, BROKER_CPU = 1, 0


def row(part: str, what: str, value: str, note: str = "") -> None:
    rows.append((part, what, value, note))
    console.log(f"{part} {what}: {value} {note}")


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# --- the stream -------------------------------------------------------------------------------
def _enc_len(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def _utf(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def publish_packet(topic: str, payload: bytes, mid: int, *, qos: int = 1, retain: bool = False) -> bytes:
    var = _utf(topic) + (struct.pack("!H", mid) if qos else b"")
    return bytes([0x30 | (qos << 1) | int(retain)]) + _enc_len(len(var) + len(payload)) + var + payload


def device_name(i: int) -> str:
    return f"edge-{i:06d}"


def group_name(i: int) -> str:
    return f"site-{i % GROUP_COUNT:02d}"


def health_bytes(i: int, seq: int, ts: float) -> tuple[str, bytes]:
    dev, grp = device_name(i), group_name(i)
    p = health_payload(device=dev, group=grp, session=f"{i:08x}-9c1e-4f7a-b3d2-5a1c0e7f{i % 9999:04d}",
                       seq=seq, ts=ts, model=MODEL,  # type: ignore[arg-type]
                       window_s=10.0, inferences=600 + i % 50, errors=i % 3,
                       latency_ms={"p50": 11.5 + i % 7, "p95": 24.25 + i % 13, "p99": 31.0 + i % 17, "max": 58.5},
                       probe={"ok": True, "ts": ts - 30}, rss_mb=212.5, cpu_pct=37.25)
    return device_topic("edgekit/v1", grp, dev, "health"), orjson.dumps(p)


def health_stream(messages: int, devices: int, t0: float) -> tuple[bytes, int]:
    out = bytearray()
    for n in range(messages):
        i = n % devices
        topic, payload = health_bytes(i, n // devices, t0 + n * 1e-4)
        out += publish_packet(topic, payload, n % 65535 + 1)
    return bytes(out), messages


class RawPublisher:
    """A bare MQTT 3.1.1 publisher on a socket: QoS 1, PUBACKs counted by a reader thread, and a
    close that waits for every PUBACK (closing with unread acks would reset the connection and
    lose what the broker had not read yet)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        var = _utf("MQTT") + bytes([4, 2]) + struct.pack("!H", 60)
        body = _utf(f"bench-pub-{uuid.uuid4().hex[:8]}")
        self.sock.sendall(bytes([0x10]) + _enc_len(len(var) + len(body)) + var + body)
        if self.sock.recv(4)[3] != 0:
            raise RuntimeError("publisher refused")
        self.sent = 0
        self._acked_bytes = 0
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 16):
                self._acked_bytes += len(chunk)      # every PUBACK is 4 bytes
        except OSError:
            pass

    def send(self, data: bytes, count: int) -> None:
        self.sock.sendall(data)
        self.sent += count

    def close(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self._acked_bytes < 4 * self.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        self.sock.sendall(b"\xe0\x00")   # DISCONNECT
        self.sock.shutdown(socket.SHUT_WR)
        self._reader.join(10)
        self.sock.close()


# --- child processes ----------------------------------------------------------------------------
def _child(mode: str, **args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, f"_{mode}", json.dumps(args)], stdout=subprocess.PIPE,
                            text=True)


def _result(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {out[-2000:]}")
    return dict(json.loads(lines[-1]))


def child_watch(args: dict[str, Any]) -> None:
    """Drain ``count`` messages with a FleetWatcher (persistent session), or watch for ``duration``."""
    from edgekit.fleet.settings import FleetSettings
    from edgekit.fleet.watching import FleetWatcher

    if args.get("cpu", SUB_CPU) is not None:
        pin(args.get("cpu", SUB_CPU))
    settings = FleetSettings(brokers=(args["url"],), client_id=args["client_id"], session_expiry=3600,
                             shared_group=args.get("shared"), interval=10.0, flood_limit=100_000)
    if args.get("register"):
        FleetWatcher(settings).start().stop()
        print(json.dumps({"ok": True}))
        return
    if args.get("wait_file"):
        while not Path(args["wait_file"]).exists():
            time.sleep(0.001)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    watcher = FleetWatcher(settings).start()
    if "count" in args:
        while watcher.applied < args["count"] and time.perf_counter() - t0 < args.get("timeout", 120):
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
    else:
        worst = {"p50": 0.0, "p99": 0.0, "max": 0.0}
        end = t0 + args["duration"]
        while time.perf_counter() < end:
            time.sleep(1.0)
            age = watcher.info()["report_age_s"]
            for key in worst:
                if age[key] is not None:
                    worst[key] = max(worst[key], age[key])
        elapsed = time.perf_counter() - t0
    info = watcher.info()
    devices = len(watcher.state.devices)
    watcher.stop()
    print(json.dumps({"elapsed": elapsed, "cpu": time.process_time() - cpu0, "applied": info["applied"],
                      "age_worst": locals().get("worst"),
                      "devices": devices, "lag": info["lag_s"], "age": info["report_age_s"],
                      "gaps": info["seq_gaps"], "dropped": info["dropped"]}))


def child_memory(args: dict[str, Any]) -> None:
    """RSS growth of the tracker holding ``devices`` devices with full history rings."""
    import gc

    from edgekit.fleet import Decoder, FleetState, TrackerConfig

    devices, reports = args["devices"], args["reports"]

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()

    decoder = Decoder()
    t0 = 1.8e9
    # Status payloads are decoded inside the measured region (the device and session strings they
    # carry are what the tracker keeps); health reports are decoded before, as their values are
    # copied into the tracker's packed records and the report objects are not kept.
    statuses = []
    healths = []
    for i in range(devices):
        st = status_payload(device=device_name(i), group=group_name(i), seq=0, ts=t0, model=MODEL,  # type: ignore[arg-type]
                            session=f"{i:08x}-9c1e-4f7a-b3d2-5a1c0e7f{i % 9999:04d}", state="online",
                            agent_version="0.1.0", ready=True)
        statuses.append((device_topic("edgekit/v1", group_name(i), device_name(i), "status"), orjson.dumps(st)))
        topic, payload = health_bytes(i, 1, t0)
        healths.append(decoder.decode(topic, payload))
    gc.collect()
    state = FleetState(TrackerConfig(history=reports))
    before = rss()
    for topic, payload in statuses:
        state.apply(decoder.decode(topic, payload), t0)  # type: ignore[arg-type]
    for n in range(reports):
        for r in healths:
            r.seq = n + 1   # type: ignore[union-attr]
            r.ts = t0 + n   # type: ignore[union-attr]
            state.apply(r, t0 + n)  # type: ignore[arg-type]
    gc.collect()
    after = rss()
    assert len(state.devices) == devices
    print(json.dumps({"bytes_per_device": (after - before) / devices, "devices": devices,
                      "reports": reports, "rss_mb": after / 2**20,
                      "object_bytes_per_device": _object_bytes(state) / devices}))


def _object_bytes(state: Any) -> int:
    """Bytes of every distinct object the tracker references (sys.getsizeof, no allocator slack)."""
    seen: set[int] = set()
    total = 0
    stack: list[Any] = [state.devices, state.groups, state._digests, state._digest_ids]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, bool) or (isinstance(obj, int) and -5 <= obj <= 256):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, name) for name in obj.__slots__ if hasattr(obj, name))
    return total


# --- the benchmarks -----------------------------------------------------------------------------
def start_broker(workdir: Path) -> MosquittoBroker:
    broker = MosquittoBroker(workdir, persistence=False, max_queued_messages=0,
                             extra_config="max_inflight_messages 1000\nmax_queued_bytes 0")
    broker.start()
    if broker.pid and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(broker.pid, {BROKER_CPU})
    return broker


def mosquitto_sub_drain(broker: MosquittoBroker, client_id: str, count: int, publish: Any) -> float:
    base = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-c", "-i", client_id, "-q", "1",
            "-t", "edgekit/v1/+/+/+", "-V", "mqttv5", "-x", "3600"]
    subprocess.run([*base, "-E"], check=True, stdout=subprocess.DEVNULL)
    publish()
    t0 = time.perf_counter()
    subprocess.run([*base, "-C", str(count)], check=True, stdout=subprocess.DEVNULL,
                   preexec_fn=lambda: pin(SUB_CPU))
    return time.perf_counter() - t0


def bench_ingest(broker: MosquittoBroker, devices_list: list[int], messages: int, repeats: int) -> None:
    for devices in devices_list:
        count = max(messages, 2 * devices)
        stream = health_stream(count, devices, time.time())

        def publish(stream: tuple[bytes, int] = stream) -> None:
            pub = RawPublisher(broker.port)
            pub.send(*stream)
            pub.close()

        theirs: list[float] = []
        ours: list[float] = []
        cpu: list[float] = []
        tracked = 0
        for rep in range(repeats):   # alternate the two, keep each one's best (least disturbed) run
            theirs.append(count / mosquitto_sub_drain(broker, f"msub-{devices}-{rep}", count, publish))
            cid = f"watch-{devices}-{rep}-{uuid.uuid4().hex[:6]}"
            _result(_child("watch", url=broker.url, client_id=cid, register=True))
            publish()
            res = _result(_child("watch", url=broker.url, client_id=cid, count=count))
            ours.append(res["applied"] / res["elapsed"])
            cpu.append(res["cpu"] / res["applied"] * 1e6)
            tracked = res["devices"]
        row("a ingest", f"{devices:,} devices, {count:,} msgs: mosquitto_sub", f"{max(theirs):,.0f} msg/s",
            f"best of {repeats} ({min(theirs):,.0f}..{max(theirs):,.0f}); QoS 1, drained from a queued "
            "persistent session, pinned to 1 core")
        row("a ingest", f"{devices:,} devices: FleetWatcher", f"{max(ours):,.0f} msg/s",
            f"ratio {max(ours) / max(theirs):.2f}x mosquitto_sub (best of {repeats} each; "
            f"{min(ours):,.0f}..{max(ours):,.0f}); {min(cpu):.1f} µs CPU/msg; {tracked:,} devices tracked")


def bench_memory(devices: int, reports: int) -> None:
    res = _result(subprocess.Popen([sys.executable, __file__, "_memory",
                                    json.dumps({"devices": devices, "reports": reports})],
                                   stdout=subprocess.PIPE, text=True))
    row("b memory", f"per tracked device at {devices:,}", f"{res['bytes_per_device']:,.0f} B",
        f"RSS growth; status + {reports} health reports each (history ring full); "
        f"{res['object_bytes_per_device']:,.0f} B of Python objects by sys.getsizeof")


def _shared_run(broker: MosquittoBroker, n: int, messages: int, stream: tuple[bytes, int]) -> tuple[float, str, float]:
    share = f"share{n}-{uuid.uuid4().hex[:6]}"
    cids = [f"{share}-{k}" for k in range(n)]
    for cid in cids:
        _result(_child("watch", url=broker.url, client_id=cid, shared=share, register=True))
    pub = RawPublisher(broker.port)
    pub.send(*stream)
    pub.close()
    go = Path(tempfile.mkdtemp()) / "go"
    procs = [_child("watch", url=broker.url, client_id=cid, shared=share, cpu=None,
                    count=messages // n - 200 if n > 1 else messages, wait_file=str(go))
             for cid in cids]
    time.sleep(3.0)   # let the children import before the start signal
    go.touch()
    results = [_result(p) for p in procs]
    total = sum(r["applied"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    split = " / ".join(f"{r['applied']:,}" for r in results)
    return total / elapsed, split, sum(r["cpu"] for r in results) / total * 1e6


def bench_shared(broker: MosquittoBroker, messages: int, devices: int, repeats: int) -> None:
    # Nothing pinned here: the scheduler spreads the broker and the watcher(s) over both cores.
    if broker.pid and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(broker.pid, set(range(os.cpu_count() or 1)))
    stream = health_stream(messages, devices, time.time())
    runs: dict[int, list[tuple[float, str, float]]] = {1: [], 2: []}
    for _ in range(repeats):          # alternate, keep each one's best run
        for n in (1, 2):
            runs[n].append(_shared_run(broker, n, messages, stream))
    best = {}
    for n in (1, 2):
        rate, split, cpu_us = max(runs[n])
        best[n] = rate
        rates = [r[0] for r in runs[n]]
        row("c shared", f"{n} process(es), $share subscription", f"{rate:,.0f} msg/s",
            f"best of {repeats} ({min(rates):,.0f}..{max(rates):,.0f}); {messages:,} msgs queued then drained; "
            f"split {split}; watcher CPU {cpu_us:.1f} µs/msg incl. start-up")
    row("c shared", "2 processes vs 1", f"{best[2] / best[1]:.2f}x",
        "best vs best; nothing pinned; the 2 cores also run the broker (and everything else on the machine)")
    if broker.pid and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(broker.pid, {BROKER_CPU})


_TS_MARK = 1111111111.111111   # 17 characters in JSON, like time.time() with 6 decimals
_SEQ_MARK = 9876543            # 7 digits, like the seq numbers 1000001.. sent


def bench_lag(broker: MosquittoBroker, devices: int, seconds: float) -> None:
    # Every second the same devices report once, in 100 batches; the payloads are made up front
    # with fixed-width placeholders for ts and seq, which each batch fills in when it is sent.
    batch = max(1, devices // 100)
    templates: list[tuple[bytes, int]] = []
    for k in range(100):
        data = bytearray()
        members = range(k * batch, min(devices, (k + 1) * batch))
        for n, i in enumerate(members):
            topic, payload = health_bytes(i, _SEQ_MARK, _TS_MARK)
            data += publish_packet(topic, payload, (k * batch + n) % 65535 + 1)
        templates.append((bytes(data), len(members)))
    ts_mark, seq_mark = orjson.dumps(_TS_MARK), orjson.dumps(_SEQ_MARK)
    cid = f"lag-{uuid.uuid4().hex[:6]}"
    proc = _child("watch", url=broker.url, client_id=cid, duration=seconds + 8.0)
    time.sleep(4.0)   # the watcher imports and subscribes
    pub = RawPublisher(broker.port)
    pin(BROKER_CPU)
    start = time.monotonic()
    late = 0.0
    for second in range(int(seconds)):
        seq = orjson.dumps(1_000_001 + second)
        for k, (data, count) in enumerate(templates):
            target = start + second + k / 100
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            late = max(late, -delay)
            ts = f"{time.time():.6f}".encode()
            assert len(ts) == len(ts_mark)
            pub.send(data.replace(ts_mark, ts).replace(seq_mark, seq), count)
    elapsed = time.monotonic() - start
    pub.close()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    res = _result(proc)
    rate = pub.sent / elapsed
    age = res["age_worst"]
    row("d lag", f"{devices:,} devices at 1 report/s for {seconds:.0f}s", f"p50 {age['p50']:.3f}s / p99 "
        f"{age['p99']:.3f}s / max {age['max']:.3f}s",
        f"report age = applied - ts (worst per-second figures over the run); {rate:,.0f} msg/s sent, "
        f"{res['applied']:,} applied, publisher at most {late * 1000:.0f} ms behind schedule")


def bench_status(broker: MosquittoBroker, devices: int) -> None:
    pub = RawPublisher(broker.port)
    t0 = time.time()
    data = bytearray()
    group = "retained"
    for i in range(devices):
        dev = f"ret-{i:06d}"
        p = status_payload(device=dev, group=group, session=f"{i:08x}", seq=0, ts=t0, model=MODEL,  # type: ignore[arg-type]
                           state="online" if i % 50 else "offline", agent_version="0.1.0", ready=True)
        data += publish_packet(device_topic("edgekit/v1", group, dev, "status"), orjson.dumps(p), i % 65535 + 1,
                               retain=True)
    pub.send(bytes(data), devices)
    pub.close()
    edgekit = str(Path(sys.executable).parent / "edgekit")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run([edgekit, "fleet", "status", "--broker", broker.url, "--group", group, "--wait", "0"],
                             capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        assert f"{devices}" in out.stdout, out.stdout
    start = time.perf_counter()
    subprocess.run([edgekit, "fleet", "status", "--help"], capture_output=True, check=True)
    startup = time.perf_counter() - start
    row("e status", f"`edgekit fleet status` for {devices:,} retained devices",
        f"{min(times):.2f}s (median {sorted(times)[1]:.2f}s)",
        f"whole command, --wait 0, piped; of which process start + imports ~{startup:.2f}s")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_watch":
        child_watch(json.loads(sys.argv[2]))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "_memory":
        child_memory(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1000,10000,100000", help="distinct devices for (a)")
    parser.add_argument("--messages", type=int, default=200_000, help="messages per ingest run")
    parser.add_argument("--memory-devices", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=32, help="health reports per device for (b)")
    parser.add_argument("--lag-devices", type=int, default=10_000)
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--status-devices", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each subscriber in (a)")
    parser.add_argument("--skip-lag", action="store_true")
    opts = parser.parse_args()
    console.log(f"cores: {os.cpu_count()}; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(Path(tmp) / "broker")
        try:
            bench_ingest(broker, [int(x) for x in opts.devices.split(",")], opts.messages, opts.repeats)
            bench_memory(opts.memory_devices, opts.history)
            bench_shared(broker, opts.messages, 10_000, opts.repeats)
            if not opts.skip_lag:
                bench_lag(broker, opts.lag_devices, opts.lag_seconds)
            bench_status(broker, opts.status_devices)
        finally:
            broker.stop()
    table = Table(title="fleet telemetry benchmark", show_lines=False)
    for name in ("part", "what", "value", "note"):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
