"""Fleet telemetry: a truthful, current picture of the fleet from the agents' MQTT telemetry.

Layers (decide in pure code, do I/O at the edge):

- ``reports`` (typed reports) and ``decoding`` (topic + bytes -> report, or a counted reject);
- ``state`` (the per-device store, ordering and staleness rules, seq gaps) and ``aggregating``
  (incremental per-group aggregates);
- ``views`` (``FleetView.window`` -- the rollout gates' query -- group figures, snapshots);
- ``ingesting`` (the pure pipeline the adapters and benchmarks drive);
- ``watching`` (``FleetWatcher``, the paho-mqtt adapter) and ``exporting`` (Prometheus).
"""

from edgekit.fleet.aggregating import GroupStats
from edgekit.fleet.decoding import Decoder
from edgekit.fleet.ingesting import Ingestor
from edgekit.fleet.reports import REJECT_REASONS, EventReport, HealthReport, Model, Reject, StatusReport
from edgekit.fleet.state import FleetState, IngestCounters, TrackerConfig
from edgekit.fleet.views import DeviceRow, FleetSnapshot, FleetView, WindowStats

__all__ = [
    "REJECT_REASONS",
    "Decoder",
    "DeviceRow",
    "EventReport",
    "FleetSnapshot",
    "FleetState",
    "FleetView",
    "GroupStats",
    "HealthReport",
    "IngestCounters",
    "Ingestor",
    "Model",
    "Reject",
    "StatusReport",
    "TrackerConfig",
    "WindowStats",
]
