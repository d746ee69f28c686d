"""The demo's real nodes: whether this machine can run them, and what the demo does with them.

Real nodes (:mod:`edgekit.rehearsal.realnodes`) run the edgekit-agent image as real containers beside
the KWOK nodes of the demo's group. :func:`blocker` says in one line why they cannot run here (or
None); the demo then tells its story on KWOK nodes alone.

A pod reaches the host through its bridge gateway, never through 127.0.0.1 (inside a pod that is
the pod), so with real nodes the demo's registry and broker listen on the host's own address
(:func:`host_address`).

Version 3.0 must fail on a real device, where no simulator fault knob reaches: :func:`wrong_probe`
packages it with golden outputs the model does not reproduce, as a build made with a broken
toolchain would carry. The agent runs the probe before it reports Ready, so the real canary
refuses it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

AGENT_UID = 10001                       # the agent image's user (Dockerfile.arm64)
SPOOL_ROOT = Path("/var/lib/edgekit")   # docs/kubernetes.md "Node preparation": one spool per app
PROBE_SHIFT = 0.5                       # far outside any probe tolerance (int8: 5e-2)


def blocker(count: int) -> str | None:
    """Why ``count`` real nodes cannot run here, in one line; None when they can."""
    if count <= 0:
        return "not asked for (--real-nodes 0)"
    from edgekit.rehearsal import gobuild
    from edgekit.rehearsal.agentbuilding import BUILD_TOOLS, build_plan, inspect_built
    from edgekit.rehearsal.realnodes import missing

    if lacking := missing():
        return "; ".join(lacking)
    if host_address() is None:
        return "the host has no global IPv4 address the pods could reach the registry and broker on (ip -4 addr)"
    unbuilt = [c.name for c in gobuild.NODE_COMPONENTS.values() if not c.is_built()]
    if unbuilt and shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        return f"{', '.join(unbuilt)} not built (~/.cache/edgekit) and no Go toolchain to build them"
    if shutil.which("skopeo") is None:
        return "skopeo is missing (apt-get install skopeo): it copies the agent image to the registry"
    if inspect_built(build_plan()) is None:
        tools = [t for t in BUILD_TOOLS if shutil.which(t) is None]
        if tools:
            return (f"the agent image is not built (scripts/build-agent-image) and {', '.join(tools)} "
                    f"to build it is missing")
    return None


def host_address() -> str | None:
    """The host's first global IPv4 address (not a pod bridge's)."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True,
                             check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = [a for a in re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out) if not a.startswith("10.244.")]
    return found[0] if found else None


def prepare_spool(app: str) -> bool:
    """The agent's hostPath spool, owned by its uid; True when this call made ``SPOOL_ROOT``.
    The real nodes share the host's filesystem, so it is prepared on the host."""
    made_root = not SPOOL_ROOT.exists()
    spool = SPOOL_ROOT / app / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    for path in (SPOOL_ROOT / app, spool):
        os.chown(path, AGENT_UID, AGENT_UID)
    spool.chmod(0o700)
    return made_root


def remove_spool(app: str, root_too: bool) -> None:
    shutil.rmtree(SPOOL_ROOT / app, ignore_errors=True)
    if root_too:
        with contextlib.suppress(OSError):
            SPOOL_ROOT.rmdir()  # only when nothing else keeps a spool there


def _shifted(probe: bytes) -> bytes:
    """The probe archive with every float output moved by ``PROBE_SHIFT``; inputs untouched."""
    from edgekit.image.building import _npz_bytes

    with np.load(io.BytesIO(probe), allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    for key, value in arrays.items():
        if key.startswith("output/") and value.dtype.kind == "f":
            arrays[key] = (value + PROBE_SHIFT).astype(value.dtype)
    return _npz_bytes(arrays)


@contextlib.contextmanager
def wrong_probe() -> Iterator[None]:
    """While active, ``edgekit.image.building.package`` writes golden outputs the model does not
    reproduce (with the probe's digest in the metadata updated, so the image is consistent and
    signs and verifies: only running the model shows the fault)."""
    import hashlib

    from edgekit.image import building

    original: Callable[..., Any] = building.build_metadata

    def build_metadata(*args: Any, **kwargs: Any) -> tuple[Any, bytes]:
        meta, probe = original(*args, **kwargs)
        bad = _shifted(probe)
        ref = replace(meta.probe, sha256=hashlib.sha256(bad).hexdigest(), size=len(bad))
        return replace(meta, probe=ref), bad

    building.build_metadata = build_metadata
    try:
        yield
    finally:
        building.build_metadata = original


def readiness(pod_ip: str, *, port: int = 8080, timeout: float = 5) -> tuple[int, str]:
    """The agent's own readiness answer: (HTTP status, its reason or status text)."""
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://{pod_ip}:{port}/v2/health/ready", timeout=timeout) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            return exc.code, str(json.loads(body).get("reason") or body)
        except ValueError:
            return exc.code, body


def infer(pod_ip: str, model: str, batch: np.ndarray[Any, Any], input_name: str, *, port: int = 8080,
          timeout: float = 30) -> dict[str, Any]:
    """One OIP v2 inference request to an agent pod."""
    body = json.dumps({"inputs": [{"name": input_name, "shape": list(batch.shape), "datatype": "FP32",
                                   "data": batch.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"http://{pod_ip}:{port}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result
