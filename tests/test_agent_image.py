"""Dockerfile.arm64: what can be checked without Docker (files it copies, stages, user, healthcheck,
and that the agent wheel it installs builds and holds only the agent)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.arm64"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_copied_files_exist() -> None:
    copies = [rest for op, rest in instructions() if op == "COPY" and not rest.startswith("--from")]
    assert copies
    for rest in copies:
        *sources, _dest = rest.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile.arm64 copies {src}, which does not exist"
    ignore = (ROOT / "Dockerfile.arm64.dockerignore").read_text()
    for src in ("agent/edgekit_agent/**", "agent/pyproject.toml", "agent/image-constraints.txt"):
        assert f"!{src}" in ignore


def global_args() -> dict[str, str]:
    """The ARG defaults before the first FROM, expanded in order (as docker does)."""
    args: dict[str, str] = {}
    for op, rest in instructions():
        if op == "FROM":
            break
        if op == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), value)
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def test_defaults_keep_the_public_arm64_recipe() -> None:
    # scripts/build-agent-image sets PLATFORM and BASE_IMAGE; without them it is the docker buildx recipe
    args = global_args()
    assert args["PLATFORM"] == "linux/arm64"
    assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    build_stage = [rest for op, rest in instructions() if op in ("ENV", "ARG")]
    assert any("PIP_CONSTRAINT=/src/agent/image-constraints.txt" in rest for rest in build_stage)
    assert build_stage.count("SOURCE_DATE_EPOCH") == 2  # both stages see it (wheel, useradd dates)


def test_constraints_pin_every_dependency_exactly() -> None:
    pins = [ln for ln in (ROOT / "agent" / "image-constraints.txt").read_text().splitlines()
            if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", ln) for ln in pins), pins
    names = {ln.split("==")[0] for ln in pins}
    assert {"onnxruntime", "numpy", "paho-mqtt", "cryptography", "setuptools"} <= names


def test_stages_user_and_healthcheck() -> None:
    ops = instructions()
    froms = [expand(rest, global_args()) for op, rest in ops if op == "FROM"]
    assert len(froms) == 2 and all(f.startswith("--platform=linux/arm64 python:") and "slim" in f for f in froms)
    users = [rest for op, rest in ops if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (health,) = [rest for op, rest in ops if op == "HEALTHCHECK"]
    assert "/v2/health/ready" in health
    entry = next(rest for op, rest in ops if op == "ENTRYPOINT")
    assert "edgekit-agent" in entry
    assert next(rest for op, rest in ops if op == "CMD").startswith('["serve"')
    runs = " ".join(rest for op, rest in ops if op == "RUN")
    assert "pip wheel --no-deps --wheel-dir /wheels ./agent" in runs
    assert "edgekit[" not in runs and " ./ " not in runs  # the central package is never installed


def test_agent_wheel_builds_and_holds_only_the_agent(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "--wheel-dir", str(tmp_path), str(ROOT / "agent")], check=True, timeout=300)
    (wheel,) = tmp_path.glob("edgekit_agent-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "edgekit_agent/cli.py" in names
    assert any(n.startswith("edgekit_agent/protocol/schemas/") and n.endswith(".json") for n in names)
    assert not any(n.startswith("edgekit/") for n in names)
    assert "edgekit-agent = edgekit_agent.cli:main" in entry_points
    requires = [ln.split(":", 1)[1].strip().lower() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    assert not [r for r in requires if r.startswith(("kubernetes", "click", "rich"))], requires
    assert {re.split(r"[<>=! ;\[]", r)[0] for r in requires} <= {"onnxruntime", "numpy", "paho-mqtt", "cryptography"}


@pytest.mark.parametrize("doc", ["docs/agent-image.md"])
def test_doc_explains_the_buildx_command(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert "docker buildx build --platform linux/arm64 -f Dockerfile.arm64" in text
