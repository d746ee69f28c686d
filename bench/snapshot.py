"""How long the fleet's retained-status snapshot takes, and whether it holds every device (issue 14).

    .venv/bin/python bench/snapshot.py                     # 2,000 and 10,000 devices
    .venv/bin/python bench/snapshot.py --devices 2000,10000,50000 --runs 5

For each size, a mosquitto with stock per-client limits (20 in flight, 1000 queued;
``sys_interval 1`` so that its drop counter updates every second) holds one retained status per
device (the agent's own payload builder). Then, per run:

- **QoS 1 (before)**: what a plain QoS 1 subscription to the status topics receives (it stops
  growing; counted after SUBACK round trips);
- **settled**: a ``FleetWatcher`` from ``start()`` until the marker SUBACK that follows the burst
  arrived and every status is applied (``wait_settled``);
- **verified**: until the broker's drop counter confirmed that nothing was dropped
  (``wait_verified``; bounded below by the ``$SYS`` update period);
- **devices**: devices in the watcher's state, checked against the number published.

The machine has 2 cores shared with everything else; the broker and the watcher compete for them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgekit.fleet.settings import FleetSettings  # noqa: E402
from edgekit.fleet.watching import FleetWatcher  # noqa: E402
from edgekit.rehearsal.mosquitto import MosquittoBroker  # noqa: E402

STOCK = "max_queued_messages 1000\nmax_inflight_messages 20\nmax_queued_bytes 0\nsys_interval 1"


def publish_statuses(broker: MosquittoBroker, devices: int) -> str:
    import orjson
    import paho.mqtt.client as mqtt
    from edgekit_agent.protocol import device_topic, status_payload
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = []
    model = {"name": "digits", "version": "1.0", "digest": "sha256:" + "a1" * 32}
    for i in range(devices):
        name = f"dev-{i:06d}"
        payload = status_payload(device=name, group="bench", session="s" * 32, seq=1, ts=time.time(),
                                 model=model, state="online", agent_version="0.1.0", ready=True)  # type: ignore[arg-type]
        infos.append(client.publish(device_topic("edgekit/v1", "bench", name, "status"), orjson.dumps(payload),
                                    qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return "edgekit/v1/bench/+/status"


def qos1_receives(broker: MosquittoBroker, topic: str) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[int] = [0]
    acked: set[int] = set()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.__setitem__(0, got[0] + 1)
    client.on_subscribe = lambda c, u, mid, r, p: acked.add(mid)

    def round_trip() -> None:
        mid = client.subscribe("no/such/topic", 0)[1]
        deadline = time.monotonic() + 30
        while mid not in acked and time.monotonic() < deadline:
            time.sleep(0.01)

    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe(topic, 1)
        round_trip()
        last = -1
        while got[0] != last:
            last = got[0]
            round_trip()
        return got[0]
    finally:
        client.disconnect()
        client.loop_stop()


def one_run(broker: MosquittoBroker) -> tuple[float, float, int, bool]:
    settings = FleetSettings(brokers=(broker.url,), interval=1.0, connect_timeout=5.0)
    started = time.perf_counter()
    with FleetWatcher(settings).start() as watcher:
        if not watcher.wait_settled(timeout=120):
            raise SystemExit("the watcher did not settle in 120 s")
        settled = time.perf_counter() - started
        found = watcher.wait_verified(timeout=30)
        verified = time.perf_counter() - started
        devices = sum(g.devices for g in watcher.view().groups())
    return settled, verified, devices, found.verified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="2000,10000", help="comma-separated fleet sizes")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    table = Table(title="Retained-status snapshot, stock mosquitto limits (20 in flight + 1000 queued)")
    for name in ("devices published", "QoS 1 (before)", "devices shown", "settled s (median, max)",
                 "verified s (median)", "verified"):
        table.add_column(name, justify="right")
    for size in (int(s) for s in args.devices.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            broker = MosquittoBroker(Path(tmp), extra_config=STOCK, persistence=False).start()
            try:
                topic = publish_statuses(broker, size)
                before = qos1_receives(broker, topic)
                runs = [one_run(broker) for _ in range(args.runs)]
            finally:
                broker.stop()
        settled = [r[0] for r in runs]
        shown = sorted({r[2] for r in runs})
        table.add_row(f"{size:,}", f"{before:,}", ", ".join(f"{n:,}" for n in shown),
                      f"{statistics.median(settled):.2f}, {max(settled):.2f}",
                      f"{statistics.median(r[1] for r in runs):.2f}",
                      f"{sum(r[3] for r in runs)}/{len(runs)}")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
