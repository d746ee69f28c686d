"""The edgekit-agent image built here: the plan (pure), a missing tool (one line, exit 77), and the real
linux/amd64 + linux/arm64 index (mmdebstrap, buildah, skopeo): platforms, configs, files, the amd64
image run with buildah and runc, the arm64 one inspected only (onnxruntime segfaults under qemu-user),
and a push to the local registry."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.rehearsal.agentimage import (
    AGENT,
    CONTROLLER,
    PLATFORMS,
    AgentImageError,
    Platform,
    image_index,
    is_context_file,
    parse_platform,
    plan,
    recipe_named,
)

ROOT = Path(__file__).resolve().parents[1]
AMD64, ARM64 = Platform("linux", "amd64"), Platform("linux", "arm64")
ELF_MACHINE = {62: "x86-64", 183: "aarch64"}
FILES = {"agent/pyproject.toml": b'[project]\nname = "edgekit-agent"\nversion = "0.1.0"\n',
         "agent/image-constraints.txt": b"numpy==2.4.6\n", "Dockerfile.arm64": b"FROM scratch\n",
         "agent/edgekit_agent/cli.py": b"print()\n"}


# --- the plan ---------------------------------------------------------------------------------------
def test_the_key_follows_every_input_and_nothing_else() -> None:
    base = plan(FILES, apt_sources=b"deb mirror bookworm main")
    assert base.key == plan(dict(reversed(FILES.items())), apt_sources=b"deb mirror bookworm main").key
    variants = [
        plan({**FILES, "agent/edgekit_agent/cli.py": b"print(1)\n"}, apt_sources=b"deb mirror bookworm main"),
        plan({**FILES, "agent/image-constraints.txt": b"numpy==2.4.5\n"}, apt_sources=b"deb mirror bookworm main"),
        plan({**FILES, "Dockerfile.arm64": b"FROM scratch\nUSER 1\n"}, apt_sources=b"deb mirror bookworm main"),
        plan(FILES, apt_sources=b"deb other bookworm main"),
        plan(FILES, apt_sources=b"deb mirror bookworm main", release="trixie"),
        plan(FILES, apt_sources=b"deb mirror bookworm main", platforms=[AMD64]),
    ]
    assert len({base.key, *(v.key for v in variants)}) == len(variants) + 1
    assert base.version == "0.1.0" and base.platforms == PLATFORMS
    rootfs = base.rootfs_for(ARM64)
    assert rootfs.dir_name.startswith("agent-rootfs-bookworm-arm64-")
    assert rootfs.mmdebstrap_env() == {"SOURCE_DATE_EPOCH": str(base.epoch)}  # a reproducible rootfs
    assert rootfs.key != type(rootfs)(rootfs.release, ARM64, rootfs.sources, epoch=0).key
    assert rootfs.key != base.rootfs_for(AMD64).key


def test_context_is_the_agent_package_its_pins_and_the_dockerfile() -> None:
    assert all(is_context_file(p) for p in FILES)
    for outside in ("edgekit/cli/dev.py", "agent/edgekit_agent/__pycache__/cli.cpython-311.pyc", "README.md"):
        assert not is_context_file(outside)
    with pytest.raises(AgentImageError, match=r"lacks agent/image-constraints\.txt"):
        plan({k: v for k, v in FILES.items() if "constraints" not in k}, apt_sources=b"")


CONTROLLER_FILES = {"pyproject.toml": b'[project]\nname = "edgekit"\nversion = "0.2.0"\n', "README.md": b"# edgekit\n",
                    "image-constraints.txt": b"kubernetes==37.0.2\n", "Dockerfile.controller": b"FROM scratch\n",
                    "edgekit/cli/controller.py": b"print()\n", "agent/pyproject.toml": FILES["agent/pyproject.toml"],
                    "agent/edgekit_agent/cli.py": b"print()\n"}


def test_the_controller_image_is_the_same_builder_with_its_own_recipe() -> None:
    """One builder, two recipes: the controller's plan starts from the agent's rootfs (one cache),
    has its own key, folder, Dockerfile and default platform (amd64), and follows its own inputs."""
    agent = plan(FILES, apt_sources=b"deb mirror bookworm main")
    ctl = plan(CONTROLLER_FILES, apt_sources=b"deb mirror bookworm main", recipe=CONTROLLER)
    assert recipe_named("controller") is CONTROLLER and recipe_named("agent") is AGENT
    assert ctl.version == "0.2.0" and ctl.platforms == (AMD64,)
    assert ctl.dir_name.startswith("controller-image-") and ctl.key != agent.key
    assert ctl.rootfs_for(AMD64).dir_name == agent.rootfs_for(AMD64).dir_name  # the same cached rootfs
    bud = ctl.bud_argv(AMD64, "/ctx", "/ca.crt")
    assert bud[bud.index("-f") + 1] == "/ctx/Dockerfile.controller"
    assert ctl.build_ref(AMD64) == "localhost/edgekit:amd64"
    both = plan(CONTROLLER_FILES, apt_sources=b"deb mirror bookworm main", recipe=CONTROLLER, platforms=PLATFORMS)
    assert both.platforms == PLATFORMS and both.key != ctl.key
    for changed in ({"edgekit/cli/controller.py": b"print(2)\n"}, {"agent/edgekit_agent/cli.py": b"print(1)\n"},
                    {"image-constraints.txt": b"kubernetes==37.0.1\n"}, {"README.md": b"# edgekit!\n"}):
        assert plan({**CONTROLLER_FILES, **changed}, apt_sources=b"deb mirror bookworm main",
                    recipe=CONTROLLER).key != ctl.key, changed
    assert all(is_context_file(p, CONTROLLER) for p in CONTROLLER_FILES)
    for outside in ("tests/test_cli.py", "edgekit/__pycache__/cli.cpython-311.pyc", "Dockerfile.arm64", "docs/x.md",
                    "agent/image-constraints.txt"):
        assert not is_context_file(outside, CONTROLLER)
    with pytest.raises(AgentImageError, match=r"lacks README\.md"):
        plan({k: v for k, v in CONTROLLER_FILES.items() if k != "README.md"}, apt_sources=b"", recipe=CONTROLLER)
    with pytest.raises(AgentImageError, match=r"unknown image 'operator'"):
        recipe_named("operator")


@pytest.mark.parametrize("recipe", [AGENT, CONTROLLER], ids=lambda r: r.name)
def test_the_dockerfile_copies_exactly_what_the_recipe_hashes(recipe: Any) -> None:
    """The cache key covers every file the public Dockerfile copies, and its .dockerignore lets
    each of them through: the image cannot change without its key changing."""
    import re

    text = re.sub(r"\\\n", " ", (ROOT / recipe.dockerfile).read_text())
    sources = [src for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line
               for src in line.split()[1:-1]]
    assert sources
    ignore = (ROOT / f"{recipe.dockerfile}.dockerignore").read_text().splitlines()
    for src in sources:
        path = ROOT / src
        assert path.exists(), src
        if path.is_dir():
            assert f"{src}/" in recipe.packages and f"!{src}/**" in ignore, src
        else:
            assert is_context_file(src, recipe) and f"!{src}" in ignore, src
    from edgekit.rehearsal.agentbuilding import context_files

    files = context_files(ROOT, recipe)
    assert set(recipe.required) <= set(files) and all(is_context_file(p, recipe) for p in files)


def test_the_controller_constraints_pin_everything_its_pyprojects_need() -> None:
    """image-constraints.txt pins, at one exact version each, every dependency of edgekit and
    edgekit-agent (their own names excepted: the image builds those wheels)."""
    from edgekit.rehearsal.agentbuilding import dependency_roots

    pins = {}
    for line in (ROOT / CONTROLLER.constraints).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and name not in pins, line
            pins[name] = version
    roots = dependency_roots(CONTROLLER)
    assert "kubernetes" in roots and "onnxruntime" in roots and "edgekit-agent" not in roots
    assert not [r for r in roots if r.lower().replace("_", "-") not in pins]
    agent_pins = dict(line.split("==") for line in (ROOT / AGENT.constraints).read_text().splitlines()
                      if line and not line.startswith("#"))
    # one venv of both packages: the agent's libraries at the versions its own image has
    assert {k: pins[k] for k in agent_pins} == agent_pins


def test_the_build_commands_fix_timestamps_and_use_only_local_images() -> None:
    p = plan(FILES, apt_sources=b"x")
    bud = p.bud_argv(ARM64, "/ctx", "/etc/ssl/certs/ca-certificates.crt")
    assert bud[:3] == ["bud", "--pull=never", "--network=host"]
    assert ["--timestamp", str(p.epoch)] == bud[bud.index("--timestamp"):bud.index("--timestamp") + 2]
    assert f"SOURCE_DATE_EPOCH={p.epoch}" in bud and "PLATFORM=linux/arm64" in bud
    assert f"BASE_IMAGE={p.base_ref(ARM64)}" in bud
    commit = p.base_steps(AMD64, "c1", "/r.tar")[-1]
    assert commit[:3] == ["commit", "--timestamp", str(p.epoch)]
    assert p.push_argv(AMD64, "/out")[-1] == "oci:/out:0.1.0-amd64"


def test_the_index_is_canonical() -> None:
    a = (AMD64, {"digest": "sha256:" + "a" * 64, "size": 10, "mediaType": "x"})
    b = (ARM64, {"digest": "sha256:" + "b" * 64, "size": 20})
    data = image_index([b, a])
    assert data == image_index([a, b])
    index = json.loads(data)
    assert [m["platform"] for m in index["manifests"]] == [{"architecture": "amd64", "os": "linux"},
                                                           {"architecture": "arm64", "os": "linux"}]
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"


def test_unknown_platform_is_refused() -> None:
    assert parse_platform("Linux/ARM64") == ARM64
    with pytest.raises(AgentImageError, match=r"unsupported platform 'linux/riscv64'"):
        parse_platform("linux/riscv64")


def _edgekit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "agent")])},
                          check=False)


def test_a_missing_tool_is_one_line_and_exit_77(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("buildah", "runc", "newuidmap", "skopeo"):  # everything but mmdebstrap
        if found := _which(tool):
            (bin_dir / tool).symlink_to(found)
    # an empty cache: nothing is built, so the tools are needed
    env = dict(os.environ, PATH=str(bin_dir), EDGEKIT_CACHE_DIR=str(tmp_path / "cache"))
    result = _edgekit("dev", "agent-image", "build", "--platform", "linux/amd64", env=env)
    assert result.returncode == 77, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: cannot build the agent image, missing: "
                                                    "mmdebstrap (apt package mmdebstrap)"), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cache" / "logs").exists()
    bad = _edgekit("dev", "agent-image", "build", "--platform", "linux/s390x", env=env)
    assert bad.returncode == 77 and "unsupported platform" in bad.stderr


def _which(tool: str) -> str | None:
    import shutil

    return shutil.which(tool)


# --- the real build ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built() -> Iterator[Any]:
    from edgekit.rehearsal.agentbuilding import build

    missing = [t for t in ("mmdebstrap", "buildah", "runc", "skopeo") if _which(t) is None]
    if missing:
        pytest.fail(f"the agent image cannot be built here, missing {', '.join(missing)} (scripts/setup)")
    yield build(say=lambda m: None)  # cached after the first time (scripts/setup builds it)


def _skopeo_json(*args: str) -> Any:
    out = subprocess.run(["skopeo", "inspect", *args], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def _layer_files(built: Any, platform: Platform) -> dict[str, tarfile.TarInfo | bytes]:
    """Path -> TarInfo for every file of one image's layers (upper layers win); the bytes of the ELF
    candidates are read on the way, since a layer can be read only once front to back."""
    manifest = _skopeo_json("--raw", built.reference(platform))
    files: dict[str, tarfile.TarInfo | bytes] = {}
    for layer in manifest["layers"]:
        blob = built.layout / "blobs" / "sha256" / layer["digest"].split(":")[1]
        with gzip.open(blob) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                name = member.name.lstrip("./")
                files[name] = member
                if member.isfile() and name.startswith("usr/bin/python3"):
                    handle = archive.extractfile(member)
                    files[name + "#head"] = handle.read(64) if handle else b""
    return files


def _resolve(files: dict[str, Any], path: str) -> str:
    for _ in range(10):
        member = files[path]
        if not member.issym():
            return path
        target = member.linkname
        path = target.lstrip("/") if target.startswith("/") else os.path.normpath(
            os.path.join(os.path.dirname(path), target))
    raise AssertionError(f"symlink loop at {path}")


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(5400)  # a cold build makes two Debian rootfs and runs pip under qemu
def test_index_holds_amd64_and_arm64(built: Any) -> None:
    index = _skopeo_json("--raw", built.reference())
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert sorted((m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]) == [
        ("linux", "amd64"), ("linux", "arm64")]
    for platform in (AMD64, ARM64):
        config = _skopeo_json("--config", built.reference(platform))
        assert (config["os"], config["architecture"]) == ("linux", platform.arch)
        assert config["config"]["Entrypoint"] == ["edgekit-agent"]
        assert config["config"]["Cmd"] == ["serve", "--config", "/etc/edgekit-agent/config.json"]
        assert config["config"]["User"].split(":")[0] == "10001"
        assert config["created"].startswith("2026-01-01T00:00:00")  # SOURCE_DATE_EPOCH, not the build's day
        manifest = _skopeo_json("--raw", built.reference(platform))
        compressed = sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]
        assert compressed <= 250 * 1000 * 1000, f"{platform}: {compressed / 1e6:.0f} MB compressed"


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_amd64_image_runs_the_agent(built: Any) -> None:
    from edgekit.rehearsal.agentbuilding import run_in_image

    assert run_in_image(built, AMD64, ["edgekit-agent", "--version"]).strip().endswith(built.plan.version)
    pins = dict(ln.split("==") for ln in (ROOT / "agent" / "image-constraints.txt").read_text().splitlines()
                if "==" in ln and not ln.startswith("#"))
    out = run_in_image(built, AMD64, ["python", "-c", "import onnxruntime, numpy, os; "
                                      "print(onnxruntime.__version__, numpy.__version__, os.getuid())"])
    assert out.split() == [pins["onnxruntime"], pins["numpy"], "10001"]


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_arm64_image_holds_aarch64_programs(built: Any) -> None:
    # Inspected, not run: under qemu-user 7.2 `import onnxruntime` segfaults (docs/agent-image.md).
    files = _layer_files(built, ARM64)
    for path in ("opt/edgekit-agent/bin/edgekit-agent", "opt/edgekit-agent/pyvenv.cfg",
                 "var/lib/edgekit-agent/spool"):
        assert path in files, path
    site = "opt/edgekit-agent/lib/python3.11/site-packages/"
    assert any(p.startswith(site + "onnxruntime/capi/onnxruntime_pybind11_state") for p in files)
    assert any(p.startswith(site + "edgekit_agent-0.1.0.dist-info/") for p in files)
    assert not any(p.startswith(site + "edgekit/") for p in files)  # the central package stays out
    python = _resolve(files, "opt/edgekit-agent/bin/python")
    head = files[python + "#head"]
    assert isinstance(head, bytes) and head[:4] == b"\x7fELF"
    assert ELF_MACHINE.get(int.from_bytes(head[18:20], "little")) == "aarch64", python
    spool = files["var/lib/edgekit-agent/spool"]
    assert isinstance(spool, tarfile.TarInfo) and spool.uid == 10001
    # the same check tells the other platform apart
    amd64 = _layer_files(built, AMD64)
    head = amd64[_resolve(amd64, "opt/edgekit-agent/bin/python") + "#head"]
    assert isinstance(head, bytes) and ELF_MACHINE.get(int.from_bytes(head[18:20], "little")) == "x86-64"


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.registry
@pytest.mark.timeout(5400)
def test_push_copies_the_whole_index(built: Any, registry: Any) -> None:
    result = _edgekit("dev", "agent-image", "push", "--registry", registry.host, "--output", "json",
                      env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)["pushed"]
    assert pushed == f"{registry.host}/edgekit-agent@{built.index_digest}"
    remote = _skopeo_json("--raw", "--tls-verify=false", f"docker://{pushed}")
    local = _skopeo_json("--raw", built.reference())
    assert remote == local
    for entry in remote["manifests"]:
        config = _skopeo_json("--config", "--tls-verify=false",
                              f"docker://{registry.host}/edgekit-agent@{entry['digest']}")
        assert config["architecture"] == entry["platform"]["architecture"]


# --- the controller's image, from the same builder ------------------------------------------------------
@pytest.fixture(scope="module")
def built_controller() -> Iterator[Any]:
    from edgekit.rehearsal.agentbuilding import build

    missing = [t for t in ("mmdebstrap", "buildah", "runc", "skopeo") if _which(t) is None]
    if missing:
        pytest.fail(f"the controller image cannot be built here, missing {', '.join(missing)} (scripts/setup)")
    yield build(say=lambda m: None, recipe=CONTROLLER)  # cached after the first time (scripts/setup builds it)


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_controller_image_runs_edgekit_as_uid_10001(built_controller: Any) -> None:
    from edgekit.rehearsal.agentbuilding import run_in_image

    index = _skopeo_json("--raw", built_controller.reference())
    assert [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]] == [("linux", "amd64")]
    config = _skopeo_json("--config", built_controller.reference(AMD64))
    assert config["config"]["Entrypoint"] == ["edgekit"] and config["config"]["Cmd"] == ["controller"]
    assert config["config"]["User"].split(":")[0] == "10001"
    assert config["created"].startswith("2026-01-01T00:00:00")
    manifest = _skopeo_json("--raw", built_controller.reference(AMD64))
    compressed = sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]
    assert compressed <= 250 * 1000 * 1000, f"{compressed / 1e6:.0f} MB compressed"
    assert run_in_image(built_controller, AMD64, ["edgekit", "--version"]).strip().endswith(
        built_controller.plan.version)
    pins = dict(ln.split("==") for ln in (ROOT / CONTROLLER.constraints).read_text().splitlines()
                if "==" in ln and not ln.startswith("#"))
    out = run_in_image(built_controller, AMD64, [
        "python", "-c", "import importlib.metadata as md, os, edgekit.rollout.service, edgekit_agent; "
        "print(md.version('kubernetes'), md.version('onnxruntime'), os.getuid())"])
    assert out.split() == [pins["kubernetes"], pins["onnxruntime"], "10001"]
