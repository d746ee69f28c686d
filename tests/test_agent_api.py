"""The local inference API (Open Inference Protocol v2 REST subset) and /metrics, in process."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from edgekit_agent.core import AgentCore
from edgekit_agent.serving import HEADER_LENGTH, InferenceServer
from edgekit_agent.settings import load_settings

from tests.fixtures.agent import http

X = np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def api(digits_folder: Path) -> Iterator[tuple[AgentCore, str]]:
    settings = load_settings(overrides={"device": "api-test", "model_dir": str(digits_folder), "listen_port": 0,
                                        "max_request_bytes": 1 << 20, "allow_unsigned": True})
    core = AgentCore(settings)
    assert core.load()
    server = InferenceServer(core).start()
    yield core, server.url
    server.stop()


@pytest.fixture(scope="module")
def expected(digits_folder: Path) -> np.ndarray[Any, Any]:
    sess = ort.InferenceSession(str(digits_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": X})[0])


def post(url: str, doc: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None,
         path: str = "/v2/models/digits/infer") -> tuple[int, dict[str, str], bytes]:
    body = raw if raw is not None else json.dumps(doc).encode()
    return http("POST", url + path, body, {"Content-Type": "application/json", **(headers or {})})


def test_health_and_metadata(api: tuple[AgentCore, str]) -> None:
    _, url = api
    assert http("GET", url + "/v2/health/live")[0] == 200
    status, _, body = http("GET", url + "/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    assert "binary_tensor_data" in json.loads(http("GET", url + "/v2")[2])["extensions"]
    status, _, body = http("GET", url + "/v2/models/digits")
    meta = json.loads(body)
    assert status == 200 and meta["name"] == "digits" and meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert http("GET", url + "/v2/models/digits/versions/1.0.0/ready")[0] == 200


def test_infer_json(api: tuple[AgentCore, str], expected: np.ndarray[Any, Any]) -> None:
    _, url = api
    status, _, body = post(url, {"id": "r1", "inputs": [
        {"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": X.ravel().tolist()}]})
    assert status == 200, body
    doc = json.loads(body)
    assert doc["id"] == "r1" and doc["model_name"] == "digits" and doc["model_version"] == "1.0.0"
    (out,) = doc["outputs"]
    assert out["name"] == "logits" and out["shape"] == [2, 10] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(2, 10), expected, rtol=1e-6)
    # nested (row-major) data is accepted too
    status, _, body = post(url, {"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                                             "data": X.tolist()}]})
    assert status == 200


def test_infer_binary_in_and_out(api: tuple[AgentCore, str], expected: np.ndarray[Any, Any]) -> None:
    _, url = api
    head = json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                                   "parameters": {"binary_data_size": X.nbytes}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    status, headers, body = post(url, raw=head + X.astype("<f4").tobytes(),
                                 headers={HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"})
    assert status == 200, body
    n = int(headers[HEADER_LENGTH])
    doc = json.loads(body[:n])
    (out,) = doc["outputs"]
    assert out["parameters"]["binary_data_size"] == 2 * 10 * 4 and "data" not in out
    got = np.frombuffer(body[n:], "<f4").reshape(out["shape"])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_binary_output_for_json_input(api: tuple[AgentCore, str]) -> None:
    _, url = api
    status, headers, body = post(url, {"parameters": {"binary_data_output": True}, "inputs": [
        {"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": X.ravel().tolist()}]})
    assert status == 200 and HEADER_LENGTH in headers and len(body) == int(headers[HEADER_LENGTH]) + 80


def _inp(**over: Any) -> dict[str, Any]:
    base = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    base.update(over)
    return {"inputs": [base]}


MALFORMED: list[tuple[str, dict[str, Any] | bytes, dict[str, str], int, str]] = [
    ("not json", b"{inputs:", {}, 400, "not valid JSON"),
    ("not an object", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("no inputs", {"inputs": []}, {}, 400, "non-empty 'inputs'"),
    ("unknown input", _inp(name="pixels"), {}, 400, "unknown input 'pixels'"),
    ("wrong datatype", _inp(datatype="FP64"), {}, 400, "model expects FP32"),
    ("bad datatype", _inp(datatype="FLOAT"), {}, 400, "is not one of"),
    ("wrong rank", _inp(shape=[1, 64]), {}, 400, "model expects [N, 1, 8, 8]"),
    ("wrong dim", _inp(shape=[1, 1, 8, 9], data=[0.0] * 72), {}, 400, "model expects [N, 1, 8, 8]"),
    ("negative dim", _inp(shape=[-1, 1, 8, 8]), {}, 400, "non-negative integers"),
    ("count mismatch", _inp(data=[0.0] * 63), {}, 400, "needs 64"),
    ("ragged", _inp(data=[[0.0] * 32, [0.0] * 31]), {}, 400, "not a regular array"),
    ("strings", _inp(data=["a"] * 64), {}, 400, "not a regular array"),
    ("no data", {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}, {}, 400, "no 'data'"),
    ("twice", {"inputs": [_inp()["inputs"][0], _inp()["inputs"][0]]}, {}, 400, "given twice"),
    ("unknown output", {**_inp(), "outputs": [{"name": "probs"}]}, {}, 400, "unknown output 'probs'"),
    ("bad parameters", {**_inp(), "parameters": {"binary_data_output": "yes"}}, {}, 400, "true or false"),
    ("header too long", _inp(), {HEADER_LENGTH: "999999"}, 400, "for a body of"),
    ("header not a number", _inp(), {HEADER_LENGTH: "ten"}, 400, HEADER_LENGTH),
    ("binary size mismatch", {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                          "parameters": {"binary_data_size": 10}}]}, {}, 400, "does not match"),
    ("binary missing bytes", {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                          "parameters": {"binary_data_size": 256}}]}, {}, 400, "body ends"),
]


@pytest.mark.parametrize(("case", "doc", "headers", "status", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_4xx_with_reason(api: tuple[AgentCore, str], case: str, doc: Any,
                                                headers: dict[str, str], status: int, reason: str) -> None:
    core, url = api
    before = core.requests_rejected
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    if case == "header too long":
        headers = {HEADER_LENGTH: str(len(raw) + 1)}
    got, _, body = post(url, raw=raw, headers=headers)
    assert got == status, body
    assert reason in json.loads(body)["error"]
    assert core.requests_rejected == before + 1
    # ... and the server keeps serving
    assert post(url, _inp())[0] == 200


def test_http_level_errors(api: tuple[AgentCore, str]) -> None:
    core, url = api
    assert post(url, _inp(), path="/v2/models/other/infer")[0] == 404
    assert post(url, _inp(), path="/v2/models/digits/versions/9/infer")[0] == 404
    assert http("GET", url + "/v2/models/digits/infer")[0] == 405
    assert http("PUT", url + "/v2/models/digits/infer", b"{}")[0] == 405
    assert http("GET", url + "/nope")[0] == 404
    status, _, body = post(url, raw=b"x" * (core.settings.max_request_bytes + 1))
    assert status == 413 and "over the limit" in json.loads(body)["error"]
    # no Content-Length, chunked body
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/v2/models/digits/infer")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"2\r\n{}\r\n0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()
    # a client that sends half a body and hangs up does not take the server down
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"in")
    assert http("GET", url + "/v2/health/live")[0] == 200


def test_keep_alive_serves_many_requests_on_one_connection(api: tuple[AgentCore, str]) -> None:
    _, url = api
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    body = json.dumps(_inp()).encode()
    for _ in range(20):
        conn.request("POST", "/v2/models/digits/infer", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.request("POST", "/v2/models/digits/infer", b"{bad", {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400
    resp.read()
    conn.request("GET", "/v2/health/live")
    assert conn.getresponse().status == 200
    conn.close()


def test_metrics_are_valid_prometheus_text(api: tuple[AgentCore, str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    core, url = api
    post(url, _inp())
    status, headers, body = http("GET", url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["edgekit_agent_ready"].samples[0].value == 1
    total = families["edgekit_agent_inferences"].samples[0].value
    assert total >= 1
    hist = {s.labels.get("le"): s.value for s in families["edgekit_agent_inference_latency_seconds"].samples
            if s.name.endswith("_bucket")}
    assert hist["+Inf"] == core.stats.total
    assert list(hist.values()) == sorted(hist.values())
    assert families["edgekit_agent_model_info"].samples[0].labels["name"] == "digits"


def test_not_ready_model_answers_503(tmp_path: Path, digits_folder: Path) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(digits_folder, folder)
    (folder / "probe.npz").write_bytes(b"garbage")
    core = AgentCore(load_settings(overrides={"device": "api-503", "model_dir": str(folder), "listen_port": 0,
                                     "allow_unsigned": True}))
    assert not core.load()
    server = InferenceServer(core).start()
    try:
        status, _, body = http("GET", server.url + "/v2/health/ready")
        assert status == 503 and "probe.npz has 7 bytes" in json.loads(body)["reason"]
        assert http("GET", server.url + "/v2/health/live")[0] == 200
        status, _, body = post(server.url, _inp())
        assert status == 503 and "model rejected" in json.loads(body)["error"]
    finally:
        server.stop()


def test_error_counts_and_bool_int_inputs(tmp_path: Path) -> None:
    """A model with int64/bool inputs: datatypes map both ways; onnxruntime failures count as errors."""
    import onnx
    from onnx import TensorProto, helper

    from tests.fixtures.agent import build_model_folder

    graph = helper.make_graph(
        [helper.make_node("Cast", ["flag"], ["f64"], to=TensorProto.INT64),
         helper.make_node("Mul", ["n", "f64"], ["prod"]),
         helper.make_node("Div", ["prod", "n"], ["out"])],
        "ints", [helper.make_tensor_value_info("n", TensorProto.INT64, [3]),
                 helper.make_tensor_value_info("flag", TensorProto.BOOL, [3])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "i.onnx")
    probe = tmp_path / "probe.npz"
    np.savez(probe, n=np.array([1, 2, 3], np.int64), flag=np.array([True, True, False]))
    folder = build_model_folder(tmp_path / "i.onnx", tmp_path / "folder", name="ints", probe_data=probe)
    core = AgentCore(load_settings(overrides={"device": "api-ints", "model_dir": str(folder), "listen_port": 0,
                                     "allow_unsigned": True}))
    assert core.load(), core.rejected
    server = InferenceServer(core).start()
    try:
        doc = {"inputs": [{"name": "n", "shape": [3], "datatype": "INT64", "data": [4, 5, 6]},
                          {"name": "flag", "shape": [3], "datatype": "BOOL", "data": [True, False, True]}]}
        status, _, body = post(server.url, doc, path="/v2/models/ints/infer")
        assert status == 200, body
        out = json.loads(body)["outputs"][0]
        assert out == {"name": "out", "datatype": "INT64", "shape": [3], "data": [1, 0, 1]}
        # integer division by zero fails inside onnxruntime: a 500 that counts as an inference error
        doc["inputs"][0]["data"] = [0, 0, 0]
        status, _, body = post(server.url, doc, path="/v2/models/ints/infer")
        assert status == 500 and "inference failed" in json.loads(body)["error"]
        w = core.stats.take_window()
        assert (w.inferences, w.errors) == (2, 1)
    finally:
        server.stop()


def test_binary_extension_little_endian_fp16_roundtrip() -> None:
    from edgekit_agent.oip import InferRequest, decode_infer_request, encode_infer_response
    from edgekit_agent.runtime import TensorInfo

    arr = np.arange(6, dtype=np.float16).reshape(2, 3)
    head = json.dumps({"inputs": [{"name": "h", "shape": [2, 3], "datatype": "FP16",
                                   "parameters": {"binary_data_size": 12}}]}).encode()
    f16 = np.dtype(np.float16)
    req = decode_infer_request(head + arr.astype("<f2").tobytes(), len(head),
                               [TensorInfo("h", f16, (-1, 3))], [TensorInfo("o", f16, (-1, 3))])
    np.testing.assert_array_equal(req.feeds["h"], arr)
    body, n = encode_infer_response("m", "1", InferRequest(None, {}, ["o"], {"o"}), [arr])
    assert n is not None
    assert np.frombuffer(body[n:], "<f2").tolist() == arr.ravel().tolist()
    assert struct.unpack("<e", body[n + 2:n + 4])[0] == 1.0


def test_big_json_is_decoded_in_the_helper_process(api: tuple[AgentCore, str], digits_folder: Path) -> None:
    import multiprocessing

    from edgekit_agent.parser_process import INLINE_BYTES

    _, url = api
    x = np.random.default_rng(2).random((300, 1, 8, 8), dtype=np.float32)
    doc = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    body = json.dumps(doc).encode()
    assert len(body) > INLINE_BYTES
    status, _, out = post(url, raw=body)
    assert status == 200, out[:300]
    sess = ort.InferenceSession(str(digits_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(np.array(json.loads(out)["outputs"][0]["data"], np.float32).reshape(300, 10),
                               sess.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert any("SpawnProcess" in p.name for p in multiprocessing.active_children())
    # its refusals carry the same status and one-line reason as inline ones
    doc["inputs"][0]["shape"] = [301, 1, 8, 8]
    status, _, out = post(url, doc)
    assert status == 400 and json.loads(out)["error"] == "input 'input': data has 19200 elements, shape " \
                                                         "[301, 1, 8, 8] needs 19264"


def test_json_over_max_json_bytes_is_refused_but_binary_of_that_size_is_served(
        api: tuple[AgentCore, str], expected: np.ndarray[Any, Any]) -> None:
    core, _ = api
    small = AgentCore(load_settings(overrides={"device": "api-json", "model_dir": str(core.settings.model_dir),
                                               "listen_port": 0, "max_json_bytes": 200, "allow_unsigned": True}))
    assert small.load()
    server = InferenceServer(small).start()
    try:
        status, _, out = post(server.url, {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32",
                                                       "data": X.ravel().tolist()}]})
        error = json.loads(out)["error"]
        assert status == 413 and "over the limit of 200" in error and HEADER_LENGTH in error and "\n" not in error
        assert small.requests_rejected == 1
        head = json.dumps({"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": X.nbytes}}]}).encode()
        assert len(head) < 200 < len(head) + X.nbytes
        status, _, out = post(server.url, raw=head + X.astype("<f4").tobytes(),
                              headers={HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"})
        assert status == 200, out
        np.testing.assert_allclose(np.array(json.loads(out)["outputs"][0]["data"], np.float32).reshape(2, 10),
                                   expected, rtol=1e-5, atol=1e-6)
    finally:
        server.stop()


def wait_for_file(json_part: bytes, binary_length: int, inputs: Any, outputs: Any, max_depth: int) -> Any:
    """A stand-in decoder for the parser worker: blocks until the file named by ``json_part`` exists."""
    import time

    deadline = time.monotonic() + 60   # the test releases it; never hang the worker for good
    while not Path(json_part.decode()).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "error", (400, "released")


def exit_worker(json_part: bytes, binary_length: int, inputs: Any, outputs: Any, max_depth: int) -> Any:
    import os

    os._exit(1)


def test_parser_process_bounds_its_queue_and_replaces_a_dead_worker(tmp_path: Path) -> None:
    import threading

    from edgekit_agent.errors import InferenceRequestError
    from edgekit_agent.parser_process import ParserProcess

    from tests.fixtures.agent import wait_until

    release = tmp_path / "release"
    parser = ParserProcess(max_pending=2, decode=wait_for_file)
    answers: list[str] = []

    def call() -> None:
        try:
            parser.decode(str(release).encode(), 0, [], [], max_depth=32, timeout=120)
        except InferenceRequestError as exc:
            answers.append(f"{exc.status} {exc.one_line()}")

    try:
        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: parser.pending == 2, timeout=60)
        # a third is refused at once, while the first two still wait for the worker
        assert _decoded_error(parser, b"unused") == (503, "busy: too many big JSON requests being parsed")
        assert answers == []
        release.touch()
        for t in threads:
            t.join(120)
        assert answers == ["400 released", "400 released"]
    finally:
        parser.close()
    dying = ParserProcess(decode=exit_worker)
    try:
        with pytest.raises(InferenceRequestError, match="parser process stopped") as info:
            dying.decode(b"{}", 0, [], [], max_depth=32, timeout=120)
        assert info.value.status == 503
        dying._decode = wait_for_file  # the next request gets a new worker
        assert _decoded_error(dying, str(release).encode()) == (400, "released")
    finally:
        dying.close()


def _decoded_error(parser: Any, json_part: bytes) -> tuple[int, str]:
    from edgekit_agent.errors import InferenceRequestError

    try:
        parser.decode(json_part, 0, [], [], max_depth=32, timeout=120)
    except InferenceRequestError as exc:
        return exc.status, str(exc)
    raise AssertionError("no error")


def test_binary_part_is_checked_from_its_length_before_it_exists() -> None:
    from edgekit_agent.errors import InferenceRequestError
    from edgekit_agent.oip import decode_infer_header
    from edgekit_agent.runtime import TensorInfo

    f32 = np.dtype(np.float32)
    inputs, outputs = [TensorInfo("x", f32, (-1, 2))], [TensorInfo("y", f32, (-1, 2))]
    head = json.dumps({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 24}}]}).encode()
    for length, reason in ((8 << 20, f"{(8 << 20) - 24} unused bytes"), (20, "body ends after 20 of 24")):
        with pytest.raises(InferenceRequestError, match=reason):
            decode_infer_header(head, length, inputs, outputs)
    header = decode_infer_header(head, 24, inputs, outputs)
    assert header.binary_bytes == 24
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(header.complete(x.astype("<f4").tobytes()).feeds["x"], x)
    with pytest.raises(InferenceRequestError, match="the binary part has 23 bytes"):
        header.complete(b"\0" * 23)
