"""Bounded JSON parsing of inference requests: no body makes the agent build much more than its own
size in memory, or recurse past a depth limit.

Plain ``json.loads`` costs an 8-byte list slot (and often a 24-byte float) per 2-4 bytes of
``[0,0,...]`` text, a ~50-byte string per 4 bytes of ``["a","a",...]``, and raises RecursionError
on 100,000 ``[``. So before anything is materialised:

- every flat numeric ``"data": [...]`` array is cut out of the text; it becomes a ``FlatData`` that
  counts its elements by their commas and is parsed later straight into numpy, chunk by
  chunk (``np.fromstring``: 4-8 bytes per element of at least 2 bytes of text), once its element
  count has been checked against the declared shape;
- the rest (the request's structure) must fit in ``STRUCTURE_LIMIT`` bytes, hold at most
  ``MAX_STRINGS`` strings and nest at most ``max_depth`` levels (a byte scan counting brackets
  outside strings) before ``json.loads`` sees it.

The passes over a big body are memchr, numpy or slices of ``_CHUNK`` bytes: the GIL is never held
for long, so small requests on other threads keep moving while a bomb is looked at.
"""

from __future__ import annotations

import json
import re
import secrets
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from edgekit_agent.errors import InferenceRequestError

# Enough for the structure of any request plus nested (row-major) data of ~25k values; bigger
# tensors come as flat arrays or binary. Nested lists are the costliest JSON per byte: at 1 MiB
# they took 140 ms of CPU and +37 MiB to refuse.
STRUCTURE_LIMIT = 256 * 1024

_TOKENS = re.compile(rb'("data"\s*:\s*)\[|"[^"\\]*(?:\\.[^"\\]*)*"')
# No datatype has string values: a request needs a few dozen strings. The cap keeps the scan's
# Python loop (one turn per string) short.
MAX_STRINGS = 4096
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_FLAT = b'[{"tfnNI'
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_MARKER = "\x00flat:"
_BLANK = re.compile(rb"\s*")
_CHUNK = 1 << 18


@dataclass(frozen=True, eq=False)
class FlatData:
    """A flat array of JSON numbers, still text: ``text[start:end]`` between its brackets."""

    text: bytes
    start: int
    end: int

    @cached_property
    def count(self) -> int:
        commas = _count(self.text, b",", self.start, self.end)
        if commas == 0 and _BLANK.fullmatch(self.text, self.start, self.end):
            return 0
        return commas + 1

    def to_array(self, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        """The values as a 1-D array of ``dtype``; ValueError when they are not all numbers in range.

        Parsed a chunk at a time into an array sized from the comma count, so the only big
        allocation is the result."""
        count = self.count
        if dtype.kind == "f":
            parse = dtype if dtype.itemsize >= 4 else np.dtype(np.float32)
        elif dtype.kind in "iu" and not _has_any(self.text, self.start, self.end, b".eE"):
            parse = np.dtype(np.int64)
        else:
            parse = np.dtype(np.float64)
        out = np.empty(count, parse)
        filled, pos, text = 0, self.start, self.text
        while filled < count:
            cut = text.find(b",", min(pos + _CHUNK, self.end), self.end)
            cut = self.end if cut < 0 else cut
            with warnings.catch_warnings():
                # numpy warns (and stops) at text it cannot parse: a malformed request here
                warnings.simplefilter("error", DeprecationWarning)
                try:
                    part = np.fromstring(text[pos:cut], dtype=parse, sep=",")
                except DeprecationWarning as exc:
                    raise ValueError("data holds something that is not a number") from exc
            if part.size != _count(text, b",", pos, cut) + 1:
                raise ValueError("data holds something that is not a number")
            out[filled:filled + part.size] = part
            filled, pos = filled + part.size, cut + 1
        if dtype.kind in "iu" and count:
            info = np.iinfo(dtype)
            if not np.isfinite(out).all() or out.min() < info.min or out.max() > info.max:
                raise ValueError(f"data has values outside the range of {dtype}")
        return out.astype(dtype, copy=False)


def _count(text: bytes, char: bytes, start: int, end: int) -> int:
    # numpy compares with SIMD, several times faster than bytes.count; in slices, so the GIL is
    # not held for a whole multi-MiB body at once
    view, code = np.frombuffer(text, np.uint8), ord(char)
    return sum(int(np.count_nonzero(view[p:min(p + _CHUNK, end)] == code)) for p in range(start, end, _CHUNK))


def _has_any(text: bytes, start: int, end: int, chars: bytes) -> bool:
    return any(text.find(bytes([c]), start, end) >= 0 for c in chars)


def _flat(text: bytes, start: int, end: int) -> bool:
    """No nested array, object, string, true/false/null/NaN/Infinity in ``text[start:end]`` (memchr
    per character). Anything else that is not a number fails later in ``np.fromstring``: 400."""
    return not _has_any(text, start, end, _NOT_FLAT)


def _bad(message: str, status: int = 400) -> InferenceRequestError:
    return InferenceRequestError(message, status=status)


def max_depth_of(text: bytes) -> int:
    """How deep ``[`` and ``{`` nest in JSON text, not counting brackets inside strings."""
    brackets = _STRING.sub(b'""', text).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


def load_request_json(text: bytes, *, max_depth: int) -> Any:
    """``json.loads(text)``, bounded; each flat numeric ``"data"`` array comes back as a ``FlatData``."""
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    flats: dict[str, FlatData] = {}
    last = kept = pos = strings = 0
    while (m := _TOKENS.search(text, pos)) is not None:
        if kept + m.start() - last > STRUCTURE_LIMIT:
            break
        pos = m.end()
        if m.group(1) is None:
            strings += 1
            if strings > MAX_STRINGS:
                raise _bad(f"the request's JSON has more than {MAX_STRINGS} strings", 413)
            continue
        # a flat array ends at the first "]" (memchr) and holds number characters only
        start, end = pos, text.find(b"]", pos)
        if end < 0 or not _flat(text, start, end):
            continue  # nested, booleans, null, NaN...: left to json.loads (and the structure limit)
        key = f"{_MARKER}{nonce}:{len(flats)}"
        pieces += [text[last:m.end(1)], json.dumps(key).encode()]
        kept += m.end(1) - last
        flats[key] = FlatData(text, start, end)
        last = pos = end + 1
    structure = text if not flats else b"".join([*pieces, text[last:]])
    if len(structure) > STRUCTURE_LIMIT:
        raise _bad(f"the request's JSON has {len(structure)} bytes outside flat numeric 'data' arrays, over "
                   f"the limit of {STRUCTURE_LIMIT}; send big tensors as flat arrays or binary data", 413)
    depth = max_depth_of(structure)
    if depth > max_depth:
        raise _bad(f"the request's JSON nests {depth} levels deep, over the limit of {max_depth}")
    try:
        doc = json.loads(structure)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}"[:300]) from exc
    except RecursionError as exc:  # unreachable below the depth limit; never let it escape
        raise _bad("the request's JSON nests too deep") from exc
    return _restore(doc, flats) if flats else doc


def _restore(value: Any, flats: dict[str, FlatData]) -> Any:
    if isinstance(value, dict):
        return {k: _restore(v, flats) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, flats) for v in value]
    if isinstance(value, str) and value.startswith(_MARKER):
        return flats.get(value, value)
    return value


__all__ = ["MAX_STRINGS", "STRUCTURE_LIMIT", "FlatData", "load_request_json", "max_depth_of"]
