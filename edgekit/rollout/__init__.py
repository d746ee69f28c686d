"""Progressive rollouts: health-gated waves over a device group, with automatic rollback.

Pure decisions (``strategy``, ``planning``, ``gating``, ``resource``) are separate from the
engine that acts on a cluster through narrow ports (``ports``), so the decisions are unit-tested
without a cluster and the engine runs the same against the in-memory cluster and the real one.
"""

from edgekit.rollout.gating import Baseline, Elapsed, KubeFigures, TelemetryFigures, Verdict, judge
from edgekit.rollout.planning import PlannedWave, plan_waves
from edgekit.rollout.resource import EdgeRollout, RolloutSpec, RolloutStatus, WaveStatus
from edgekit.rollout.strategy import GatePolicy, Strategy, WaveStep, build_strategy, parse_waves

__all__ = [
    "Baseline",
    "EdgeRollout",
    "Elapsed",
    "GatePolicy",
    "KubeFigures",
    "PlannedWave",
    "RolloutSpec",
    "RolloutStatus",
    "Strategy",
    "TelemetryFigures",
    "Verdict",
    "WaveStatus",
    "WaveStep",
    "build_strategy",
    "judge",
    "parse_waves",
    "plan_waves",
]
