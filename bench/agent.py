"""Benchmarks of the on-device agent (issue 4).

    .venv/bin/python bench/agent.py                 # all of it, including a 60 s broker outage
    .venv/bin/python bench/agent.py --outage 0      # skip the outage run

(a) agent-core overhead: ``AgentCore.infer`` vs a bare ``session.run`` on the example digits
    model, same session, telemetry on (real mosquitto, health every second, ticking thread);
    interleaved blocks, median of block means.
(b) the REST API (agent process) for a 1x3x320x320 float32 input: JSON vs the binary tensor
    extension, end to end from a keep-alive client, against a bare ``session.run``.
(c) RSS of an ``edgekit-agent serve`` process vs a bare process that imports onnxruntime and
    holds the same session (both after a few inferences).
(d) spool: append rate (SQLite WAL), replay rate through mosquitto (spooled while offline,
    then drained with PUBACKs), and how long a new agent takes to adopt a full 16 MiB spool that a
    replaced one left in the shared (hostPath) spool.
(e) outage: broker stopped for --outage seconds while the core reports at 1/s; delivered share and order.
(f) abuse: normal JSON inference (digits, batch 1, one keep-alive client) alone, then while another
    process holds 50 slow-header connections (a header line a second; reconnecting when closed) and
    runs 20 bomb clients in parallel, each sending a bomb a second, rotating: 100k ``[``; a flat array
    of the wrong size, an array of strings and nested lists, each at the JSON limit (max_json_bytes
    1 MiB); an 8 MiB JSON body; an 8 MiB binary body whose JSON header declares 256 bytes; a 1 GiB
    Content-Length; all against the same agent (max_request_bytes 8 MiB): throughput and p99 of the
    normal traffic, what the abusers got, and the peak RSS of the agent and of its JSON parser
    process against 2x idle RSS + 2x max_request_bytes.

    .venv/bin/python bench/agent.py --only f     # just the abuse run
    .venv/bin/python bench/agent.py --only f --normal-rate 200   # the same at a steady 200 req/s
    .venv/bin/python bench/agent.py --only f --normal-rate 200 --slow 0 --bomb nested   # one kind alone
    .venv/bin/python bench/agent.py --only f --normal-rate 200 --pin   # the abusers on another CPU
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from edgekit_agent.core import AgentCore  # noqa: E402
from edgekit_agent.publishing import MqttPublisher  # noqa: E402
from edgekit_agent.settings import load_settings  # noqa: E402
from edgekit_agent.spool import SqliteSpool, open_spool  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgekit.rehearsal.mosquitto import MosquittoBroker  # noqa: E402
from edgekit.rehearsal.processes import ManagedProcess, free_port  # noqa: E402
from tests.fixtures.agent import build_model_folder, make_conv320  # noqa: E402
from tests.fixtures.mqtt import MqttRecorder  # noqa: E402

# The benches serve model folders built here, unsigned: their agents run with allow_unsigned.
DIGITS = ROOT / "models" / "digits" / "digits.onnx"
console = Console()
rows: list[tuple[str, str, str, str]] = []


def row(part: str, what: str, value: str, note: str = "") -> None:
    rows.append((part, what, value, note))
    console.log(f"{part} {what}: {value} {note}")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- (a) ------------------------------------------------------------------------------------------
def bench_core_overhead(folder: Path, broker: MosquittoBroker, work: Path, blocks: int, per_block: int) -> None:
    settings = load_settings(overrides={"device": "bench", "group": "bench", "model_dir": str(folder),
                                        "broker_url": broker.url, "spool_dir": str(work / "spool-a"),
                                        "interval": 1.0, "allow_unsigned": True})
    core = AgentCore(settings)
    core.start_telemetry()
    assert core.load(), core.rejected
    assert core.model is not None
    sess = core.model.session.session
    x = np.load(ROOT / "models" / "digits" / "eval.npz")["input"][:1]
    feeds = {"input": x}
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(0.25):
            core.tick()

    t = threading.Thread(target=ticker, daemon=True)
    t.start()
    for _ in range(2000):  # warm up both paths
        sess.run(None, feeds)
        core.infer(feeds)
    bare, agent = [], []
    perf = time.perf_counter
    run, infer = sess.run, core.infer

    def block(fn: Any, *args: Any) -> float:
        t0 = perf()
        for _ in range(per_block):
            fn(*args)
        return (perf() - t0) / per_block

    # Call by call, alternating which goes first: both see the same interference from the rest of a
    # busy machine; medians of the per-call times and of the per-pair differences.
    diffs = []
    for i in range(blocks * per_block):
        if i % 2:
            t0 = perf()
            infer(feeds)
            t1 = perf()
            run(None, feeds)
            t2 = perf()
            agent.append(t1 - t0)
            bare.append(t2 - t1)
        else:
            t0 = perf()
            run(None, feeds)
            t1 = perf()
            infer(feeds)
            t2 = perf()
            bare.append(t1 - t0)
            agent.append(t2 - t1)
        diffs.append(agent[-1] - bare[-1])
    # The wrapper's own cost, without the model's noise: the same calls around a no-op "session".
    def noop(names: Any, feeds: Any) -> list[Any]:
        return []

    real_run, core._run = core._run, noop
    wrap = statistics.median(block(infer, feeds) for _ in range(20))
    plain = statistics.median(block(noop, None, feeds) for _ in range(20))
    core._run = real_run
    stop.set()
    t.join()
    assert isinstance(core.outbox, MqttPublisher)
    sent = core.outbox.counters.acked
    core.shutdown()
    b, a = statistics.median(bare), statistics.median(agent)
    paired = statistics.median(diffs)
    row("a", "bare session.run (digits, batch 1)", f"{b * 1e6:.1f} µs", f"median of {len(bare)} calls")
    row("a", "AgentCore.infer, telemetry on", f"{a * 1e6:.1f} µs",
        f"median; {sent} MQTT messages acked meanwhile")
    row("a", "overhead (measured)", f"{(a / b - 1) * 100:+.2f} %",
        f"median per-pair difference {paired * 1e6:+.2f} µs = {paired / b * 100:+.2f} % (target ≤ 5 %)")
    row("a", "overhead (wrapper cost)", f"{(wrap - plain) * 1e6:.2f} µs/call",
        f"= {(wrap - plain) / b * 100:.2f} % of bare session.run")


# -- (b) + (c) ------------------------------------------------------------------------------------

def _api_ready(port: int) -> bool:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", "/v2/health/ready")
        return c.getresponse().status == 200
    finally:
        c.close()


def _start_agent(folder: Path, work: Path, name: str, broker: MosquittoBroker | None) -> tuple[ManagedProcess, int]:
    port = free_port()
    cfg = {"device": name, "group": "bench", "model_dir": str(folder), "listen_port": port,
           "spool_dir": str(work / f"spool-{name}"), "interval": 1.0, "log_level": "warning",
           "max_request_bytes": 256 << 20, "max_json_bytes": 256 << 20, "allow_unsigned": True}
    if broker is not None:
        cfg["broker_url"] = broker.url
    config = work / f"{name}.json"
    config.write_text(json.dumps(cfg))
    proc = ManagedProcess(name, [sys.executable, "-m", "edgekit_agent", "serve", "--config", str(config)],
                          work / f"{name}.log").start()

    proc.wait_ready(lambda: _api_ready(port), timeout=120)
    return proc, port


def bench_rest(folder: Path, work: Path, broker: MosquittoBroker, n: int) -> None:
    proc, port = _start_agent(folder, work, "rest", broker)
    try:
        x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def json_call() -> np.ndarray[Any, Any]:
            body = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 320, 320], "datatype": "FP32",
                                           "data": x.ravel().tolist()}]}).encode()
            conn.request("POST", "/v2/models/conv320/infer", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            assert resp.status == 200, doc
            return np.array(doc["outputs"][0]["data"], np.float32)

        head = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 320, 320], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}}).encode()

        def binary_call() -> np.ndarray[Any, Any]:
            body = head + x.astype("<f4").tobytes()
            conn.request("POST", "/v2/models/conv320/infer", body,
                         {"Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(head))})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, data[:200]
            k = int(resp.headers["Inference-Header-Content-Length"])
            return np.frombuffer(data[k:], "<f4")

        def bare_call() -> np.ndarray[Any, Any]:
            return np.asarray(sess.run(None, {"image": x})[0]).ravel()

        encode = []
        for _ in range(5):
            t0 = time.perf_counter()
            json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 320, 320], "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}).encode()
            encode.append(time.perf_counter() - t0)
        ref = bare_call()
        for fn in (json_call, binary_call):
            np.testing.assert_allclose(fn(), ref, rtol=1e-5)
        times: dict[str, list[float]] = {"bare": [], "binary": [], "json": []}
        # one path at a time, so each runs in its steady state (JSON churns a lot of memory)
        for name, fn in (("bare", bare_call), ("binary", binary_call), ("json", json_call)):
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        conn.close()
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        best = {k: min(v) * 1000 for k, v in times.items()}
        mb = x.nbytes / 1e6
        row("b", "bare session.run (conv320, 1x3x320x320)", f"{med['bare']:.2f} ms",
            f"median of {n} (min {best['bare']:.2f})")
        row("b", "REST binary tensor extension", f"{med['binary']:.2f} ms",
            f"min {best['binary']:.2f}; {med['binary'] / med['bare']:.1f}x bare; {mb:.2f} MB request body")
        row("b", "REST JSON", f"{med['json']:.2f} ms",
            f"{med['json'] / med['binary']:.1f}x binary; of which client-side encoding "
            f"{statistics.median(encode) * 1000:.0f} ms")
    finally:
        proc.stop()


_BARE = """
import sys, time, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])["input"][:1]
for _ in range(100):
    s.run(None, {"input": x})
print("ready", flush=True)
time.sleep(600)
"""


def bench_rss(folder: Path, work: Path, broker: MosquittoBroker) -> None:
    bare = subprocess.Popen([sys.executable, "-c", _BARE, str(folder / "model.onnx"),
                             str(ROOT / "models" / "digits" / "eval.npz")], stdout=subprocess.PIPE, text=True)
    agent, port = _start_agent(folder, work, "rss", broker)
    try:
        assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                       "data": [0.0] * 64}]}).encode()
        for _ in range(100):
            conn.request("POST", "/v2/models/digits/infer", body)
            conn.getresponse().read()
        conn.close()
        time.sleep(2.5)  # a couple of health reports, spool used
        b, a = _rss_kb(bare.pid) / 1024, _rss_kb(agent.pid) / 1024
        row("c", "RSS bare onnxruntime process (digits session)", f"{b:.1f} MB")
        row("c", "RSS edgekit-agent serve (API + MQTT + spool)", f"{a:.1f} MB",
            f"+{a - b:.1f} MB over bare (target ≤ +25 MB)")
    finally:
        bare.kill()
        bare.wait()
        agent.stop()


# -- (d) ------------------------------------------------------------------------------------------
def bench_spool(broker: MosquittoBroker, work: Path, n: int) -> None:
    payload = json.dumps({"v": 1, "device": "bench-spool", "group": "bench", "session": "x" * 32, "seq": 0,
                          "ts": time.time(), "model": {"name": "digits", "version": "1.0.0", "digest": "sha256:"
                                                       + "0" * 64}, "window_s": 10.0, "inferences": 1234,
                          "errors": 0, "latency_ms": {"p50": 0.1, "p95": 0.2, "p99": 0.3, "max": 0.4},
                          "probe": {"ok": True, "ts": time.time()}, "rss_mb": 80.0, "cpu_pct": 3.0,
                          "replayed": False}).encode()
    spool = SqliteSpool(work / "spool-d", max_bytes=1 << 30)
    topic = "edgekit/v1/bench/bench-spool/health"
    t0 = time.perf_counter()
    for i in range(n):
        spool.append(topic, payload, float(i), replayed=True)
    dt = time.perf_counter() - t0
    row("d", "spool append (SQLite WAL, one commit each)", f"{n / dt:,.0f} msg/s",
        f"{dt / n * 1e6:.0f} µs per {len(payload)}-byte report")
    settings = load_settings(overrides={"device": "bench-spool", "group": "bench", "broker_url": broker.url})
    with MqttRecorder(broker, "edgekit/v1/bench/bench-spool/#") as rec:
        t0 = time.perf_counter()
        pub = MqttPublisher(settings, spool, status=lambda state: (topic.replace("health", "status"), b"{}"))
        pub.start()
        deadline = time.monotonic() + 300
        while spool.stats()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        dt = time.perf_counter() - t0
        rec.wait_for(lambda m: len([x for x in m if x.topic == topic]) >= n, timeout=60)
        got = [x for x in rec.snapshot() if x.topic == topic]
        pub.stop()
    ordered = all(json.loads(m.payload)["replayed"] for m in got)
    row("d", "spool replay through mosquitto (QoS 1, PUBACK, delete)", f"{n / dt:,.0f} msg/s",
        f"{n} spooled reports drained in {dt:.2f} s; received {len(got)}, all marked replayed: {ordered}")
    shared = work / "spool-shared"
    old = open_spool(str(shared), max_bytes=16 << 20, max_age=1e9, instance="rev-old", device="bench-spool")
    while old.stats()[1] + len(topic) + len(payload) + 32 <= 16 << 20:
        old.append(topic, payload, time.time(), replayed=False)
    count = old.stats()[0]
    old.close()
    t0 = time.perf_counter()
    new = open_spool(str(shared), max_bytes=16 << 20, max_age=1e9, instance="rev-new", device="bench-spool")
    dt = time.perf_counter() - t0
    moved, left = new.stats()[0], sorted(p.name for p in (shared / "bench-spool").iterdir())
    new.close()
    row("d", "full 16 MiB spool adopted by the next revision's agent", f"{dt:.2f} s",
        f"{moved} of {count} reports moved in one transaction; directories left: {left}")


# -- (e) ------------------------------------------------------------------------------------------
def bench_outage(folder: Path, work: Path, seconds: float) -> None:
    broker = MosquittoBroker(work / "mqtt-outage").start()
    try:
        rec = MqttRecorder(broker, "edgekit/v1/bench/outage/health", persistent=True)
        settings = load_settings(overrides={"device": "outage", "group": "bench", "model_dir": str(folder),
                                            "broker_url": broker.url, "spool_dir": str(work / "spool-e"),
                                            "interval": 1.0, "reconnect_min": 0.5, "reconnect_max": 4.0,
                                            "allow_unsigned": True})
        core = AgentCore(settings)
        core.start_telemetry()
        core.load()
        stop = threading.Event()

        def ticker() -> None:
            while not stop.wait(0.05):
                core.tick()

        t = threading.Thread(target=ticker, daemon=True)
        t.start()
        time.sleep(3)
        broker.stop()
        time.sleep(seconds)
        made_during = core._seq["health"]
        broker.start()
        time.sleep(8)
        stop.set()
        t.join()
        core.shutdown()
        rec.wait_for(lambda m: len(m) >= core._seq["health"], timeout=30)
        seqs = []
        for m in rec.snapshot():
            s = json.loads(m.payload)["seq"]
            if s not in seqs:
                seqs.append(s)
        made = core._seq["health"]
        rec.close()
        row("e", f"broker outage {seconds:.0f} s at 1 report/s",
            f"{len(seqs)}/{made} delivered ({100 * len(seqs) / made:.0f} %)",
            f"in order: {seqs == sorted(seqs)}; ~{made_during - 3} made while down")
    finally:
        broker.stop()


# -- (f) ------------------------------------------------------------------------------------------
ABUSE_MAX_BYTES = 8 << 20
ABUSE_JSON_BYTES = 1 << 20  # the agent's default max_json_bytes


def _bombs() -> list[tuple[str, bytes, dict[str, str]]]:
    """Each as big as the agent takes before refusing it, and one of each kind it refuses unread."""
    head = b'{"inputs":[{"name":"input","shape":[1,1,8,8],"datatype":"FP32","data":['

    def wide(size: int) -> bytes:
        n = (size - len(head) - 6) // 2
        return head + b"0," * (n - 1) + b"0]}]}"

    n = (ABUSE_JSON_BYTES - len(head) - 8) // 4
    binary_head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                          "parameters": {"binary_data_size": 256}}]}).encode()
    return [("deep", b"[" * 100_000, {}),
            ("wide", wide(ABUSE_JSON_BYTES), {}),
            ("strings", head + b'"a",' * (n - 1) + b'"a"]}]}', {}),
            # the costliest JSON per byte found: nested lists, which json.loads and numpy build in full
            ("nested", head + b"[0]," * (n - 1) + b"[0]]}]}", {}),
            ("big-json", wide(ABUSE_MAX_BYTES), {}),
            ("big-binary", binary_head + bytes(ABUSE_MAX_BYTES - len(binary_head)),
             {"Inference-Header-Content-Length": str(len(binary_head))}),
            ("over-limit", b"", {"Content-Length": str(1 << 30)})]


def _slow_headers(port: int, stop: Any, closed: Any) -> None:
    while not stop.is_set():
        by_server = False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
                s.settimeout(1.0)
                while not stop.is_set():
                    try:
                        if s.recv(4096) == b"":
                            by_server = True
                            break
                    except TimeoutError:
                        pass
                    s.sendall(b"X-Slow: 1\r\n")
        except OSError:
            by_server = True
        if by_server:
            with closed.get_lock():
                closed.value += 1


def _bomber(port: int, stop: Any, index: int, results: Any, started: float, kinds: tuple[str, ...] = ()) -> None:
    bombs = [b for b in _bombs() if not kinds or b[0] in kinds]
    k = index
    while not stop.wait(max(0.0, k - index - (time.monotonic() - started))):  # one a second
        name, body, headers = bombs[k % len(bombs)]
        k += 1
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.putrequest("POST", "/v2/models/digits/infer")
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                conn.putheader(key, value)
            conn.endheaders()
            if body:
                conn.send(body)
            resp = conn.getresponse()
            resp.read()
            results.put((name, str(resp.status)))
            conn.close()
        except OSError as exc:
            results.put((name, type(exc).__name__))


def _abuse(port: int, stop: Any, closed: Any, results: Any, slow: int, bombers: int,
           kinds: tuple[str, ...] = (), cpus: set[int] | None = None) -> None:
    """The abusers, in their own process so that they do not share the normal client's GIL."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    threads = [threading.Thread(target=_slow_headers, args=(port, stop, closed), daemon=True) for _ in range(slow)]
    threads += [threading.Thread(target=_bomber, args=(port, stop, i, results, time.monotonic(), kinds),
                                 daemon=True) for i in range(bombers)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(10)


def _normal_traffic(conn: http.client.HTTPConnection, seconds: float, rate: float = 0.0) -> list[float]:
    """Back-to-back requests (rate 0: as fast as the agent answers), or paced at ``rate`` per second,
    each latency counted from when the request was due (no coordinated omission)."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                   "data": np.random.default_rng(0).random(64).tolist()}]}).encode()
    times: list[float] = []
    start = time.perf_counter()
    end = start + seconds
    while (t0 := time.perf_counter()) < end:
        if rate:
            due = start + len(times) / rate
            if due >= end:
                break
            if due > t0:
                time.sleep(due - t0)
            t0 = due
        conn.request("POST", "/v2/models/digits/infer", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        times.append(time.perf_counter() - t0)
    return times


def _p99(times: list[float]) -> float:
    return statistics.quantiles(times, n=100)[98]


def _proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a connection's thread, gone
            kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _agent_cpu_s(pid: int) -> float:
    """The agent's CPU time with its JSON parser process's."""
    total = _cpu_s(pid)
    for child in _children(pid):
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile
            total += _cpu_s(child)
    return total


def bench_abuse(folder: Path, work: Path, seconds: float, slow: int = 50, bombers: int = 20, rounds: int = 3,
                rate: float = 0.0, settings: dict[str, Any] | None = None, kinds: tuple[str, ...] = (),
                pin: bool = False) -> None:
    """``pin``: the agent and the normal client on the first CPU, the abusers on the others, as if
    the abusers were elsewhere on the network. On loopback the kernel's TCP work for a packet runs
    on the sender's CPU, so this leaves the agent's CPU less of it than a real NIC would."""
    port = free_port()
    cpus = sorted(os.sched_getaffinity(0))
    if pin and len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    own, theirs = ({cpus[0]}, set(cpus[1:])) if pin else (None, None)
    before = os.sched_getaffinity(0)
    if own:
        os.sched_setaffinity(0, own)
    cfg = {"device": "abuse", "group": "bench", "model_dir": str(folder), "listen_port": port,
           "spool_dir": str(work / "spool-f"), "log_level": "warning", "max_request_bytes": ABUSE_MAX_BYTES,
           "max_json_bytes": ABUSE_JSON_BYTES, "allow_unsigned": True, **(settings or {})}
    (work / "abuse.json").write_text(json.dumps(cfg))
    agent = ManagedProcess("abuse", [sys.executable, "-m", "edgekit_agent", "serve", "--config",
                                     str(work / "abuse.json")], work / "abuse.log").start()  # inherits ``own``
    try:
        agent.wait_ready(lambda: _api_ready(port), timeout=120)
        assert agent.proc is not None
        pid = agent.proc.pid
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # one keep-alive client
        _normal_traffic(conn, 2.0)  # warm up
        idle_kb = _proc_kb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS from here on
        ctx = multiprocessing.get_context("fork")
        closed, results = ctx.Value("i", 0), ctx.Queue()
        alone: list[float] = []
        abused: list[float] = []
        # alternating rounds, so that both conditions see the same share of a busy machine's noise
        cpu = {"alone": 0.0, "abused": 0.0, "abusers": 0.0}
        for _ in range(rounds):
            c0 = _agent_cpu_s(pid)
            alone += _normal_traffic(conn, seconds / rounds, rate)
            cpu["alone"] += _agent_cpu_s(pid) - c0
            stop = ctx.Event()
            abuser = ctx.Process(target=_abuse, args=(port, stop, closed, results, slow, bombers, kinds, theirs),
                                 daemon=True)
            abuser.start()
            time.sleep(2.0)  # let the slow connections and the first bombs land
            assert abuser.pid is not None
            c0, a0 = _agent_cpu_s(pid), _cpu_s(abuser.pid)
            abused += _normal_traffic(conn, seconds / rounds, rate)
            cpu["abused"] += _agent_cpu_s(pid) - c0
            cpu["abusers"] += _cpu_s(abuser.pid) - a0
            stop.set()
            abuser.join(30)
        conn.close()
        peak_kb = _proc_kb(pid, "VmHWM")
        helper_kb = sum(_proc_kb(child, "VmHWM") for child in _children(pid))
        answers: dict[tuple[str, str], int] = {}
        while not results.empty():
            key = results.get()
            answers[key] = answers.get(key, 0) + 1
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/metrics")
        counters = {line.split()[0]: line.split()[1] for line in c.getresponse().read().decode().splitlines()
                    if line.startswith(("edgekit_agent_connections", "edgekit_agent_requests_"))}
        c.close()
    finally:
        agent.stop()
        os.sched_setaffinity(0, before)
    t_alone, t_abused = len(alone) / seconds, len(abused) / seconds
    p_alone, p_abused = _p99(alone) * 1000, _p99(abused) * 1000
    paced = f", paced at {rate:g} req/s" if rate else ", back to back"
    row("f", f"normal JSON inference alone (digits, batch 1{paced})", f"{t_alone:,.0f} req/s",
        f"p99 {p_alone:.2f} ms, median {statistics.median(alone) * 1000:.2f} ms; "
        f"{seconds:.0f} s in {rounds} rounds")
    which = f" ({', '.join(kinds)} only)" if kinds else ""
    if pin:
        which += f"; agent + client on CPU {sorted(own or ())}, abusers on {sorted(theirs or ())}"
    row("f", f"... under {slow} slow-header connections + {bombers} bombs/s{which}", f"{t_abused:,.0f} req/s",
        f"{t_abused / t_alone * 100:.0f} % of alone (target ≥ 90 %); p99 {p_abused:.2f} ms = "
        f"{p_abused / p_alone:.2f}x alone (target ≤ 2x); median {statistics.median(abused) * 1000:.2f} ms")
    row("f", "agent CPU (with its parser process) alone / under abuse", f"{cpu['alone'] / seconds * 100:.0f} % / "
        f"{cpu['abused'] / seconds * 100:.0f} % of a core",
        f"{(cpu['abused'] / len(abused) - cpu['alone'] / len(alone)) / (cpu['alone'] / len(alone)) * 100:+.0f} % "
        f"CPU per normal request; the abusers' own process: {cpu['abusers'] / seconds * 100:.0f} % of a core")
    row("f", "slow-header connections closed by the server", f"{closed.value}",
        "header_timeout_s 5; each reconnects at once")
    row("f", "bomb answers", ", ".join(f"{n} {s}: {k}" for (n, s), k in sorted(answers.items())))
    row("f", "agent counters after", ", ".join(f"{k.removeprefix('edgekit_agent_')} {v}"
                                               for k, v in counters.items()))
    limit_kb = 2 * idle_kb + 2 * ABUSE_MAX_BYTES // 1024
    row("f", "agent RSS idle / peak under abuse", f"{idle_kb / 1024:.0f} / {peak_kb / 1024:.0f} MiB",
        f"+ its JSON parser process's peak {helper_kb / 1024:.0f} MiB = {(peak_kb + helper_kb) / 1024:.0f} MiB; "
        f"limit 2x idle + 2x max_request_bytes = {limit_kb / 1024:.0f} MiB: "
        f"{'within' if peak_kb + helper_kb <= limit_kb else 'OVER'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--per-block", type=int, default=2000)
    parser.add_argument("--rest-n", type=int, default=30)
    parser.add_argument("--spool-n", type=int, default=5000)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds; 0 skips (e)")
    parser.add_argument("--abuse-seconds", type=float, default=10.0,
                        help="length of each (f) phase, normal traffic alone and under abuse")
    parser.add_argument("--slow", type=int, default=50, help="(f) slow-header connections")
    parser.add_argument("--bombers", type=int, default=20, help="(f) bomb clients, one bomb a second each")
    parser.add_argument("--normal-rate", type=float, default=0.0, metavar="R",
                        help="(f) pace the normal traffic at R requests/s (default 0: back to back, which "
                             "saturates the agent, so on 2 cores the abusers' own CPU shows as lost throughput)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="(f) alternations of alone and under abuse (more: less sensitive to a busy machine)")
    parser.add_argument("--only", default="abcdef", help="which sections to run, e.g. 'f'")
    parser.add_argument("--bomb", action="append", default=[], choices=[b[0] for b in _bombs()],
                        help="(f) send only this kind of bomb (repeatable; default: all, rotating)")
    parser.add_argument("--pin", action="store_true",
                        help="(f) the agent and the normal client on the first CPU, the abusers on the others")
    parser.add_argument("--agent-setting", action="append", default=[], metavar="KEY=JSON",
                        help="(f) an agent setting to compare, e.g. intra_op_spinning=true (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-agent-") as tmp:
        work = Path(tmp)
        digits = build_model_folder(DIGITS, work / "digits")
        conv = build_model_folder(make_conv320(work / "conv320.onnx"), work / "conv320-folder", name="conv320")
        broker = MosquittoBroker(work / "mqtt").start()
        try:
            if "a" in args.only:
                bench_core_overhead(digits, broker, work, args.blocks, args.per_block)
            if "b" in args.only:
                bench_rest(conv, work, broker, args.rest_n)
            if "c" in args.only:
                bench_rss(digits, work, broker)
            if "d" in args.only:
                bench_spool(broker, work, args.spool_n)
            if "e" in args.only and args.outage > 0:
                bench_outage(digits, work, args.outage)
            if "f" in args.only:
                bench_abuse(digits, work, args.abuse_seconds, args.slow, args.bombers, args.rounds,
                            rate=args.normal_rate, kinds=tuple(args.bomb), pin=args.pin,
                            settings={k: json.loads(v) for k, v in (a.split("=", 1) for a in args.agent_setting)})
        finally:
            broker.stop()
    table = Table(title="edgekit-agent benchmarks")
    for col in ("", "measure", "value", "notes"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)


if __name__ == "__main__":
    main()
