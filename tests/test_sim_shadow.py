"""The simulator honours shadow revisions: a pod naming a shadow candidate gives its device the
agent's shadow runner, fed the same live inputs as the served model."""

from __future__ import annotations

import json
import random

import numpy as np
from edgekit_agent.loading import LoadedModel, fetch_model, load_model

from edgekit.rehearsal.sim.devices import Placement, VirtualDevice
from edgekit.rehearsal.sim.faults import Fault
from edgekit.rehearsal.sim.fleet import placements_from_pods
from tests.fixtures.agent import SignedImage
from tests.test_sim import _pod


def test_placements_carry_the_shadow_candidate_and_its_settings() -> None:
    pod = _pod("n1", "shadow-aaaa")
    pod["metadata"]["annotations"].update({"edgekit.io/shadow-image": "reg/m@sha256:" + "c" * 64,
                                          "edgekit.io/shadow": json.dumps({"ratio": 0.5, "metric": "cosine"})})
    placed = placements_from_pods([pod, _pod("n2", "aaaaaaaa")])
    assert placed["n1"].shadow == "reg/m@sha256:" + "c" * 64
    assert (placed["n1"].shadow_ratio, placed["n1"].shadow_metric) == (0.5, "cosine")
    assert placed["n2"].shadow is None


def test_a_device_runs_its_shadow_on_the_live_inputs(digits_signed_layout: SignedImage, tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path)) / "model"
    key = str(digits_signed_layout.public_key)
    fetch_model(f"oci:{digits_signed_layout.layout}", folder, public_key=key)
    loaded: LoadedModel = load_model(folder, public_key=key, intra_op_threads=1)
    with np.load("models/digits/eval.npz") as data:
        inputs = np.asarray(data[data.files[0]], dtype=np.float32)
    placement = Placement("edge-1", "det", "shadow-rev", f"reg/digits@{loaded.digest}", "cams", "pod",
                          shadow=f"reg/digits@{loaded.digest}", shadow_ratio=1.0)
    device = VirtualDevice(placement, loaded, Fault(), broker_url=None, interval=1.0, topic_root="edgekit/v1",
                           rate=50.0, rng=random.Random(3), shadow=loaded, inputs=inputs)
    device.start()
    fed: list[bytes] = []
    infer = device.core.infer
    device.core.infer = lambda feeds, names=None: (fed.append(feeds["input"].tobytes()), infer(feeds, names))[1]  # type: ignore[method-assign]
    for _ in range(40):
        device.infer()
    report = device.core.report_health()["shadow"]
    assert report["samples"] == 40 and report["agreement"]["agree"] == 40  # the same model agrees with itself
    assert len(set(fed)) > 20 and all(row in {r.tobytes() for r in inputs[:, None]} for row in fed[:5])
    device.stop()
