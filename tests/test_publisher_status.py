"""The retained status the agent publishes from its main thread (ready changed, going offline), with
a real mosquitto: its PUBACK may be handled by the MQTT thread before ``publish`` has returned the
mid, and that must not leave the mid waiting (``flush`` would then wait out the whole drain)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from edgekit_agent.core import AgentCore
from edgekit_agent.publishing import MqttPublisher
from edgekit_agent.settings import load_settings

from edgekit.rehearsal.mosquitto import MosquittoBroker
from tests.fixtures.agent import wait_until

pytestmark = pytest.mark.mqtt


def test_a_status_acked_before_publish_returns_is_not_waited_for(mqtt_broker: MosquittoBroker,
                                                                 tmp_path: Path) -> None:
    core = AgentCore(load_settings(overrides={"device": "status-race", "group": "g", "interval": 60,
                                              "broker_url": mqtt_broker.url, "spool_dir": str(tmp_path)}))
    out = core.start_telemetry()
    assert isinstance(out, MqttPublisher)
    try:
        wait_until(lambda: out.connected and out.flush(0.1), 20)
        client = out._client
        assert client is not None
        publish = client.publish

        def slow_to_return(*args: Any, **kw: Any) -> Any:
            info = publish(*args, **kw)
            time.sleep(0.6)  # the PUBACK arrives meanwhile and the MQTT thread runs its loop
            return info

        client.publish = slow_to_return  # type: ignore[method-assign]
        acked = out.counters.acked
        for _ in range(3):
            out.publish_status()
        client.publish = publish  # type: ignore[method-assign]
        assert out.flush(5), "a status mid was left waiting for a PUBACK already handled"
        # and the spooled reports still flow
        core.report_health()
        assert out.flush(10) and out.counters.acked == acked + 1
    finally:
        out.stop(2)
        out.spool.close()
