"""Bounded JSON parsing of inference requests (pure): flat data cut out and parsed by numpy, the
rest limited in size and depth before json.loads."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from edgekit_agent.errors import InferenceRequestError
from edgekit_agent.parsing import MAX_STRINGS, STRUCTURE_LIMIT, FlatData, load_request_json, max_depth_of


def _load(doc: Any, max_depth: int = 32) -> Any:
    return load_request_json(json.dumps(doc).encode(), max_depth=max_depth)


def test_flat_numeric_data_is_cut_out_and_the_rest_parsed() -> None:
    doc = _load({"id": "r", "inputs": [{"name": "a", "data": [1, 2.5, -3e2]},
                                       {"name": "b", "data": [[1, 2], [3, 4]]},
                                       {"name": "c", "data": [True, False]},
                                       {"name": "d", "data": []}]})
    a, b, c, d = (i["data"] for i in doc["inputs"])
    assert isinstance(a, FlatData) and a.count == 3
    assert a.to_array(np.dtype(np.float32)).tolist() == [1.0, 2.5, -300.0]
    assert b == [[1, 2], [3, 4]] and c == [True, False]  # nested and non-numeric: plain JSON
    assert isinstance(d, FlatData) and d.count == 0 and d.to_array(np.dtype(np.int64)).size == 0
    assert doc["id"] == "r"


def test_data_inside_strings_and_forged_markers_stay_strings() -> None:
    doc = _load({"id": '"data": [1, 2]', "inputs": [{"data": "\x00flat:0000000000000000:0"}]})
    assert doc == {"id": '"data": [1, 2]', "inputs": [{"data": "\x00flat:0000000000000000:0"}]}


@pytest.mark.parametrize(("dtype", "text", "want"), [
    (np.float16, b"1, 0.5, -2", [1.0, 0.5, -2.0]),
    (np.float64, b"0.1,1e-300", [0.1, 1e-300]),
    (np.int8, b"-128, 127", [-128, 127]),
    (np.int64, b"9007199254740993", [9007199254740993]),  # exact: parsed as an integer
    (np.int32, b"1.9, 2e1", [1, 20]),  # truncated, as np.asarray does
    (np.uint8, b"0, 2", [0, 2]),
    (np.bool_, b"0, 1, 2", [False, True, True]),
])
def test_flat_data_converts_like_numpy(dtype: Any, text: bytes, want: list[Any]) -> None:
    arr = FlatData(b"[" + text + b"]", 1, len(text) + 1).to_array(np.dtype(dtype))
    assert arr.dtype == np.dtype(dtype) and arr.tolist() == want


@pytest.mark.parametrize(("dtype", "text"), [(np.float32, b"1,,2"), (np.float32, b"1,2,"), (np.float32, b"1 2"),
                                             (np.float32, b"1e"), (np.int8, b"300"), (np.uint8, b"-1")])
def test_flat_data_that_is_not_numbers_in_range_is_refused(dtype: Any, text: bytes) -> None:
    with pytest.raises(ValueError):
        FlatData(b"[" + text + b"]", 1, len(text) + 1).to_array(np.dtype(dtype))


def test_big_flat_data_is_parsed_in_chunks_exactly() -> None:
    values = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
    doc = _load({"inputs": [{"data": values.tolist()}]})
    got = doc["inputs"][0]["data"].to_array(np.dtype(np.float32))
    np.testing.assert_array_equal(got, values)


def test_depth_counts_brackets_outside_strings_only() -> None:
    assert max_depth_of(b'{"a": [[1], {"b": "[[[[[[\\"]]"}]}') == 3
    assert max_depth_of(b"1") == 0
    assert _load({"id": "[" * 1000}, max_depth=1) == {"id": "[" * 1000}
    with pytest.raises(InferenceRequestError) as info:
        load_request_json(b"[" * 100_000, max_depth=32)
    assert info.value.status == 400 and "100000 levels deep" in info.value.message


def test_structure_over_the_limit_is_413_before_parsing() -> None:
    body = b'{"inputs": [{"data": [' + b"[0]," * (STRUCTURE_LIMIT // 4) + b"[0]]}]}"
    with pytest.raises(InferenceRequestError) as info:
        load_request_json(body, max_depth=32)
    assert info.value.status == 413 and "flat numeric" in info.value.message
    strings = b'{"inputs": [{"data": [' + b'"a",' * MAX_STRINGS + b'"a"]}]}'
    with pytest.raises(InferenceRequestError) as info:
        load_request_json(strings, max_depth=32)
    assert info.value.status == 413 and f"more than {MAX_STRINGS} strings" in info.value.message
    # the same number of values as flat numbers is fine
    big = b'{"inputs": [{"data": [' + b"0," * STRUCTURE_LIMIT + b"0]}]}"
    assert load_request_json(big, max_depth=32)["inputs"][0]["data"].count == STRUCTURE_LIMIT + 1
