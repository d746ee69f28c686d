"""JSON Schemas (draft 2020-12) of the telemetry payloads, shipped as package data."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

NAMES = ("status", "health", "event", "bench_request", "bench_result")


def schema_path(kind: str) -> Path:
    if kind not in NAMES:
        raise ValueError(f"no schema for {kind!r}")
    return Path(str(resources.files(__package__).joinpath(f"{kind}.schema.json")))


@cache
def load_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_path(kind).read_text(encoding="utf-8"))
    return schema
