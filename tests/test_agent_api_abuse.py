"""The inference API under abuse, against real ``edgekit-agent serve`` processes: slow headers and
bodies, a connection cap, deep and big JSON, the bearer token. Assertions are about behaviour
(closed, refused, answered, counted), with generous deadlines rather than timings."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.agent import AgentProcess, http, wait_until

Start = Callable[..., AgentProcess]
INFER = "/v2/models/digits/infer"
GOOD = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                               "data": [0.5] * 64}]}).encode()


def _agent(agent_process: Start, folder: Path, **settings: Any) -> AgentProcess:
    return agent_process({"device": "abuse", "model_dir": str(folder), "log_level": "info", **settings},
                         wait="ready")


def _metrics(agent: AgentProcess, headers: dict[str, str] | None = None) -> dict[tuple[str, str], float]:
    status, _, body = http("GET", agent.url + "/metrics", headers=headers)
    assert status == 200, body
    return {(s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def _infer(agent: AgentProcess, body: bytes = GOOD, headers: dict[str, str] | None = None
           ) -> tuple[int, dict[str, Any]]:
    status, _, out = http("POST", agent.url + INFER, body, {"Content-Type": "application/json", **(headers or {})})
    return status, json.loads(out)


def _closed_by_server(sock: socket.socket, drip: bytes, within: float) -> bool:
    """Keep dripping ``drip`` once every 0.2 s; True when the server closes the connection."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            pass
        except OSError:  # reset
            return True
        try:
            sock.sendall(drip)
        except OSError:
            return True
    return False


@contextmanager
def _held(agent: AgentProcess, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections that each sent half a request line and then nothing."""
    socks = [socket.create_connection(("127.0.0.1", agent.port), timeout=10) for _ in range(n)]
    try:
        for s in socks:
            s.sendall(b"GET /v2/hea")
        yield socks
    finally:
        for s in socks:
            s.close()


def test_slow_headers_and_bodies_are_closed_at_their_deadline(agent_process: Start, model_folder: Path) -> None:
    agent = _agent(agent_process, model_folder, header_timeout_s=1, body_timeout_s=1)
    before = _metrics(agent)
    # a byte every 0.2 s never lets a per-read timeout fire; the header deadline does
    with socket.create_connection(("127.0.0.1", agent.port)) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(s, b"X", within=30)
    with socket.create_connection(("127.0.0.1", agent.port)) as s:
        s.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        assert _closed_by_server(s, b" ", within=30)
    after = _metrics(agent)
    key = "edgekit_agent_connections_timed_out_total"
    assert after[(key, "phase=header")] >= before[(key, "phase=header")] + 1
    assert after[(key, "phase=body")] == before[(key, "phase=body")] + 1
    assert _infer(agent)[0] == 200


def test_normal_requests_succeed_while_50_slow_connections_are_held(agent_process: Start,
                                                                    model_folder: Path) -> None:
    agent = _agent(agent_process, model_folder, header_timeout_s=60, max_connections=64)
    with _held(agent, 50):
        for _ in range(20):
            status, doc = _infer(agent)
            assert status == 200, doc
        assert http("GET", agent.url + "/v2/health/ready")[0] == 200
        assert _metrics(agent)[("edgekit_agent_connections_refused_total", "")] == 0


def test_connections_over_the_cap_are_refused_and_counted(agent_process: Start, model_folder: Path) -> None:
    agent = _agent(agent_process, model_folder, header_timeout_s=60, max_connections=3)
    with _held(agent, 3):
        # accepted in order after the held ones: answered 503 at once, then closed
        with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as s:
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
    # the held connections are gone: slots free again
    wait_until(lambda: http("GET", agent.url + "/v2/health/live", timeout=5)[0] == 200, timeout=30)
    assert _metrics(agent)[("edgekit_agent_connections_refused_total", "")] >= 1
    assert _infer(agent)[0] == 200


@pytest.mark.parametrize("bomb", [b"[" * 100_000, b'[{"a":' * 2_000, b'{"inputs":' + b"[" * 40 + b"]" * 40 + b"}"],
                         ids=["100k-brackets", "2k-objects", "41-levels"])
def test_deep_json_gets_400_and_is_counted(agent_process: Start, model_folder: Path, bomb: bytes) -> None:
    agent = _agent(agent_process, model_folder)
    before = _metrics(agent)[("edgekit_agent_requests_rejected_total", "")]
    status, doc = _infer(agent, bomb)
    assert status == 400 and "levels deep, over the limit of 32" in doc["error"], doc
    assert _metrics(agent)[("edgekit_agent_requests_rejected_total", "")] == before + 1
    assert _infer(agent)[0] == 200
    assert "Traceback" not in agent.log() and "RecursionError" not in agent.log()


def _rss(agent: AgentProcess, field: str) -> int:
    assert agent.proc.proc is not None
    for line in Path(f"/proc/{agent.proc.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _reset_peak_rss(agent: AgentProcess) -> int:
    """Reset the process's peak RSS to its current RSS (Linux: clear_refs 5) and return that."""
    assert agent.proc.proc is not None
    Path(f"/proc/{agent.proc.proc.pid}/clear_refs").write_text("5")
    return _rss(agent, "VmHWM")


def test_json_memory_stays_within_a_small_multiple_of_the_body(agent_process: Start, model_folder: Path) -> None:
    # the parser's bound, at a JSON limit raised far above its 1 MiB default
    agent = _agent(agent_process, model_folder, max_json_bytes=16 << 20)
    for _ in range(3):
        assert _infer(agent)[0] == 200
    n = 4 << 20  # elements; "0," is the densest number text: 2 bytes per 4-byte float
    bodies = {
        # counted against the shape in the text, refused before any conversion
        "count mismatch": b'{"inputs":[{"name":"input","shape":[1,1,8,8],"datatype":"FP32","data":['
                          + b"0," * (n - 1) + b"0]}]}",
        # converted (65536 images of 8x8), then refused for the output it asks for; running a batch
        # this big would measure onnxruntime, not the request
        "converted": b'{"inputs":[{"name":"input","shape":[65536,1,8,8],"datatype":"FP32","data":['
                     + b"0," * (n - 1) + b'0]}],"outputs":[{"name":"nope"}]}',
        # strings cost ~50 bytes each in Python: refused by the structure limit
        "strings": b'{"inputs":[{"name":"input","shape":[1,1,8,8],"datatype":"FP32","data":['
                   + b'"a",' * (n // 2 - 1) + b'"a"]}]}',
    }
    expected = {"count mismatch": 400, "converted": 400, "strings": 413}
    for name, body in bodies.items():
        base = _reset_peak_rss(agent)
        status, doc = _infer(agent, body)
        assert status == expected[name], (name, str(doc)[:300])
        grew = _rss(agent, "VmHWM") - base
        # the body itself and its float32 array (2x for "0,"); json.loads + np.asarray took 7x
        assert grew <= 4 * len(body), f"{name}: peak RSS grew {grew / 2**20:.1f} MiB for a " \
                                      f"{len(body) / 2**20:.1f} MiB body"


def test_bearer_token_guards_all_but_the_health_probes(agent_process: Start, model_folder: Path,
                                                       tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-123\n")
    agent = _agent(agent_process, model_folder, api_token_file=str(tmp_path / "token"))
    good = {"Authorization": "Bearer tok-123"}
    assert http("GET", agent.url + "/v2/health/live")[0] == 200
    assert http("GET", agent.url + "/v2/health/ready")[0] == 200
    for headers in ({}, {"Authorization": "Bearer tok-124"}, {"Authorization": "tok-123"},
                    {"Authorization": "Bearer "}):
        for method, path, body in (("GET", "/metrics", None), ("GET", "/v2", None),
                                   ("GET", "/v2/models/digits", None), ("POST", INFER, GOOD)):
            status, resp_headers, out = http(method, agent.url + path, body, headers)
            assert status == 401, (method, path, headers)
            assert resp_headers.get("WWW-Authenticate") == "Bearer"
            assert "bearer token" in json.loads(out)["error"]
    before = _metrics(agent, good)[("edgekit_agent_requests_rejected_total", "")]
    assert _infer(agent, headers={"Authorization": "Bearer nope"})[0] == 401
    assert _metrics(agent, good)[("edgekit_agent_requests_rejected_total", "")] == before + 1
    status, doc = _infer(agent, headers=good)
    assert status == 200 and doc["outputs"][0]["shape"] == [1, 10]
    assert http("GET", agent.url + "/v2/models/digits", headers=good)[0] == 200


def _send_head(agent: AgentProcess, length: int, extra: bytes = b"", headers: dict[str, str] | None = None
               ) -> socket.socket:
    """A POST to /infer declaring ``length`` body bytes, of which only ``extra`` is sent."""
    s = socket.create_connection(("127.0.0.1", agent.port), timeout=30)
    lines = [f"POST {INFER} HTTP/1.1", "Host: x", f"Content-Length: {length}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + extra)
    return s


def _answer(s: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            data.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]):
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_bombs_are_refused_before_their_bodies_arrive(agent_process: Start, model_folder: Path) -> None:
    agent = _agent(agent_process, model_folder)
    before = _metrics(agent)[("edgekit_agent_requests_rejected_total", "")]
    # JSON over max_json_bytes (1 MiB): answered from its Content-Length, nothing sent
    with _send_head(agent, 2 << 20) as s:
        status, doc = _answer(s)
    assert status == 413 and doc["error"] == ("the request's JSON of 2097152 bytes is over the limit of 1048576; "
                                              "send tensors as binary data (Inference-Header-Content-Length)")
    # a binary body whose JSON header accounts for 256 of its 8 MiB: answered after the header alone
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 256}}]}).encode()
    with _send_head(agent, len(head) + (8 << 20), head, {"Inference-Header-Content-Length": str(len(head))}) as s:
        status, doc = _answer(s)
    assert status == 400 and doc["error"] == f"{(8 << 20) - 256} unused bytes after the binary inputs"
    assert _metrics(agent)[("edgekit_agent_requests_rejected_total", "")] == before + 2
    assert _infer(agent)[0] == 200


def test_small_requests_are_answered_while_big_json_waits_for_the_parser(agent_process: Start,
                                                                          model_folder: Path) -> None:
    agent = _agent(agent_process, model_folder)
    # nested lists at the 1 MiB JSON limit: the costliest JSON per byte to parse
    head = b'{"inputs":[{"name":"input","shape":[1,1,8,8],"datatype":"FP32","data":['
    lists = (1 << 20) // 4 - 29
    bomb = head + b"[0]," * (lists - 1) + b"[0]]}]}"
    bombs = [_send_head(agent, len(bomb), bomb) for _ in range(2)]
    try:
        for _ in range(10):
            assert _infer(agent)[0] == 200
        # ... all of them before either bomb, which waits for the parser process, is answered
        for s in bombs:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
            s.setblocking(True)
        for s in bombs:
            status, doc = _answer(s)
            assert status == 413 and "outside flat numeric 'data' arrays" in doc["error"], doc
    finally:
        for s in bombs:
            s.close()


def _with_parser_process(agent: AgentProcess) -> tuple[int, list[int]]:
    """Start the agent's JSON parser process with one big request: the agent's pid and its children."""
    batch = json.dumps({"inputs": [{"name": "input", "shape": [300, 1, 8, 8], "datatype": "FP32",
                                    "data": [0.5] * 19200}]}).encode()
    assert _infer(agent, batch)[0] == 200  # over 16 KiB of JSON: the parser process starts
    assert agent.proc.proc is not None
    pid = agent.proc.proc.pid
    return pid, [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                 for c in (task / "children").read_text().split()]


def test_the_parser_process_goes_when_the_agent_is_killed(agent_process: Start, model_folder: Path) -> None:
    import os
    import signal

    agent = _agent(agent_process, model_folder)
    pid, children = _with_parser_process(agent)
    assert children and agent.proc.proc is not None
    os.kill(pid, signal.SIGKILL)
    agent.proc.proc.wait(30)

    def gone(child: int) -> bool:
        try:
            return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(c) for c in children), timeout=30)


def test_the_parser_process_runs_only_on_an_otherwise_idle_core(agent_process: Start, model_folder: Path) -> None:
    import os

    pid, children = _with_parser_process(_agent(agent_process, model_folder))
    workers = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(workers) == 1, children
    assert os.sched_getscheduler(workers[0]) == os.SCHED_IDLE
    assert os.sched_getscheduler(pid) == os.SCHED_OTHER  # the server itself is not demoted
