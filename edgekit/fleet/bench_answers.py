"""Decode a device's bench answer (``bench_result``) before anything reads it, or say why not (pure).

An answer comes from whoever may publish on the device's result topic, so it is hostile input: its
size is bounded before parsing, its JSON depth by the parser (orjson stops at 1024 levels), and
every field ``timing`` and the CLI read is checked for its exact type and range. Unknown fields are
dropped (an agent a minor version ahead still answers); a known field of the wrong type or range
rejects the whole answer, and its device then counts as not having answered. ``samples_ms`` is
kept as sent: ``timing.decode_samples`` checks it, falling back to the medians when it is unusable.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson

__all__ = ["MAX_ANSWER_BYTES", "MAX_CANDIDATES", "STATES", "decode_answer"]

MAX_ANSWER_BYTES: Final = 512 * 1024  # 1000 samples for each of 8 models is under 100 KiB
MAX_CANDIDATES: Final = 32            # the agents time at most a handful at once
STATES: Final = frozenset({"running", "done", "failed", "busy", "rejected"})
ENTRY_STATUSES: Final = frozenset({"ok", "refused", "failed", "skipped"})
_MAX_TEXT: Final = 1000
_MAX_NAME: Final = 1024
_TIMES: Final = ("median_ms", "p90_ms", "min_ms", "max_ms")
_RATIOS: Final = ("ratio", "ratio_p90")


class _Invalid(Exception):
    pass


def decode_answer(payload: bytes | bytearray) -> tuple[dict[str, Any] | None, str]:
    """(the answer with its known fields checked, "") or (None, why it was refused)."""
    if len(payload) > MAX_ANSWER_BYTES:
        return None, f"{len(payload)} bytes, over the limit of {MAX_ANSWER_BYTES}"
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON: {str(exc)[:100]}"
    if type(data) is not dict:
        return None, "not a JSON object"
    try:
        return _answer(data), ""
    except _Invalid as exc:
        return None, str(exc)


def _answer(d: dict[str, Any]) -> dict[str, Any]:
    state = d.get("state")
    if state not in STATES:
        raise _Invalid(f"state: {_short(state)} is not one of {sorted(STATES)}")
    out: dict[str, Any] = {"state": state, "id": _text(d, "id", 128, nullable=True)}
    for key, limit in (("device", 253), ("group", 253), ("app", 253), ("platform", 64), ("session", 64),
                       ("detail", _MAX_TEXT)):
        if key in d:
            out[key] = _text(d, key, limit)
    if "truncated" in d:
        if type(d["truncated"]) is not bool:
            raise _Invalid("truncated: not a boolean")
        out["truncated"] = d["truncated"]
    for key in ("v", "runs", "warmup", "threads"):
        if key in d:
            out[key] = _count(d, key)
    for key in ("seconds", "cpu_budget", "ts"):
        if key in d:
            out[key] = _number(d, key)
    if "model" in d:
        model = d["model"]
        if model is not None and type(model) is not dict:
            raise _Invalid("model: not an object")
        out["model"] = None if model is None else {k: _text(model, k, 256) for k in ("name", "version", "digest")
                                                   if k in model}
    if "running" in d:
        if type(d["running"]) is not dict:
            raise _Invalid("running: not an object")
        out["running"] = _timing(d["running"], "running", extra=("digest", "name", "version"))
    if "candidates" in d:
        entries = d["candidates"]
        if type(entries) is not list or len(entries) > MAX_CANDIDATES:
            raise _Invalid(f"candidates: not a list of at most {MAX_CANDIDATES}")
        out["candidates"] = [_candidate(e, i) for i, e in enumerate(entries)]
    return out


def _candidate(e: Any, i: int) -> dict[str, Any]:
    where = f"candidates[{i}]"
    if type(e) is not dict:
        raise _Invalid(f"{where}: not an object")
    out = _timing(e, where, extra=("digest", "error", "detail", "name", "version", "precision"))
    out["image"] = _text(e, "image", _MAX_NAME, where=where)
    status = e.get("status")
    if status not in ENTRY_STATUSES:
        raise _Invalid(f"{where}.status: {_short(status)} is not one of {sorted(ENTRY_STATUSES)}")
    out["status"] = status
    if status == "ok" and any(out.get(key) is None for key in ("median_ms", "p90_ms")):
        raise _Invalid(f"{where}: timed (ok) without median_ms and p90_ms")
    if "exit_code" in e:
        code = e["exit_code"]
        if code is not None and (type(code) is not int or not 0 <= code <= 255):
            raise _Invalid(f"{where}.exit_code: not an exit code")
        out["exit_code"] = code
    for key in _RATIOS:
        if key in e:
            out[key] = _number(e, key, where, nullable=True)
    return out


def _timing(t: dict[str, Any], where: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "n" in t:
        out["n"] = _count(t, "n", where)
    for key in _TIMES:
        if key in t:
            out[key] = _number(t, key, where, nullable=True)
    if "samples_ms" in t:
        out["samples_ms"] = t["samples_ms"]  # checked by timing.decode_samples, which may drop it
    for key in extra:
        if key in t:
            out[key] = _text(t, key, _MAX_TEXT if key == "detail" else _MAX_NAME, where=where)
    return out


def _text(d: dict[str, Any], key: str, limit: int, *, nullable: bool = False, where: str = "") -> Any:
    value = d.get(key)
    if value is None and nullable:
        return None
    if type(value) is not str or len(value) > limit:
        raise _Invalid(f"{_at(where, key)}: not a string of at most {limit} characters")
    return value


def _count(d: dict[str, Any], key: str, where: str = "") -> int:
    value = d[key]
    if type(value) is not int or not 0 <= value <= 10**9:
        raise _Invalid(f"{_at(where, key)}: not a count")
    return value


def _number(d: dict[str, Any], key: str, where: str = "", *, nullable: bool = False) -> Any:
    value = d[key]
    if value is None and nullable:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise _Invalid(f"{_at(where, key)}: not a finite number ≥ 0")
    return value


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _short(value: Any) -> str:
    return repr(value)[:40]
