"""What a ``quantize`` run found: one record per candidate, and the report written beside the model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.optimize import fidelity as fid
from edgekit.optimize.recipes import Recipe
from edgekit.optimize.speedup import PairedRatio

__all__ = ["CandidateResult", "QuantizeReport", "report_json", "report_path"]


@dataclass
class CandidateResult:
    recipe: Recipe
    verdict: str = "pending"  # chosen | in budget | over budget | slower | failed | skipped
    reason: str = ""
    size_bytes: int | None = None
    latency_ms: float | None = None
    latency_ratio: float | None = None
    fidelity: fid.Fidelity | None = None
    seconds: float = 0.0
    path: Path | None = None
    # timed on devices of a group (``--timing-group``): ratio to FP32 there, median, runs, devices
    device: dict[str, Any] | None = None
    # the final side-by-side timing on this host: the paired test against FP32 (``speedup``)
    speed: PairedRatio | None = None

    @property
    def latency_source(self) -> str:
        """Where ``latency_ratio`` (or ``device``) was measured: devices, build host, or nowhere."""
        if self.device is not None:
            return "devices"
        return "build host" if self.latency_ratio is not None else "not measured"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.recipe.name,
            "settings": self.recipe.to_dict(),
            "verdict": self.verdict,
            "reason": self.reason,
            "size_bytes": self.size_bytes,
            "latency_p50_ms": self.latency_ms,
            "latency_ratio": self.latency_ratio,
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
            "seconds": round(self.seconds, 2),
            "latency_source": self.latency_source,
            "device_latency": self.device,
            "speed": self.speed.to_dict() if self.speed else None,
        }


@dataclass
class QuantizeReport:
    model: str
    output: str
    chosen: str  # candidate name, or "fp32"
    reason: str
    metric: str
    budget: str
    threads: int
    baseline: dict[str, Any]
    candidates: list[CandidateResult]
    calibration: dict[str, Any]
    eval: dict[str, Any]
    steps: list[str]
    warnings: list[str]
    seconds: float
    metric_settings: dict[str, float] = field(default_factory=dict)  # a task metric's settings
    metric_reason: str = ""  # why this metric: auto's choice, or given with --metric
    # Control-flow nodes whose bodies stay FP32 (``subgraphs.KeptSubgraph``), and one line each.
    fp32_subgraphs: list[dict[str, Any]] = field(default_factory=list)
    fp32_subgraph_lines: list[str] = field(default_factory=list)
    timed_on: str = ""  # the platform (os/arch) the latencies were measured on ("": not timed)
    platform: str = ""  # the platform the build is for ("": this host's, unnamed)
    # where the latencies that ranked the candidates come from (``--timing-group``): {source:
    # devices | build host | not measured, group, app, devices, why}; None: quantize alone (the build host)
    device_timing: dict[str, Any] | None = None

    @property
    def chosen_result(self) -> CandidateResult | None:
        return next((c for c in self.candidates if c.verdict == "chosen"), None)

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen_result
        return {
            "schema": 1,
            "model": self.model,
            "output": self.output,
            "chosen": self.chosen,
            "reason": self.reason,
            "precision": "fp32" if chosen is None else ("mixed" if chosen.recipe.exclude else "int8"),
            "method": None if chosen is None else chosen.recipe.method,
            "metric": self.metric,
            "metric_settings": self.metric_settings,
            "metric_reason": self.metric_reason,
            "budget": self.budget,
            "threads": self.threads,
            # latencies are this host's: ``package`` and the attestation credit them to its platform only
            "timed_on": self.timed_on or None,
            "platform": self.platform or None,
            "latency_source": self.device_timing or {
                "source": "build host" if self.timed_on else "not measured", "platform": self.timed_on or None},
            "baseline": self.baseline,
            "result": None if chosen is None else chosen.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "calibration": self.calibration,
            "eval": self.eval,
            "steps": self.steps,
            "warnings": self.warnings,
            "fp32_subgraphs": self.fp32_subgraphs,
            "seconds": round(self.seconds, 1),
        }


def report_path(out: Path) -> Path:
    return out.with_name(out.name + ".report.json")


def report_json(data: dict[str, Any]) -> bytes:
    return (
        json.dumps(data, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o)) + "\n"
    ).encode()
