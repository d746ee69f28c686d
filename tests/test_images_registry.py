"""push / pull / fetch against a real docker-registry, cross-checked with skopeo; faults via a proxy."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import Result
from edgekit_agent.errors import DigestMismatchError, EdgekitError, RegistryUnavailableError, TemporaryError
from edgekit_agent.modelmeta import verify_model_dir
from edgekit_agent.oci import OciLayout, RegistryOptions, fetch_image, parse_reference
from edgekit_agent.oci.registry import RegistryClient
from edgekit_agent.oci.transport import MAX_ANSWER, AnswerTooLargeError

from edgekit.image.pushing import TransferSettings, push_layout
from edgekit.rehearsal.faultproxy import Fault, FaultProxy
from edgekit.rehearsal.processes import free_port
from edgekit.rehearsal.registry import DockerRegistry
from tests.fixtures.registry import REGISTRY_PASSWORD, REGISTRY_USER
from tests.test_images_build import assert_error, invoke, leftovers

pytestmark = pytest.mark.registry

FAST = RegistryOptions(retries=2, backoff=0.05, max_backoff=0.2)


def layout_digest(path: Path) -> str:
    return str(OciLayout(path).find()["digest"])


def skopeo_digest(image: str, *flags: str) -> str:
    out = subprocess.run(["skopeo", "inspect", "--raw", *flags, image], capture_output=True, check=True)
    import hashlib

    return "sha256:" + hashlib.sha256(out.stdout).hexdigest()


# --- round trips -----------------------------------------------------------------------------------
def test_push_pull_round_trip_cross_checked_with_skopeo(registry: DockerRegistry, digits_layout: Path,
                                                        tmp_path: Path) -> None:
    ref = f"{registry.host}/rt/digits"
    pushed = invoke("push", digits_layout, ref, "--output", "json")
    assert pushed.exit_code == 0, pushed.stderr
    info = json.loads(pushed.stdout)
    digest = layout_digest(digits_layout)
    assert info["digest"] == digest and info["tag"] == "1.0" and info["blobs_uploaded"] == 3
    # skopeo sees the same index, and copies the image (both platforms) to a layout and back
    assert skopeo_digest(f"docker://{ref}:1.0", "--tls-verify=false") == digest
    inspect = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--override-arch", "arm64",
                              f"docker://{ref}:1.0"], capture_output=True, text=True, check=True)
    assert json.loads(inspect.stdout)["Architecture"] == "arm64"
    subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{ref}:1.0",
                    f"oci:{tmp_path / 'skopeo'}:1.0"], capture_output=True, check=True)
    assert OciLayout(tmp_path / "skopeo").find("1.0")["digest"] == digest
    subprocess.run(["skopeo", "copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'skopeo'}:1.0",
                    f"docker://{registry.host}/rt/skopeo-copy:1.0"], capture_output=True, check=True)
    pulled = invoke("pull", f"{registry.host}/rt/skopeo-copy:1.0", "-o", tmp_path / "pulled", "--output", "json")
    assert pulled.exit_code == 0, pulled.stderr
    assert json.loads(pulled.stdout)["digest"] == digest == layout_digest(tmp_path / "pulled")
    assert sorted(p.name for p in (tmp_path / "pulled" / "blobs" / "sha256").iterdir()) == \
        sorted(p.name for p in (digits_layout / "blobs" / "sha256").iterdir())
    model = invoke("pull", f"{ref}:1.0", "-o", tmp_path / "model", "--model-folder")
    assert model.exit_code == 0, model.stderr
    assert verify_model_dir(tmp_path / "model").name == "digits"


def test_package_push_then_show_remote(registry: DockerRegistry, digits_model: Path) -> None:
    ref = f"{registry.host}/direct/digits"
    result = invoke("package", digits_model, "--name", "digits", "--version", "3.1", "--push", ref,
                    "--source", "https://example.invalid/digits", "--output", "json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["push"]["tag"] == "3.1"
    shown = invoke("show", f"{ref}:3.1", "--output", "json")
    data = json.loads(shown.stdout)
    assert data["kind"] == "registry" and data["digest"] == info["image"]["digest"]
    assert data["metadata"]["source"] == "https://example.invalid/digits"
    assert data["signature"]["status"] == "unsigned"


def test_fetch_image_replaces_a_model_folder(registry: DockerRegistry, digits_layout: Path, tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.host}/fetch/digits:1.0")
    push_layout(digits_layout, ref)
    dest = tmp_path / "model"
    first = fetch_image(str(ref), dest, options=FAST)
    assert first.digest == layout_digest(digits_layout) and first.metadata.version == "1.0"
    arm = fetch_image(str(ref), dest, options=FAST, platform="linux/arm64")
    assert arm.platform == "linux/arm64" and arm.layer_digest == first.layer_digest
    assert arm.manifest_digest != first.manifest_digest
    assert verify_model_dir(dest).name == "digits" and leftovers(tmp_path) == []
    with pytest.raises(EdgekitError) as info:
        fetch_image(str(ref), dest, options=FAST, platform="linux/s390x")
    assert info.value.exit_code == 23 and "linux/amd64" in info.value.one_line()


def test_fetch_image_fills_a_mount_point_on_a_read_only_root(registry: DockerRegistry, digits_layout: Path,
                                                             tmp_path: Path) -> None:
    """The init container's case: ``/model`` is an emptyDir mount point and ``/`` is read-only, so the
    download can be staged neither beside ``/model`` nor renamed over it."""
    import subprocess

    ref = parse_reference(f"{registry.host}/fetch/digits:ro")
    push_layout(digits_layout, ref)
    root = tmp_path / "root"
    dest = root / "model"
    dest.mkdir(parents=True)
    mounted: list[Path] = []
    try:
        for argv in (["mount", "--bind", str(root), str(root)], ["mount", "-o", "remount,bind,ro", str(root)],
                     ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(dest)]):
            subprocess.run(argv, check=True, capture_output=True)
            mounted.insert(0, Path(argv[-1]))
        with pytest.raises(OSError):
            (root / "probe").write_text("x")  # really read-only
        (dest / ".edgekit-fetch-dead").mkdir()  # an earlier attempt killed mid-way
        first = fetch_image(str(ref), dest, options=FAST)
        assert verify_model_dir(dest).name == "digits" and first.path == dest
        again = fetch_image(str(ref), dest, options=FAST, platform="linux/arm64")  # replaces the model in place
        assert again.platform == "linux/arm64" and verify_model_dir(dest).name == "digits"
        assert not [p for p in dest.iterdir() if p.name.startswith(".edgekit-fetch-")]
        (dest / "edgekit.json").unlink()
        with pytest.raises(EdgekitError, match="not a model folder"):
            fetch_image(str(ref), dest, options=FAST)
    finally:
        for point in mounted:
            subprocess.run(["umount", str(point)], check=False, capture_output=True)


# --- no re-upload, mount -----------------------------------------------------------------------
def test_repush_uploads_no_blob(registry_proxy: FaultProxy, digits_layout: Path) -> None:
    ref = f"{registry_proxy.host}/repush/digits"
    assert invoke("push", digits_layout, ref).exit_code == 0
    uploads_first = registry_proxy.count(path=r"/blobs/uploads/")
    assert uploads_first >= 3  # POST + PUT per blob
    registry_proxy.clear()
    again = invoke("push", digits_layout, ref, "--output", "json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["blobs_uploaded"] == 0
    assert registry_proxy.count(path=r"/blobs/uploads/") == 0
    assert registry_proxy.count("HEAD", r"/blobs/sha256:") == 3


def test_cross_repository_mount(registry_proxy: FaultProxy, digits_layout: Path) -> None:
    src = f"{registry_proxy.host}/mount/source"
    assert invoke("push", digits_layout, src).exit_code == 0
    registry_proxy.clear()
    result = invoke("push", digits_layout, f"{registry_proxy.host}/mount/target", "--mount-from", "mount/source",
                    "--output", "json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["blobs_mounted"] == 3 and info["blobs_uploaded"] == 0
    assert registry_proxy.count("POST", r"mount=sha256") == 3
    assert registry_proxy.count("PUT", r"/blobs/uploads/") == 0 and registry_proxy.count("PATCH") == 0


# --- auth and TLS ------------------------------------------------------------------------------
def test_secure_registry_with_credentials_and_ca(registry_secure: DockerRegistry, digits_layout: Path,
                                                 tmp_path: Path) -> None:
    ref = f"{registry_secure.host}/secure/digits:1.0"
    ca = str(registry_secure.ca_path)
    ok = invoke("push", digits_layout, ref, "--ca-file", ca, "-u", REGISTRY_USER, "--password-stdin",
                input=REGISTRY_PASSWORD + "\n")
    assert ok.exit_code == 0, ok.stderr
    # docker config.json credentials
    auth = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {registry_secure.host: {"auth": auth}}}))
    pulled = invoke("pull", ref, "-o", tmp_path / "pulled", "--ca-file", ca, "--docker-config", config)
    assert pulled.exit_code == 0, pulled.stderr
    assert layout_digest(tmp_path / "pulled") == layout_digest(digits_layout)
    # skopeo agrees on what is there
    assert skopeo_digest(f"docker://{ref}", "--cert-dir", str(registry_secure.cert_dir), "--creds",
                         f"{REGISTRY_USER}:{REGISTRY_PASSWORD}") == layout_digest(digits_layout)
    # --insecure skips verification of the unknown CA
    shown = invoke("show", ref, "--insecure", "--docker-config", config)
    assert shown.exit_code == 0, shown.stderr


def test_auth_and_tls_failures(registry_secure: DockerRegistry, digits_layout: Path, tmp_path: Path) -> None:
    ref = f"{registry_secure.host}/secure/digits:1.0"
    ca = str(registry_secure.ca_path)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert_error(invoke("pull", ref, "-o", tmp_path / "a", "--ca-file", ca, "-u", REGISTRY_USER,
                        "--password-stdin", input="wrong\n"), 22, f"refused the credentials of user '{REGISTRY_USER}'")
    assert_error(invoke("push", digits_layout, ref, "--ca-file", ca, "--docker-config", empty), 22,
                 "needs credentials")
    assert_error(invoke("show", ref, "--docker-config", empty), 20, "TLS verification")
    assert_error(invoke("show", ref, "-u", REGISTRY_USER), 2, "password")
    assert not (tmp_path / "a").exists() and leftovers(tmp_path) == []


def test_bearer_token_registry(registry_token: DockerRegistry, digits_layout: Path, tmp_path: Path) -> None:
    tokens = registry_token.token_server
    assert tokens is not None
    creds = ("-u", REGISTRY_USER, "--password-stdin")
    first = invoke("push", digits_layout, f"{registry_token.host}/tok/a", *creds, input=REGISTRY_PASSWORD)
    assert first.exit_code == 0, first.stderr
    mounted = invoke("push", digits_layout, f"{registry_token.host}/tok/b", "--mount-from", "tok/a", *creds,
                     "--output", "json", input=REGISTRY_PASSWORD)
    assert json.loads(mounted.stdout)["blobs_mounted"] == 3
    # the mount asked for pull on the source repository in the same token
    assert (REGISTRY_USER, ["repository:tok/b:pull,push", "repository:tok/a:pull"]) in tokens.requests
    pulled = invoke("pull", f"{registry_token.host}/tok/b:1.0", "-o", tmp_path / "p", *creds, input=REGISTRY_PASSWORD)
    assert pulled.exit_code == 0, pulled.stderr
    assert skopeo_digest(f"docker://{registry_token.host}/tok/b:1.0", "--tls-verify=false", "--creds",
                         f"{REGISTRY_USER}:{REGISTRY_PASSWORD}") == layout_digest(digits_layout)
    assert_error(invoke("pull", f"{registry_token.host}/tok/b:1.0", "-o", tmp_path / "x", "-u", REGISTRY_USER,
                        "--password-stdin", input="nope"), 22, "token service")
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert_error(invoke("show", f"{registry_token.host}/tok/b:1.0", "--docker-config", empty), 22,
                 "needs credentials")


# --- missing things and faults -------------------------------------------------------------------
def test_missing_tag_and_repository(registry: DockerRegistry, digits_layout: Path, tmp_path: Path) -> None:
    push_layout(digits_layout, parse_reference(f"{registry.host}/present/digits:1.0"))
    assert_error(invoke("pull", f"{registry.host}/present/digits:9.9", "-o", tmp_path / "x"), 23,
                 f"image {registry.host}/present/digits:9.9 not found")
    assert_error(invoke("show", f"{registry.host}/absent/none:1.0"), 23, "not found")
    assert not (tmp_path / "x").exists()


def test_registry_down(digits_layout: Path, tmp_path: Path) -> None:
    down = f"127.0.0.1:{free_port()}"
    assert_error(invoke("pull", f"{down}/m/digits:1.0", "-o", tmp_path / "x", "--retries", "1"), 21,
                 f"cannot reach registry {down}")
    assert_error(invoke("push", digits_layout, f"{down}/m/digits", "--retries", "0"), 21, "cannot reach")
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_500_then_recover(registry_proxy: FaultProxy, digits_layout: Path, tmp_path: Path) -> None:
    ref = f"{registry_proxy.host}/flaky/digits:1.0"
    push_layout(digits_layout, parse_reference(ref))
    registry_proxy.clear()
    registry_proxy.add_fault(Fault(method="GET", path=r"/manifests/1\.0", status=500, times=2))
    registry_proxy.add_fault(Fault(method="GET", path=r"/blobs/sha256:", status=503, times=1))
    result = invoke("pull", ref, "-o", tmp_path / "ok")
    assert result.exit_code == 0, result.stderr
    assert registry_proxy.count("GET", r"/manifests/1\.0") == 3
    assert [s for m, p, s in registry_proxy.requests if s >= 500] == [500, 500, 503]
    # the same during a push (HEAD and manifest PUT answered 502 first)
    registry_proxy.add_fault(Fault(method="PUT", path=r"/manifests/", status=502, times=1))
    pushed = push_layout(digits_layout, parse_reference(f"{registry_proxy.host}/flaky/again:1.0"), options=FAST)
    assert pushed.digest == layout_digest(digits_layout)
    # a registry that keeps failing: a distinct error, nothing written
    registry_proxy.add_fault(Fault(method="GET", path=r"/manifests/", status=500, times=100))
    assert_error(invoke("pull", ref, "-o", tmp_path / "bad", "--retries", "2"), 21, "answered 500")
    assert not (tmp_path / "bad").exists() and leftovers(tmp_path) == []


def test_503_with_retry_after_is_waited_out_then_reported(registry_proxy: FaultProxy, digits_layout: Path) -> None:
    push_layout(digits_layout, parse_reference(f"{registry_proxy.host}/busy/digits:1.0"))
    registry_proxy.clear()
    slept: list[float] = []
    options = RegistryOptions(retries=2, backoff=0.05, max_backoff=8.0)  # own backoff: about 0.05 s
    registry_proxy.add_fault(Fault(method="GET", path=r"/manifests/1\.0", status=503, headers={"Retry-After": "3"}))
    with RegistryClient(registry_proxy.host, options, sleep=slept.append) as client:
        client.get_manifest("busy/digits", "1.0")
        assert slept == [3.0]                          # as the registry asked, not the 0.05 s backoff
        registry_proxy.add_fault(Fault(method="GET", path=r"/manifests/", status=429, times=100,
                                       headers={"Retry-After": "30"}))
        with pytest.raises(RegistryUnavailableError) as err:
            client.get_manifest("busy/digits", "1.0")
    assert isinstance(err.value, TemporaryError) and err.value.retry_after == 30.0
    assert slept[1:] == [8.0, 8.0]                     # longer asks wait max_backoff between tries
    assert [s for _m, _p, s in registry_proxy.requests if s >= 400] == [503, 429, 429, 429]


def test_dropped_connection_mid_blob_resumes(registry_proxy: FaultProxy, digits_layout: Path,
                                             tmp_path: Path) -> None:
    ref = f"{registry_proxy.host}/drop/digits:1.0"
    push_layout(digits_layout, parse_reference(ref))
    layout = OciLayout(digits_layout)
    index = json.loads(layout.read_blob(layout.find()["digest"]))
    manifest = json.loads(layout.read_blob(index["manifests"][0]["digest"]))
    layer_digest = manifest["layers"][0]["digest"]
    registry_proxy.clear()
    registry_proxy.add_fault(Fault(method="GET", path=f"/blobs/{layer_digest}", drop_response_after=100_000,
                                   times=2))
    result = fetch_image(ref, tmp_path / "model", options=FAST)
    assert result.layer_digest == layer_digest
    gets = [(s) for m, p, s in registry_proxy.requests if m == "GET" and layer_digest in p]
    assert gets[-1] == 206  # resumed with Range, not started over
    # a connection that drops every time: distinct error, nothing written
    registry_proxy.add_fault(Fault(method="GET", path=f"/blobs/{layer_digest}", drop_response_after=1000,
                                   times=100))
    with pytest.raises(EdgekitError) as info:
        fetch_image(ref, tmp_path / "model2", options=FAST)
    assert info.value.exit_code == 21 and "keeps failing" in info.value.one_line()
    assert_error(invoke("pull", ref, "-o", tmp_path / "layout", "--retries", "1"), 21, "keeps failing")
    assert not (tmp_path / "model2").exists() and not (tmp_path / "layout").exists()
    assert leftovers(tmp_path) == []


def test_dropped_connection_mid_upload_starts_a_new_session(registry_proxy: FaultProxy, digits_layout: Path) -> None:
    layout = OciLayout(digits_layout)
    index = json.loads(layout.read_blob(layout.find()["digest"]))
    layer = json.loads(layout.read_blob(index["manifests"][0]["digest"]))["layers"][0]["digest"]
    registry_proxy.add_fault(Fault(method="PUT", path=f"/blobs/uploads/.*digest={layer.replace(':', '%3A')}",
                                   drop_request_after=50_000, times=1))
    result = push_layout(digits_layout, parse_reference(f"{registry_proxy.host}/cut/digits:1.0"), options=FAST)
    assert result.blobs_uploaded == 3
    puts = [s for m, p, s in registry_proxy.requests if m == "PUT" and "/blobs/uploads/" in p]
    assert puts.count(0) == 1 and puts.count(201) == 3  # the cut upload, then three whole ones
    assert skopeo_digest(f"docker://{registry_proxy.host}/cut/digits:1.0", "--tls-verify=false") == result.digest
    registry_proxy.add_fault(Fault(method="PUT", path=r"/blobs/uploads/.*digest=", drop_request_after=10,
                                   times=100))
    assert_error(invoke("push", digits_layout, f"{registry_proxy.host}/cut/never", "--retries", "1"), 21,
                 "cannot reach")


def test_tampered_blob_on_pull(tmp_path: Path, digits_layout: Path) -> None:
    with DockerRegistry(tmp_path / "reg") as registry:  # its own registry: we damage its storage
        ref = f"{registry.host}/tamper/digits:1.0"
        push_layout(digits_layout, parse_reference(ref))
        layout = OciLayout(digits_layout)
        index = json.loads(layout.read_blob(layout.find()["digest"]))
        manifest = json.loads(layout.read_blob(index["manifests"][0]["digest"]))
        blob = registry.blob_path(manifest["layers"][0]["digest"])
        data = bytearray(blob.read_bytes())
        data[len(data) // 3] ^= 0x55
        blob.write_bytes(bytes(data))
        out = tmp_path / "out"
        assert_error(invoke("pull", ref, "-o", out), 24, "tampered")
        assert_error(invoke("pull", ref, "-o", out, "--model-folder"), 24, "tampered")
        assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_big_model_chunked_upload_and_resume(registry_proxy: FaultProxy, big_model: Path, tmp_path: Path) -> None:
    from edgekit.image.building import PackageSettings, package

    image = package(big_model, PackageSettings(name="big", version="1.0", created="2026-01-01T00:00:00Z"),
                    tmp_path / "layout")
    assert image.layer_size > 100_000_000
    ref = parse_reference(f"{registry_proxy.host}/big/model:1.0")
    # the connection dies in the middle of a chunk; the client asks the registry for the session's
    # offset (distribution answers that a broken-off session is gone) and uploads the blob again
    registry_proxy.add_fault(Fault(method="PATCH", path=r"/blobs/uploads/", drop_request_after=20 << 20, times=1))
    registry_proxy.requests.clear()
    result = push_layout(tmp_path / "layout", ref, options=FAST,
                         settings=TransferSettings(chunk_size=32 << 20, monolithic_max=32 << 20))
    assert result.blobs_uploaded == 3 and result.bytes_uploaded > 100_000_000
    patches = [s for m, p, s in registry_proxy.requests if m == "PATCH"]
    assert 0 in patches and patches.count(202) >= 4  # one cut, then every chunk accepted
    assert registry_proxy.count("GET", r"/blobs/uploads/") >= 1  # asked where to resume
    # download resumes after a cut at 50 MB, and the digest is checked
    registry_proxy.add_fault(Fault(method="GET", path=f"/blobs/{image.layer_digest}",
                                   drop_response_after=50 << 20, times=1))
    registry_proxy.requests.clear()
    pulled = fetch_image(str(ref), tmp_path / "model", options=FAST)
    assert [s for m, p, s in registry_proxy.requests if image.layer_digest in p] == [200, 206]  # cut, resumed
    assert pulled.metadata.model.size == big_model.stat().st_size
    assert verify_model_dir(tmp_path / "model").name == "big"
    assert skopeo_digest(f"docker://{registry_proxy.host}/big/model:1.0", "--tls-verify=false") == image.digest
    shutil.rmtree(tmp_path / "model")


def test_registry_error_is_one_line(registry: DockerRegistry) -> None:
    result: Result = invoke("push", "/nonexistent/layout", f"{registry.host}/x/y:1")
    assert_error(result, 27, "not a folder")


# --- bounded reads: a registry that omits or lies about Content-Length -----------------------------
def _layer(layout_path: Path) -> tuple[str, dict[str, object]]:
    """The image manifest digest and the layer descriptor of a layout."""
    layout = OciLayout(layout_path)
    index = json.loads(layout.read_blob(layout.find()["digest"]))
    digest = index["manifests"][0]["digest"]
    return digest, json.loads(layout.read_blob(digest))["layers"][0]


def test_manifest_without_length_is_cut_at_the_cap(registry_proxy: FaultProxy, digits_layout: Path) -> None:
    push_layout(digits_layout, parse_reference(f"{registry_proxy.host}/bounded/digits:1.0"))
    registry_proxy.clear()
    endless = registry_proxy.add_fault(Fault(method="GET", path=r"/manifests/1\.0", omit_length=True,
                                             extra_bytes=64 << 20))
    with RegistryClient(registry_proxy.host, FAST) as client:
        with pytest.raises(AnswerTooLargeError) as err:
            client.get_manifest("bounded/digits", "1.0")
        assert err.value.exit_code == 27 and f"larger than {MAX_ANSWER} bytes" in err.value.one_line()
        assert endless.relayed < 32 << 20  # the client stopped reading and hung up
        # a Content-Length past the cap is refused before the body is read
        registry_proxy.add_fault(Fault(method="GET", path=r"/manifests/1\.0", content_length=MAX_ANSWER + 1))
        with pytest.raises(AnswerTooLargeError, match="Content-Length"):
            client.get_manifest("bounded/digits", "1.0")
        # the same client goes on on a fresh connection
        assert client.get_manifest("bounded/digits", "1.0").digest == layout_digest(digits_layout)
    # a small blob (config, signature payload) read into memory is capped the same way
    manifest_digest, _ = _layer(digits_layout)
    config = json.loads(OciLayout(digits_layout).read_blob(manifest_digest))["config"]["digest"]
    registry_proxy.add_fault(Fault(method="GET", path=f"/blobs/{config}", omit_length=True, extra_bytes=8 << 20))
    with RegistryClient(registry_proxy.host, FAST) as client, pytest.raises(AnswerTooLargeError):
        client.get_blob("bounded/digits", config, max_size=1 << 20)


def test_blob_longer_than_its_descriptor_stops_at_size_plus_one(registry_proxy: FaultProxy, digits_layout: Path,
                                                                 tmp_path: Path) -> None:
    ref = f"{registry_proxy.host}/bounded/layer:1.0"
    push_layout(digits_layout, parse_reference(ref))
    _, layer = _layer(digits_layout)
    digest, size = str(layer["digest"]), int(str(layer["size"]))
    registry_proxy.clear()
    endless = registry_proxy.add_fault(Fault(method="GET", path=f"/blobs/{digest}", omit_length=True,
                                             extra_bytes=64 << 20))
    got: list[int] = []
    with RegistryClient(registry_proxy.host, FAST) as client:
        with pytest.raises(DigestMismatchError, match=f"longer than its {size} bytes"):
            client.download_blob("bounded/layer", digest, tmp_path / "blob", size=size, on_bytes=got.append)
        assert sum(got) == size + 1 and not (tmp_path / "blob").exists()
        assert endless.relayed < 32 << 20
        # a Content-Length longer than the descriptor: refused before any byte is read
        registry_proxy.add_fault(Fault(method="GET", path=f"/blobs/{digest}", content_length=size + 5,
                                       extra_bytes=5))
        got.clear()
        with pytest.raises(DigestMismatchError, match="announced"):
            client.download_blob("bounded/layer", digest, tmp_path / "blob", size=size, on_bytes=got.append)
        assert got == []
        # the true length followed by stray bytes: only the announced bytes are read, and they verify
        registry_proxy.add_fault(Fault(method="GET", path=f"/blobs/{digest}", extra_bytes=1 << 20))
        client.download_blob("bounded/layer", digest, tmp_path / "blob", size=size)
        assert (tmp_path / "blob").stat().st_size == size
    # the agent's fetch stops the same way, with nothing left behind
    registry_proxy.add_fault(Fault(method="GET", path=f"/blobs/{digest}", omit_length=True, extra_bytes=8 << 20))
    with pytest.raises(DigestMismatchError):
        fetch_image(ref, tmp_path / "model", options=FAST)
    assert not (tmp_path / "model").exists() and leftovers(tmp_path) == []


def test_credentials_are_not_sent_to_a_token_realm_on_another_host(tmp_path: Path, digits_layout: Path) -> None:
    from edgekit.rehearsal.registry import TokenServer

    class Elsewhere(TokenServer):  # what a spoofed registry does: name a realm that collects passwords
        @property
        def realm(self) -> str:
            return f"http://localhost:{self.port}/token"

    creds = ("-u", REGISTRY_USER, "--password-stdin")
    with Elsewhere(tmp_path / "tokens", users={REGISTRY_USER: REGISTRY_PASSWORD}) as tokens, \
            DockerRegistry(tmp_path / "registry", token_server=tokens) as reg:
        refused = invoke("push", digits_layout, f"{reg.host}/tok/a", *creds, input=REGISTRY_PASSWORD)
        assert_error(refused, 22, "not sent to its token service because its token realm localhost is another host")
        assert "EDGEKIT_REGISTRY_TOKEN_HOSTS" in refused.stderr
        assert tokens.requests and {user for user, _ in tokens.requests} == {None}  # asked anonymously only
        # the user vouches for that host: the credentials go there
        allowed = invoke("push", digits_layout, f"{reg.host}/tok/a", *creds, input=REGISTRY_PASSWORD,
                         env={"EDGEKIT_REGISTRY_TOKEN_HOSTS": "localhost"})
        assert allowed.exit_code == 0, allowed.stderr
        assert REGISTRY_USER in {user for user, _ in tokens.requests}


def test_the_engine_reads_the_platforms_a_model_image_provides(registry: DockerRegistry, digits_model: Path,
                                                               digits_layout: Path, tmp_path: Path) -> None:
    """They become the pods' kubernetes.io/arch rule; an index for another machine's platforms
    only is read all the same (this machine cannot resolve it to a manifest)."""
    from edgekit.image.building import PackageSettings, package
    from edgekit.rollout.images import RegistryImages

    images = RegistryImages(FAST)
    push_layout(digits_layout, parse_reference(f"{registry.host}/plat/digits:1.0"))
    both = images.pin(f"{registry.host}/plat/digits:1.0")
    assert images.platforms(both) == ("linux/amd64", "linux/arm64")
    arm = tmp_path / "arm"
    package(digits_model, PackageSettings(name="digits", version="1.1", platforms=("linux/riscv64",)), arm)
    push_layout(arm, parse_reference(f"{registry.host}/plat/digits:riscv"))
    only = images.pin(f"{registry.host}/plat/digits:riscv")
    assert images.platforms(only) == ("linux/riscv64",)
    assert images.image_size(only) is None  # not resolvable here: no size, but the platforms are known
