"""Attacks on the device side of model images, against the real ``edgekit-agent`` CLI and agent process
and a real docker-registry: a forged or copied provenance record, a record or stray file shipped in the
layer, a model file tampered with after fetch, a tar bomb, too many entries and data after the tar end.
Each is refused with one error line and its own exit code, and leaves no folder behind."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from edgekit_agent.errors import LayerTooLargeError
from edgekit_agent.modelmeta import METADATA_FILE, MODEL_FILE, PROBE_FILE, file_sha256, load_metadata
from edgekit_agent.oci import current_platform, parse_reference
from edgekit_agent.oci.mediatypes import (
    ANN_REF_NAME,
    LABEL_METADATA,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    canonical_json,
    descriptor,
    sha256_digest,
)
from edgekit_agent.oci.unpacking import layer_budget, unpack_model_layer
from edgekit_agent.provenance import CHAIN_DIR

from edgekit.rehearsal.registry import DockerRegistry
from tests.fixtures.agent import (
    AgentProcess,
    SignedImage,
    build_model_folder,
    make_keypair,
    run_cli,
    sign_layout,
    wait_until,
)

MiB = 1 << 20


def _fails(result: Any, code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.startswith("edgekit-agent: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert text in result.stderr, result.stderr


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --- the forged record and the tampered folder (offline, `edgekit-agent verify`) ------------------------
@pytest.fixture
def fetched(digits_signed_layout: SignedImage, tmp_path: Path) -> Path:
    dest = tmp_path / "fetched"
    result = run_cli("fetch", str(digits_signed_layout.layout), "--to", str(dest),
                     "--public-key", str(digits_signed_layout.public_key))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (dest / CHAIN_DIR).iterdir()) == [
        "config.json", "index.json", "manifest.json", "record.json", "signature.json"]
    return dest


def test_a_fetched_folder_verifies_offline(fetched: Path, digits_signed_layout: SignedImage) -> None:
    result = run_cli("verify", str(fetched), "--public-key", str(digits_signed_layout.public_key),
                     "--image", f"127.0.0.1:9/nowhere/digits@{digits_signed_layout.digest}")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["digest"] == digits_signed_layout.digest and out["signature_verified"] is True


def test_copied_chain_beside_another_model_is_refused(fetched: Path, digits_signed_layout: SignedImage,
                                                      conv320_model: Path, tmp_path: Path) -> None:
    # Everything in the chain is public: copying it beside an unsigned model proves nothing.
    forged = build_model_folder(conv320_model, tmp_path / "forged", name="digits", version="1.0.0")
    shutil.copytree(fetched / CHAIN_DIR, forged / CHAIN_DIR)
    key = str(digits_signed_layout.public_key)
    _fails(run_cli("verify", str(forged), "--public-key", key), 80,
           "edgekit.json differs from the metadata the image config records")
    # ... and with the signed edgekit.json copied too, the files do not match its hashes
    shutil.copyfile(fetched / METADATA_FILE, forged / METADATA_FILE)
    _fails(run_cli("verify", str(forged), "--public-key", key), 39, "edgekit.json says")


def test_old_style_record_of_public_values_is_refused(fetched: Path, digits_signed_layout: SignedImage,
                                                       conv320_model: Path, tmp_path: Path) -> None:
    # The record earlier versions trusted: image digest and key id, both public.
    forged = build_model_folder(conv320_model, tmp_path / "forged", name="digits", version="1.0.0")
    from edgekit_agent.oci import key_fingerprint, load_public_key

    kid = key_fingerprint(load_public_key(digits_signed_layout.public_key))
    (forged / ".edgekit-image.json").write_text(json.dumps({
        "image": f"local/model@{digits_signed_layout.digest}", "digest": digits_signed_layout.digest,
        "layer_digest": None, "signature": {"key_sha256": kid}}))
    _fails(run_cli("verify", str(forged), "--public-key", str(digits_signed_layout.public_key)), 31,
           "no verified signature record")


def test_signature_of_another_key_or_none_is_refused(fetched: Path, digits_signed_layout: SignedImage,
                                                     tmp_path: Path) -> None:
    _fails(run_cli("verify", str(fetched), "--public-key", str(digits_signed_layout.other_public_key)), 80,
           "not verified with key")
    unsigned = tmp_path / "unsigned"
    # no key: refused by default, before anything is fetched; allowed only when asked
    _fails(run_cli("fetch", str(digits_signed_layout.layout), "--to", str(unsigned)), 85, "no public key")
    assert not unsigned.exists()
    assert run_cli("fetch", str(digits_signed_layout.layout), "--to", str(unsigned), "--allow-unsigned").returncode == 0
    _fails(run_cli("verify", str(unsigned)), 85, "unsigned models are refused")
    assert run_cli("verify", str(unsigned), "--allow-unsigned").returncode == 0
    _fails(run_cli("verify", str(unsigned), "--public-key", str(digits_signed_layout.public_key)), 80,
           "keeps no signature")
    # a kept index swapped for another one is not what the signature names
    (fetched / CHAIN_DIR / "index.json").write_bytes(b'{"manifests": []}')
    _fails(run_cli("verify", str(fetched), "--public-key", str(digits_signed_layout.public_key)), 80,
           "its signature names")


def _image_volume_with_kept_chain(fetched: Path, tmp_path: Path) -> tuple[Path, Path]:
    """What a device holds for an image-volume model: the folder without a chain, and its chain kept
    by the agent's own writer in ``<chain_dir>/<digest hex>/``."""
    from edgekit_agent.keeping import keep_chain, kept_chain_folder
    from edgekit_agent.provenance import read_chain

    chain = read_chain(fetched)
    assert chain is not None
    chains = tmp_path / "chains"
    keep_chain(kept_chain_folder(chains, chain.digest), chain)
    shutil.rmtree(fetched / CHAIN_DIR)
    return fetched, chains


def test_an_image_volume_verifies_offline_against_its_kept_chain(fetched: Path, digits_signed_layout: SignedImage,
                                                                 tmp_path: Path) -> None:
    """`verify --chain-dir`: no registry (the image names a closed port), the kept chain decides."""
    folder, chains = _image_volume_with_kept_chain(fetched, tmp_path)
    key, digest = str(digits_signed_layout.public_key), digits_signed_layout.digest
    image = f"127.0.0.1:9/nowhere/digits@{digest}"
    result = run_cli("verify", str(folder), "--public-key", key, "--image", image, "--chain-dir", str(chains))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["digest"] == digest and out["signature_verified"] is True
    # without the kept chain: refused, and the registry is not asked (that would be exit 21)
    _fails(run_cli("verify", str(folder), "--public-key", key, "--image", image), 31, "--chain-dir")
    _fails(run_cli("verify", str(folder), "--public-key", key, "--image", image, "--chain-dir",
                   str(tmp_path / "empty")), 80, "no chain of sha256:")
    _fails(run_cli("verify", str(folder), "--public-key", key, "--chain-dir", str(chains)), 2, "needs --image")
    # the kept chain needs the configured key
    _fails(run_cli("verify", str(folder), "--public-key", str(digits_signed_layout.other_public_key),
                   "--image", image, "--chain-dir", str(chains)), 80, "not verified with key")


def test_a_tampered_kept_chain_fails_verify(fetched: Path, digits_signed_layout: SignedImage,
                                            tmp_path: Path) -> None:
    folder, chains = _image_volume_with_kept_chain(fetched, tmp_path)
    kept = chains / digits_signed_layout.digest.split(":")[1]
    args = ["verify", str(folder), "--public-key", str(digits_signed_layout.public_key),
            "--image", f"127.0.0.1:9/nowhere/digits@{digits_signed_layout.digest}", "--chain-dir", str(chains)]
    config = kept / CHAIN_DIR / "config.json"
    intact = config.read_bytes()
    config.write_bytes(intact.replace(b'"rootfs"', b'"rootfs" ', 1))
    _fails(run_cli(*args), 80, "another config")
    assert f"kept chain {kept}" in run_cli(*args).stderr
    config.write_bytes(intact)
    assert run_cli(*args).returncode == 0
    # the chain of another image filed under this digest
    (kept / CHAIN_DIR / "index.json").write_bytes(b'{"manifests": []}')
    _fails(run_cli(*args), 80, "keeps the chain of sha256:")


def test_chains_to_remove_keeps_those_in_use_and_the_previous_one() -> None:
    from edgekit_agent.keeping import chains_to_remove

    kept = {"a": 1.0, "b": 4.0, "c": 3.0, "d": 2.0}
    assert chains_to_remove(kept, {"a"}) == ["c", "d"]  # b: the most recently used other one
    assert chains_to_remove(kept, {"a", "c"}) == ["d"]  # serving a, shadow c, previous b
    assert chains_to_remove(kept, {"b"}, previous=0) == ["a", "c", "d"]
    assert chains_to_remove(kept, {"zz"}, previous=2) == ["a", "d"]
    assert chains_to_remove({}, {"a"}) == []


def test_the_agent_removes_chains_of_images_it_no_longer_runs(digits_model: Path, tmp_path: Path) -> None:
    """Three image volumes, loaded one after the other by the real agent core: after each load the
    chains kept are the one loaded and the one before (a rollback verifies offline); older go."""
    from edgekit_agent.core import AgentCore
    from edgekit_agent.keeping import keep_chain, kept_chain_folder
    from edgekit_agent.loading import fetch_model
    from edgekit_agent.provenance import read_chain
    from edgekit_agent.settings import load_settings

    from edgekit.image.building import PackageSettings, package

    key, pub = make_keypair(tmp_path / "keys")
    chains = tmp_path / "chains"
    volumes: dict[str, tuple[Path, str]] = {}
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        image = package(digits_model, PackageSettings(name="digits", version=version,
                                                      created="2026-01-01T00:00:00Z"), tmp_path / version)
        sign_layout(image.path, image.digest, key)
        folder = tmp_path / f"volume-{version}"
        fetch_model(str(image.path), folder, public_key=str(pub))
        volumes[version] = (folder, image.digest)

    def load(version: str, *, keep_first: bool = False) -> AgentCore:
        folder, digest = volumes[version]
        if keep_first:  # what the agent keeps at an image's first load (its registry fetch)
            chain = read_chain(folder)
            assert chain is not None
            keep_chain(kept_chain_folder(chains, digest), chain)
            shutil.rmtree(folder / CHAIN_DIR)
        core = AgentCore(load_settings(overrides={
            "device": "prune-1", "group": "g", "spool_dir": "", "model_dir": str(folder), "public_key": str(pub),
            # a registry that is not there: every load below verifies against a kept chain alone
            "image": f"127.0.0.1:9/models/digits@{digest}", "chain_dir": str(chains)}))
        assert core.load(), core.rejected
        return core

    def kept() -> set[str]:
        return {next(v for v, (_, d) in volumes.items() if d.endswith(p.name)) for p in chains.iterdir()
                if not p.name.startswith(".")}

    load("1.0.0", keep_first=True)
    load("2.0.0", keep_first=True)
    assert kept() == {"1.0.0", "2.0.0"}
    (chains / f".{'0' * 64}.tmp-x").mkdir()  # another load keeping its chain right now
    load("3.0.0", keep_first=True)
    assert kept() == {"2.0.0", "3.0.0"}
    # the chain being written is left alone; nothing half-removed stays behind
    assert sorted(p.name for p in chains.iterdir() if p.name.startswith(".")) == [f".{'0' * 64}.tmp-x"]
    (chains / f".{'0' * 64}.tmp-x").rmdir()
    load("2.0.0")  # the rollback: verified offline, the newer one stays as its previous
    assert kept() == {"2.0.0", "3.0.0"}
    core = AgentCore(load_settings(overrides={
        "device": "prune-1", "group": "g", "spool_dir": "", "model_dir": str(volumes["1.0.0"][0]),
        "public_key": str(pub), "image": f"127.0.0.1:9/models/digits@{volumes['1.0.0'][1]}",
        "chain_dir": str(chains)}))
    assert not core.load()  # its chain is gone: the (absent) registry would have to be asked
    assert kept() == {"2.0.0", "3.0.0"}


def test_tampered_model_is_refused_at_the_next_load(fetched: Path, digits_signed_layout: SignedImage,
                                                    conv320_model: Path) -> None:
    key = str(digits_signed_layout.public_key)
    # the model swapped and edgekit.json rewritten to its hashes: the signed config disagrees
    shutil.copyfile(conv320_model, fetched / MODEL_FILE)
    meta = json.loads((fetched / METADATA_FILE).read_text())
    meta["model"]["sha256"], meta["model"]["size"] = file_sha256(fetched / MODEL_FILE)
    (fetched / METADATA_FILE).write_text(json.dumps(meta))
    _fails(run_cli("verify", str(fetched), "--public-key", key), 80, "differs from the metadata")


def test_serve_reverifies_an_existing_folder_offline(fetched: Path, digits_signed_layout: SignedImage,
                                                     agent_process: Callable[..., AgentProcess]) -> None:
    # The registry named in `image` does not exist: the folder is not fetched again, its kept chain decides.
    settings = {"device": f"prov-{uuid.uuid4().hex[:6]}", "group": "prov", "model_dir": str(fetched),
                "image": f"127.0.0.1:9/nowhere/digits@{digits_signed_layout.digest}",
                "public_key": str(digits_signed_layout.public_key), "spool_dir": None}
    agent = agent_process(settings, wait="ready", name="good")
    assert agent.terminate() == 0
    data = bytearray((fetched / PROBE_FILE).read_bytes())
    data[-1] ^= 0x01
    (fetched / PROBE_FILE).write_bytes(bytes(data))
    meta = json.loads((fetched / METADATA_FILE).read_text())
    meta["probe"]["sha256"] = file_sha256(fetched / PROBE_FILE)[0]
    (fetched / METADATA_FILE).write_text(json.dumps(meta))
    agent = agent_process(settings, name="tampered")
    wait_until(lambda: "not tied to a signed image" in str(agent.get("/v2/health/ready")[1]), timeout=60)
    assert agent.get("/v2/health/ready")[0] == 503
    assert agent.terminate() == 0


# --- crafted layers through a real registry and `edgekit-agent fetch` ------------------------------------
def _tar(entries: list[tuple[str, bytes | None]], *, tail: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue() + tail


def _model_entries(folder: Path) -> list[tuple[str, bytes | None]]:
    return [("model", None)] + [(f"model/{n}", (folder / n).read_bytes()) for n in (METADATA_FILE, MODEL_FILE,
                                                                                   PROBE_FILE)]


@dataclass(frozen=True)
class Crafted:
    key: Any
    public_key: Path
    root: Path
    folder: Path


@pytest.fixture(scope="module")
def crafted(digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Crafted:
    root = tmp_path_factory.mktemp("crafted")
    key, pub = make_keypair(root / "keys")
    return Crafted(key, pub, root, digits_folder)


def _push(registry: DockerRegistry, crafted: Crafted, name: str, layer_tar: bytes, *,
          metadata: dict[str, Any] | None) -> str:
    """A signed single-platform image whose layer is ``layer_tar`` (gzip), pushed; its pinned reference."""
    from edgekit.image.pushing import push_layout

    layout = crafted.root / f"{name}-{uuid.uuid4().hex[:6]}"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> bytes:
        (blobs / sha256_digest(data).split(":", 1)[1]).write_bytes(data)
        return data

    layer = put(gzip.compress(layer_tar, mtime=0))
    os_name, arch = current_platform().split("/")[:2]
    labels = {LABEL_METADATA: json.dumps(metadata)} if metadata is not None else {}
    config = put(canonical_json({"architecture": arch, "os": os_name, "config": {"Labels": labels},
                                 "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer_tar)]}}))
    manifest = put(canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": descriptor(OCI_CONFIG, config),
                                   "layers": [descriptor(OCI_LAYER_GZIP, layer)]}))
    index = put(canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, manifest, platform={"architecture": arch, "os": os_name})]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": [
        descriptor(OCI_INDEX, index, annotations={ANN_REF_NAME: "1.0.0"})]}))
    digest = sha256_digest(index)
    sign_layout(layout, digest, crafted.key)
    repo = f"{registry.host}/attacks/{name}-{uuid.uuid4().hex[:6]}"
    push_layout(layout, parse_reference(f"{repo}:1.0.0"))
    return f"{repo}@{digest}"


def _meta(crafted: Crafted) -> dict[str, Any]:
    return dict(json.loads((crafted.folder / METADATA_FILE).read_text()))


def _fetch(ref: str, crafted: Crafted, dest: Path, *extra: str) -> Any:
    return run_cli("fetch", ref, "--to", str(dest), "--public-key", str(crafted.public_key), *extra)


@pytest.mark.registry
def test_a_crafted_honest_image_fetches(registry: DockerRegistry, crafted: Crafted, tmp_path: Path) -> None:
    ref = _push(registry, crafted, "honest", _tar(_model_entries(crafted.folder)), metadata=_meta(crafted))
    result = _fetch(ref, crafted, tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert run_cli("verify", str(tmp_path / "m"), "--public-key", str(crafted.public_key)).returncode == 0


@pytest.mark.registry
@pytest.mark.parametrize("entry", ["model/.edgekit-image.json", "model/.edgekit-image/signature.json",
                                   "model/notes.txt", "model/sub/"])
def test_a_layer_with_an_unexpected_entry_is_refused(registry: DockerRegistry, crafted: Crafted, tmp_path: Path,
                                                     entry: str) -> None:
    record = json.dumps({"image": "x", "digest": "sha256:" + "a" * 64}).encode()
    extra: tuple[str, bytes | None] = (entry.rstrip("/"), None) if entry.endswith("/") else (entry, record)
    ref = _push(registry, crafted, "stray", _tar([*_model_entries(crafted.folder), extra]), metadata=_meta(crafted))
    _fails(_fetch(ref, crafted, tmp_path / "m"), 81, "not one of the model files")
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


@pytest.mark.registry
def test_a_tar_bomb_is_refused(registry: DockerRegistry, crafted: Crafted, tmp_path: Path) -> None:
    entries = _model_entries(crafted.folder)
    bomb = [e if e[0] != f"model/{MODEL_FILE}" else (e[0], bytes(50 * MiB)) for e in entries]
    layer_tar = _tar(bomb)
    assert len(gzip.compress(layer_tar, mtime=0)) < 60_000  # 51 KB of gzip, 50 MiB unpacked
    ref = _push(registry, crafted, "bomb", layer_tar, metadata=_meta(crafted))
    _fails(_fetch(ref, crafted, tmp_path / "m"), 82, f"is {50 * MiB} bytes, more than the")
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []
    # an image that records no sizes is held to the hard cap
    bare = _push(registry, crafted, "bomb-bare", layer_tar, metadata=None)
    _fails(run_cli("fetch", bare, "--to", str(tmp_path / "m"), "--max-bytes", str(10 * MiB), "--allow-unsigned"), 82,
           "more than the 10485760")
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


@pytest.mark.registry
def test_too_many_entries_are_refused(registry: DockerRegistry, crafted: Crafted, tmp_path: Path) -> None:
    ref = _push(registry, crafted, "entries", _tar([("model", None)] * 40 + _model_entries(crafted.folder)),
                metadata=_meta(crafted))
    _fails(_fetch(ref, crafted, tmp_path / "m"), 83, "more than 16 entries")
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


@pytest.mark.registry
@pytest.mark.parametrize("tail", [b"hidden payload", bytes(MiB)], ids=["data", "zeros"])
def test_data_after_the_tar_end_is_refused(registry: DockerRegistry, crafted: Crafted, tmp_path: Path,
                                           tail: bytes) -> None:
    ref = _push(registry, crafted, "trailing", _tar(_model_entries(crafted.folder), tail=tail),
                metadata=_meta(crafted))
    _fails(_fetch(ref, crafted, tmp_path / "m"), 84, "after the end of its tar archive")
    assert not (tmp_path / "m").exists() and _leftovers(tmp_path) == []


# --- the unpacker on its own ---------------------------------------------------------------------------
def test_a_bomb_is_refused_from_its_header_before_its_data_is_read(crafted: Crafted, tmp_path: Path) -> None:
    # The compressed stream is cut short after the bomb's header: reading any of its data would fail
    # as a truncated gzip, so the size error proves the unpacker stopped at the header.
    entries = [e if e[0] != f"model/{MODEL_FILE}" else (e[0], bytes(50 * MiB)) for e in _model_entries(crafted.folder)]
    whole = gzip.compress(_tar(entries), mtime=0)
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(whole[: len(whole) // 4])
    (tmp_path / "out").mkdir()
    with pytest.raises(LayerTooLargeError):
        unpack_model_layer(layer, tmp_path / "out", budget=layer_budget(load_metadata(crafted.folder)))
    assert not (tmp_path / "out" / MODEL_FILE).exists()


def test_budget_follows_the_recorded_sizes(crafted: Crafted) -> None:
    meta = load_metadata(crafted.folder)
    assert meta.probe.size == (crafted.folder / PROBE_FILE).stat().st_size
    budget = layer_budget(meta)
    assert budget.files[MODEL_FILE] == meta.model.size and budget.files[PROBE_FILE] == meta.probe.size
    assert set(layer_budget(None, max_bytes=5).files.values()) == {5, MiB}
