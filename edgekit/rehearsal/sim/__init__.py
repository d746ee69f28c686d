"""The fleet simulator: virtual devices running the real agent core, one per node with an edgekit
pod, following Kubernetes, with fault knobs per model revision. Tests, benchmarks and people
rehearsing a rollout policy use it (``edgekit sim``)."""

from edgekit.rehearsal.sim.faults import Fault, FaultBook, parse_fault
from edgekit.rehearsal.sim.fleet import SimSettings, Simulator, placements_from_pods, running_simulator

__all__ = ["Fault", "FaultBook", "SimSettings", "Simulator", "parse_fault", "placements_from_pods",
           "running_simulator"]
