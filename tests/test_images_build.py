"""``edgekit package`` and the local (layout) side of model images: no registry needed."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from edgekit_agent.errors import ImageLayoutError, ModelIntegrityError, ModelMetadataError
from edgekit_agent.modelmeta import load_metadata, parse_metadata, verify_model_dir
from edgekit_agent.oci import OciLayout, fetch_image, parse_reference
from edgekit_agent.oci.mediatypes import (
    ANN_CREATED,
    ANN_SOURCE,
    ANN_TITLE,
    ANN_VERSION,
    OCI_INDEX,
    OCI_LAYER_GZIP,
)
from edgekit_agent.oci.unpacking import unpack_model_layer
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.cli import cli
from edgekit.image.building import PackageSettings, package, summarize_report
from tests.fixtures.registry import FIXED_CREATED


def invoke(*args: str | Path, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env, input=input)


def assert_error(result: Result, code: int, needle: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("edgekit: error: ")]
    # exactly one error line, the last thing printed (plain progress lines may come before it)
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert needle in errors[0], errors[0]
    assert "Traceback" not in result.stderr and "succe" not in result.stdout.lower()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def read_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


# --- reproducibility and structure -----------------------------------------------------------------
def test_package_twice_gives_the_same_digest(digits_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(digits_model, copy)  # another path and mtime: same bytes, same digest
    a = invoke("package", digits_model, "--name", "digits", "--version", "1.0", "--created", FIXED_CREATED,
               "-o", tmp_path / "a", "--output", "json")
    b = invoke("package", copy, "--name", "digits", "--version", "1.0", "--created", FIXED_CREATED,
               "-o", tmp_path / "b", "--output", "json")
    assert a.exit_code == 0 and b.exit_code == 0, a.stderr + b.stderr
    da, db = json.loads(a.stdout)["digest"], json.loads(b.stdout)["digest"]
    assert da == db
    assert sorted(p.name for p in (tmp_path / "a" / "blobs" / "sha256").iterdir()) == \
        sorted(p.name for p in (tmp_path / "b" / "blobs" / "sha256").iterdir())
    c = invoke("package", digits_model, "--name", "digits", "--version", "1.0", "--created", "2026-02-02T00:00:00Z",
               "-o", tmp_path / "c", "--output", "json")
    assert json.loads(c.stdout)["digest"] != da


def test_source_date_epoch_sets_created(digits_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767323045")
    image = package(digits_model, PackageSettings(name="digits", version="1.0"), tmp_path / "x")
    assert image.metadata.created == FIXED_CREATED


def test_layout_is_an_index_of_two_platforms_sharing_one_layer(digits_layout: Path) -> None:
    layout = OciLayout(digits_layout)
    (entry,) = layout.manifests
    assert entry["mediaType"] == OCI_INDEX and layout.ref_name(entry) == "1.0"
    index = json.loads(read_blob(digits_layout, entry["digest"]))
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    assert index["annotations"][ANN_TITLE] == "digits" and index["annotations"][ANN_VERSION] == "1.0"
    assert index["annotations"][ANN_CREATED] == FIXED_CREATED and ANN_SOURCE not in index["annotations"]
    manifests = [json.loads(read_blob(digits_layout, m["digest"])) for m in index["manifests"]]
    layers = {m["layers"][0]["digest"] for m in manifests}
    assert len(layers) == 1 and all(m["layers"][0]["mediaType"] == OCI_LAYER_GZIP for m in manifests)
    configs = [json.loads(read_blob(digits_layout, m["config"]["digest"])) for m in manifests]
    assert [c["architecture"] for c in configs] == ["amd64", "arm64"]
    layer = read_blob(digits_layout, layers.pop())
    raw = gzip.decompress(layer)
    assert configs[0]["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
    # gzip header: no file name flag, mtime 0
    assert layer[3] & 0x08 == 0 and layer[4:8] == b"\0\0\0\0"
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["model", "model/edgekit.json", "model/model.onnx", "model/probe.npz"]
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    assert {m.mtime for m in members} == {1767323045}


def test_skopeo_reads_the_layout(digits_layout: Path, tmp_path: Path) -> None:
    out = subprocess.run(["skopeo", "inspect", f"oci:{digits_layout}:1.0"], capture_output=True, text=True,
                         check=True)
    info = json.loads(out.stdout)
    assert info["Labels"][ANN_TITLE] == "digits" and info["Os"] == "linux"
    subprocess.run(["skopeo", "copy", "--all", f"oci:{digits_layout}:1.0", f"oci:{tmp_path / 'copy'}:1.0"],
                   capture_output=True, check=True)
    assert OciLayout(tmp_path / "copy").find("1.0")["digest"] == OciLayout(digits_layout).find()["digest"]


def test_metadata_and_probe_match_onnxruntime(digits_layout: Path, digits_model: Path, tmp_path: Path) -> None:
    result = fetch_image(str(digits_layout), tmp_path / "model")
    meta = verify_model_dir(tmp_path / "model")
    assert result.metadata == meta and result.platform.startswith("linux/")
    assert meta.inputs[0].name == "input" and meta.inputs[0].shape == ("N", 1, 8, 8)
    assert meta.outputs[0].name == "logits" and meta.opset == 17 and meta.precision == "fp32"
    assert meta.model.sha256 == hashlib.sha256(digits_model.read_bytes()).hexdigest()
    with np.load(tmp_path / "model" / "probe.npz") as probe:
        feed = {"input": probe["input/input"]}
        expected = probe["output/logits"]
    assert feed["input"].shape == (1, 1, 8, 8)
    got = ort.InferenceSession(str(tmp_path / "model" / "model.onnx")).run(None, feed)[0]
    np.testing.assert_allclose(got, expected, rtol=meta.probe.rtol, atol=meta.probe.atol)


def test_quantization_report_beside_the_model_is_embedded(digits_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "digits.int8.onnx"
    shutil.copyfile(digits_model, model)
    report = {"schema": 1, "chosen": "static-u8s8", "precision": "int8", "method": "static",
              "metric": "top5", "metric_settings": {"k": 5, "output": 0},
              "metric_reason": "given with --metric", "budget": "1%", "threads": 1,
              "baseline": {"latency_p50_ms": 0.2, "size_bytes": 376683, "score": 0.97},
              "result": {"name": "static-u8s8", "size_bytes": 110000, "latency_p50_ms": 0.15,
                         "latency_ratio": 0.6582048556817742,
                         "fidelity": {"score": 0.9651234567, "drop": 0.005}}}
    (tmp_path / "digits.int8.onnx.report.json").write_text(json.dumps(report))
    image = package(model, PackageSettings(name="digits", version="2.0"), tmp_path / "img")
    q = image.metadata.quantization
    assert q is not None and q["method"] == "static" and q["size"]["ratio"] == round(110000 / 376683, 4)
    assert q["latency"]["ratio"] == 0.6582048556817742 and q["fidelity"]["drop"] == 0.005
    assert q["metric"] == "top5" and q["metric_settings"] == {"k": 5, "output": 0}
    assert image.metadata.precision == "int8" and image.metadata.probe.rtol == 5e-2
    shown = invoke("show", tmp_path / "img", "--output", "json")
    assert json.loads(shown.stdout)["metadata"]["quantization"]["method"] == "static"
    table = invoke("show", tmp_path / "img")
    assert "quantization" in table.stdout and "static" in table.stdout and "unsigned" in table.stdout
    # Figures as people read them, not as floats print.
    text = " ".join(table.stdout.split())  # rich wraps long cells
    assert "size x0.29, latency x0.66 on the build host, fidelity" in text and "score 0.9651" in text
    assert "6582048" not in text and "9651234" not in text and "top5 (k=5, output=0), budget 1%" in text
    # A report written before task metrics has no settings: the summary says so, and packages fine.
    older = {k: v for k, v in report.items() if k not in ("metric_settings", "metric_reason")}
    assert summarize_report(older)["metric_settings"] == {} and summarize_report(older)["metric"] == "top5"


def test_probe_data_is_used(digits_model: Path, tmp_path: Path) -> None:
    data = np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8) / 64
    np.savez(tmp_path / "probe.npz", input=data)
    result = invoke("package", digits_model, "--name", "digits", "--version", "1.0", "--probe-data",
                    tmp_path / "probe.npz", "-o", tmp_path / "img")
    assert result.exit_code == 0, result.stderr
    fetch_image(str(tmp_path / "img"), tmp_path / "model")
    with np.load(tmp_path / "model" / "probe.npz") as probe:
        np.testing.assert_array_equal(probe["input/input"], data)
        assert probe["output/logits"].shape == (2, 10)


def test_show_a_layout(digits_layout: Path) -> None:
    result = invoke("show", digits_layout, "--output", "json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["kind"] == "layout" and info["platforms"] == ["linux/amd64", "linux/arm64"]
    assert info["metadata"]["name"] == "digits" and info["signature"]["status"] == "unsigned"
    table = invoke("show", digits_layout)
    assert "digits:1.0" in table.stdout and "linux/arm64" in table.stdout


# --- bad input -------------------------------------------------------------------------------------
def test_package_bad_inputs(digits_model: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model at all")
    assert_error(invoke("package", tmp_path / "junk.onnx", "--name", "m", "--version", "1", "-o", tmp_path / "o"),
                 12, "not a valid ONNX model")
    assert_error(invoke("package", tmp_path / "none.onnx", "--name", "m", "--version", "1", "-o", tmp_path / "o"),
                 11, "not found")
    assert_error(invoke("package", digits_model, "--name", "Digits!", "--version", "1", "-o", tmp_path / "o"),
                 2, "--name")
    assert_error(invoke("package", digits_model, "--name", "d", "--version", "1"), 2, "exactly one of")
    np.savez(tmp_path / "wrong.npz", other=np.zeros((1, 1, 8, 8), np.float32))
    assert_error(invoke("package", digits_model, "--name", "d", "--version", "1", "--probe-data",
                        tmp_path / "wrong.npz", "-o", tmp_path / "o"), 14, "no array for input 'input'")
    np.savez(tmp_path / "f64.npz", input=np.zeros((1, 1, 8, 8)))
    assert_error(invoke("package", digits_model, "--name", "d", "--version", "1", "--probe-data",
                        tmp_path / "f64.npz", "-o", tmp_path / "o"), 14, "float64")
    assert_error(invoke("package", digits_model, "--name", "d", "--version", "1", "--report",
                        tmp_path / "missing.json", "-o", tmp_path / "o"), 2, "--report")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_package_refuses_to_overwrite(digits_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    assert_error(invoke("package", digits_model, "--name", "d", "--version", "1", "-o", out), 16, "--force")
    assert (out / "precious.txt").read_text() == "keep" and leftovers(tmp_path) == []
    ok = invoke("package", digits_model, "--name", "d", "--version", "1", "-o", out, "--force")
    assert ok.exit_code == 0 and not (out / "precious.txt").exists() and leftovers(tmp_path) == []


def _corrupt_copies(digits_layout: Path, tmp_path: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    layout = OciLayout(digits_layout)
    index_digest = layout.find()["digest"]
    index = json.loads(read_blob(digits_layout, index_digest))
    manifest = json.loads(read_blob(digits_layout, index["manifests"][0]["digest"]))
    layer = manifest["layers"][0]["digest"]
    for name in ("no-index", "bad-index", "missing-blob", "edited-blob", "not-layout"):
        cases[name] = dst = tmp_path / name
        shutil.copytree(digits_layout, dst)
    (cases["no-index"] / "index.json").unlink()
    (cases["bad-index"] / "index.json").write_text("{not json")
    (cases["missing-blob"] / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).unlink()
    blob = cases["edited-blob"] / "blobs" / "sha256" / layer.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    (cases["not-layout"] / "oci-layout").unlink()
    return cases


def test_show_of_a_file_says_so_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("show of a file must not reach for a registry")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    Path("model.onnx").write_bytes(b"onnx")
    assert_error(invoke("show", "model.onnx"), 27, "model.onnx is a file, not an OCI image layout folder")
    assert_error(invoke("show", tmp_path / "model.onnx"), 27, "is a file")
    assert_error(invoke("show", "other.onnx"), 27, "other.onnx looks like a file name")
    assert_error(invoke("pull", "model.onnx", "-o", tmp_path / "x"), 28, "is a file")
    # references that merely contain dots still go to the registry (refused here by the guard)
    with pytest.raises(AssertionError, match="must not reach"):
        invoke("show", "registry.example:5000/models/digits.v2:1.0", "--retries", "0")


def test_corrupt_layouts_are_refused(digits_layout: Path, tmp_path: Path) -> None:
    cases = _corrupt_copies(digits_layout, tmp_path / "cases")
    assert_error(invoke("show", cases["no-index"]), 27, "index.json")
    assert_error(invoke("show", cases["bad-index"]), 27, "not valid JSON")
    assert_error(invoke("show", cases["missing-blob"]), 27, "missing blob")
    assert_error(invoke("show", cases["not-layout"]), 27, "not an OCI image layout")
    assert_error(invoke("pull", "oci-is-not-a-ref!", "-o", tmp_path / "x"), 28, "invalid image reference")
    # fetch (device side): the edited layer is caught before anything is unpacked into place
    with pytest.raises(Exception) as info:
        fetch_image(str(cases["edited-blob"]), tmp_path / "model")
    assert getattr(info.value, "exit_code", None) == 24
    assert not (tmp_path / "model").exists() and leftovers(tmp_path) == []
    # push reads and checks every blob before it sends anything
    assert_error(invoke("push", cases["edited-blob"], "127.0.0.1:9/m:1", "--retries", "0"), 24,
                 "does not match its digest")


# --- the device-side pieces ------------------------------------------------------------------------
def _tar_gz(entries: list[tarfile.TarInfo], path: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


@pytest.mark.parametrize("name,kind", [("model/../../evil", tarfile.REGTYPE), ("/model/abs", tarfile.REGTYPE),
                                       ("other/file", tarfile.REGTYPE), ("model/link", tarfile.SYMTYPE),
                                       ("model/dev", tarfile.CHRTYPE)])
def test_unpacking_refuses_unsafe_entries(tmp_path: Path, name: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 1 if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    layer = _tar_gz([info], tmp_path / "layer.tar.gz")
    (tmp_path / "out").mkdir()
    with pytest.raises(ImageLayoutError):
        unpack_model_layer(layer, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_model_folder_checks(digits_layout: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    fetch_image(str(digits_layout), folder)
    meta = load_metadata(folder)
    assert parse_metadata(json.loads(meta.to_json())) == meta
    with (folder / "model.onnx").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01")
    with pytest.raises(ModelIntegrityError) as info:
        verify_model_dir(folder)
    assert info.value.exit_code == 39 and "sha256" in info.value.one_line()
    (folder / "edgekit.json").unlink()
    with pytest.raises(ModelMetadataError) as info2:
        verify_model_dir(folder)
    assert info2.value.exit_code == 38
    bad = json.loads(meta.to_json())
    bad["model"]["path"] = "../model.onnx"
    with pytest.raises(ModelMetadataError, match=r"model\.path"):
        parse_metadata(bad)
    bad["model"]["path"] = "model.onnx"
    del bad["inputs"]
    with pytest.raises(ModelMetadataError, match="inputs"):
        parse_metadata(bad)


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:5000/models/digits:1.0", ("127.0.0.1:5000", "models/digits", "1.0", None)),
    ("localhost/digits", ("localhost", "digits", None, None)),
    ("digits", ("docker.io", "library/digits", None, None)),
    ("ghcr.io/acme/digits@sha256:" + "a" * 64, ("ghcr.io", "acme/digits", None, "sha256:" + "a" * 64)),
])
def test_reference_parsing(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text", ["", "UPPER/case", "http://x/y", "x/y@sha256:short", "a b", "x/y:bad!tag"])
def test_bad_references(text: str) -> None:
    from edgekit_agent.errors import ImageReferenceError

    with pytest.raises(ImageReferenceError):
        parse_reference(text)


# --- fuzz: untrusted input only ever raises the documented error -------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                     max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["schema", "name", "version", "model", "inputs", "outputs", "opset",
                                        "ir_version", "precision", "probe", "runtime", "created", "source",
                                        "quantization"]), _json))
def test_parse_metadata_fuzz(data: dict) -> None:
    with contextlib.suppress(ModelMetadataError):
        parse_metadata(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_parse_reference_fuzz(text: str) -> None:
    from edgekit_agent.errors import ImageReferenceError

    try:
        ref = parse_reference(text)
    except ImageReferenceError:
        return
    assert parse_reference(str(ref)) == ref


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_unpacking_garbage_fuzz(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    layer = folder / "layer"
    layer.write_bytes(gzip.compress(data) if data[:1] == b"\x00" else data)
    (folder / "out").mkdir()
    with contextlib.suppress(ImageLayoutError):
        unpack_model_layer(layer, folder / "out")
