"""One virtual device: the real agent core (``edgekit_agent.core.AgentCore``) on a shared model
session, with its own MQTT connection (its own last will) and in-memory spool, driven by the
simulator's scheduler instead of its own threads.

What a fault does here:

- error_rate: that share of inferences (evenly spread; by independent draws when ``noisy``) gets a
  malformed input, so onnxruntime raises and the core counts a real inference error;
- latency_ms, latency_factor: the measured latency of each inference is multiplied by the factor,
  then the milliseconds added (throttled simulation: nothing sleeps);
- rate: the device's traffic (inferences per second) while it runs the model;
- probe_fail: the device serves a probe that cannot pass (``ModelStore.with_failing_probe``);
- silent: health is never reported (the connection and birth stay);

A pod of a shadow revision (``edgekit push --shadow-first``) names its candidate; the device then
runs it as the agent's shadow on the same live inputs (``SimSettings.inputs``: rows of a real data
set, one per request; without them the golden probe's inputs).
- crash_loop / offline: handled by the simulator (the agent dies / never starts).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from edgekit_agent.core import AgentCore, ResourceMeter
from edgekit_agent.errors import EdgekitError
from edgekit_agent.loading import LoadedModel
from edgekit_agent.settings import AgentSettings
from edgekit_agent.spool import MemorySpool

from edgekit.rehearsal.sim.faults import Fault

log = logging.getLogger(__name__)

_METER = ResourceMeter()  # one process: every device reports the simulator's RSS and CPU


@dataclass(frozen=True)
class Placement:
    """What Kubernetes runs on a node: an app's pod at a revision with its image."""

    node: str
    app: str
    revision: str
    image: str
    group: str
    pod: str
    shadow: str | None = None           # a shadow revision's candidate image (push --shadow-first)
    shadow_ratio: float = 0.1
    shadow_metric: str = "top1"
    platform: str | None = None         # the node's os/arch: whose layer the device takes (None: this host's)


def _feeds(loaded: LoadedModel) -> dict[str, np.ndarray[Any, Any]]:
    # The golden probe's inputs are valid inputs of the right shapes and types.
    return {name: np.asarray(value) for name, value in loaded.probe.inputs.items()}


def _fits(loaded: LoadedModel, inputs: np.ndarray[Any, Any]) -> bool:
    feeds = _feeds(loaded)
    if len(feeds) != 1:
        return False
    probe = next(iter(feeds.values()))
    return probe.ndim == inputs.ndim and probe.shape[1:] == inputs.shape[1:] and probe.dtype == inputs.dtype


def _bad_feeds(feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    # Drop a dimension: onnxruntime rejects the rank (an InvalidArgument from the real session).
    return {name: np.asarray(value).reshape(-1)[:1] for name, value in feeds.items()}


class VirtualDevice:
    def __init__(self, placement: Placement, loaded: LoadedModel, fault: Fault, *, broker_url: str | None,
                 interval: float, topic_root: str, rate: float, rng: random.Random,
                 extra_settings: dict[str, Any] | None = None, shadow: LoadedModel | None = None,
                 inputs: np.ndarray[Any, Any] | None = None) -> None:
        self.placement = placement
        self.loaded = loaded
        self.fault = fault
        self.base_rate = rate
        self.rng = rng
        settings = AgentSettings(device=placement.node, group=placement.group, app=placement.app,
                                 platform=placement.platform, model_dir=str(loaded.directory),
                                 image=placement.image, broker_url=broker_url, topic_root=topic_root,
                                 interval=interval, probe_interval=max(30.0, interval * 10), spool_dir=None,
                                 reconnect_min=0.5, reconnect_max=5.0, intra_op_threads=1,
                                 shadow_image=placement.shadow if shadow is not None else None,
                                 shadow_ratio=placement.shadow_ratio, shadow_metric=placement.shadow_metric,
                                 **(extra_settings or {}))
        self.core = AgentCore(settings, meter=_METER)
        self.feeds = _feeds(loaded)
        self.shadow_model = shadow
        # live inputs: one row of ``inputs`` per request when they fit the model's single input
        self.inputs = inputs if inputs is not None and _fits(loaded, inputs) else None
        self.bad = _bad_feeds(self.feeds)
        self._run = loaded.session.session.run
        self.started = time.monotonic()
        self.next_infer = self.started + rng.uniform(0, 1.0 / self.rate if self.rate > 0 else 1.0)
        self.next_tick = self.started + rng.uniform(0, min(interval, 1.0))
        self.tick_every = min(0.5, interval / 2)
        self.alive = False
        self.inferences = 0
        self.errors = 0
        self._error_due = rng.random()

    @property
    def rate(self) -> float:
        """Inferences per second now: the model's traffic when its fault sets one."""
        return self.fault.rate if self.fault.rate > 0 else self.base_rate

    @property
    def node(self) -> str:
        return self.placement.node

    def start(self) -> None:
        """Connect (birth, will), load the shared model (probe), start serving."""
        if self.core.settings.broker_url:
            self.core.start_telemetry(spool=MemorySpool(max_bytes=1 << 20))
        self.core.use_model(self.loaded)
        if self.shadow_model is not None:
            # The agent's own shadow runner, drained by the simulator's scheduler (no thread per device).
            self.core.use_shadow(self.shadow_model, rng=random.Random(self.rng.random()))
        self.alive = True

    def step(self, now: float) -> float:
        """Do what is due; return when to be called next (monotonic seconds)."""
        if not self.alive:
            return now + 1.0
        if self.rate > 0 and now >= self.next_infer:
            self.infer()
            gap = 1.0 / self.rate
            self.next_infer += gap * self.rng.uniform(0.8, 1.2)
            if self.next_infer < now:
                self.next_infer = now + gap
        if now >= self.next_tick:
            if not self.fault.silent:
                self.core.tick()
            self.next_tick = now + self.tick_every
        return min(self.next_infer if self.rate > 0 else now + 1.0, self.next_tick)

    def infer(self) -> None:
        core = self.core
        if not core.ready:
            core.requests_rejected += 1
            return
        # Errors come evenly spread (every 1/rate-th inference, from a random phase) rather than
        # by coin flips: a short canary window then shows the configured rate, not luck. A noisy
        # fault draws each one, so windows show what luck does to a rate.
        if self.fault.noisy:
            failing = self.rng.random() < self.fault.error_rate
        else:
            self._error_due += self.fault.error_rate
            failing = self._error_due >= 1.0
            if failing:
                self._error_due -= 1.0
        if failing:
            with contextlib.suppress(EdgekitError):
                core.infer(self.bad)
            self.errors += 1
            return
        if self.fault.latency_ms or self.fault.latency_factor != 1.0:
            t0 = time.perf_counter()
            try:
                self._run(None, self.feeds)
            except Exception as exc:  # counted as the agent would
                core.stats.record_error(str(exc)[:200])
                return
            measured = time.perf_counter() - t0
            core.stats.record(measured * self.fault.latency_factor + self.fault.latency_ms / 1000.0)
        else:
            try:
                core.infer(self._live_feeds())
            except EdgekitError:
                self.errors += 1
                return
            if core.shadow is not None:
                core.shadow.drain()
        self.inferences += 1

    def _live_feeds(self) -> dict[str, np.ndarray[Any, Any]]:
        if self.inputs is None:
            return self.feeds
        i = self.rng.randrange(len(self.inputs))
        name = next(iter(self.feeds))
        return {name: self.inputs[i:i + 1]}

    def stop(self, *, graceful: bool = True) -> None:
        """Graceful: final health, agent_stopping, offline status, DISCONNECT. Otherwise the
        connection just drops, as when the process is killed (the broker sends the will)."""
        if not self.alive:
            return
        self.alive = False
        try:
            if graceful:
                self.core.shutdown(timeout=3.0)
            else:
                self.core.crash()
        except Exception as exc:  # a device must never take the simulator down
            log.debug("sim: stopping %s: %s", self.node, exc)
