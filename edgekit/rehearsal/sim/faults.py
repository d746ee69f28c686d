"""Fault knobs of the fleet simulator, per model revision: what a model does wrong on the devices.

A fault is keyed by what identifies a model: its revision (``3f2a9c1b7d0e``), image digest
(``sha256:…``), model version (``1.4.0``) or ``*`` for every model. Written on the command line as

    KEY:error_rate=0.2,noisy,latency_ms=30,latency_factor=1.5,rate=30,probe_fail,crash_loop,silent,offline=0.1

- ``error_rate``   share of inferences that fail (a real onnxruntime error: a malformed input),
                   evenly spread
- ``noisy``        each inference fails by an independent draw at ``error_rate`` instead: errors
                   come in bursts and gaps, as in the field (what a statistical gate must see through)
- ``latency_ms``   added to every measured inference latency
- ``latency_factor`` multiplies every measured inference latency (1.5: p95 +50%)
- ``rate``         inferences per second on each device running the model (0: the simulator's rate)
- ``probe_fail``   the golden probe fails (so the agent reports not ready, probe.ok false)
- ``crash_loop``   the agent dies every ``crash_every`` seconds (default 4) and comes back
- ``silent``       the agent serves but never reports health
- ``offline``      share of devices (chosen by a stable hash of the device name and ``seed``) that
                   never come up
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from edgekit.errors import ConfigError


@dataclass(frozen=True)
class Fault:
    error_rate: float = 0.0
    noisy: bool = False
    latency_ms: float = 0.0
    latency_factor: float = 1.0
    rate: float = 0.0             # traffic of the devices on this model (0: the simulator's)
    probe_fail: bool = False
    crash_loop: bool = False
    crash_every: float = 4.0
    silent: bool = False
    offline: float = 0.0
    seed: int = 0                 # picks which devices make up the offline share

    @property
    def healthy(self) -> bool:
        return self == Fault()

    def offline_for(self, device: str, key: str = "") -> bool:
        """Stable choice of the ``offline`` share of devices."""
        if self.offline <= 0:
            return False
        h = int.from_bytes(hashlib.sha256(f"{self.seed}/{key}/{device}".encode()).digest()[:8], "big") / 2**64
        return h < self.offline

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


_FLOAT = {"error_rate": (0.0, 1.0), "latency_ms": (0.0, 60_000.0), "latency_factor": (0.01, 1000.0),
          "rate": (0.0, 1000.0), "crash_every": (0.2, 3600.0), "offline": (0.0, 1.0), "seed": (0, 2**31)}
_FLAGS = ("noisy", "probe_fail", "crash_loop", "silent")


def parse_fault(text: str) -> tuple[str, Fault]:
    """``KEY:knob=value,flag,...`` -> (key, Fault). ConfigError (field ``--fault``) when malformed."""
    key, sep, rest = text.partition(":")
    if text.startswith("sha256:"):
        digest, sep2, rest = text[len("sha256:"):].partition(":")
        key, sep = "sha256:" + digest, sep2
    key = key.strip()
    if not key or not sep:
        raise ConfigError(f"{text!r}: want KEY:knob=value,... (KEY: revision, digest, version or *)",
                          field="--fault")
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if name in _FLAGS and not eq:
            values[name] = True
            continue
        if name in _FLAGS:
            values[name] = value.strip().lower() in ("1", "true", "yes", "on")
            continue
        if name not in _FLOAT or not eq:
            raise ConfigError(f"{part!r}: unknown fault knob (known: {', '.join([*_FLOAT, *_FLAGS])})",
                              field="--fault")
        raw = value.strip()
        try:
            number = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            raise ConfigError(f"{part!r}: {raw!r} is not a number", field="--fault") from None
        lo, hi = _FLOAT[name]
        if not lo <= number <= hi:
            raise ConfigError(f"{part!r}: must be within {lo:g}..{hi:g}", field="--fault")
        values[name] = int(number) if name == "seed" else number
    return key, replace(Fault(), **values)


class FaultBook:
    """Faults by model key; thread-safe; changes apply to running devices within a tick."""

    def __init__(self, faults: Mapping[str, Fault] | None = None) -> None:
        self._faults: dict[str, Fault] = dict(faults or {})
        self._lock = threading.Lock()
        self.version = 0

    @classmethod
    def parse(cls, specs: Iterable[str]) -> FaultBook:
        return cls(dict(parse_fault(s) for s in specs))

    def set(self, key: str, fault: Fault | None = None, **knobs: Any) -> None:
        with self._lock:
            if fault is None and not knobs:
                self._faults.pop(key, None)
            else:
                self._faults[key] = replace(fault or Fault(), **knobs)
            self.version += 1

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.version += 1

    def for_model(self, *, revision: str | None = None, digest: str | None = None,
                  version: str | None = None) -> Fault:
        """Most specific first: digest, revision, version, then ``*``."""
        with self._lock:
            for key in (digest, revision, version, "*"):
                if key and key in self._faults:
                    return self._faults[key]
        return Fault()

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {k: v.to_json() for k, v in self._faults.items()}
