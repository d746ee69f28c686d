"""``package``: build a model image (OCI image index, linux/amd64 + linux/arm64) from ONNX files.

Each platform's manifest has one layer, a gzip tar of ``model/model.onnx``, ``model/edgekit.json``
and ``model/probe.npz``, and a config that names its platform and carries the metadata as a
label (so ``show`` needs no layer download). With one model every platform's manifest points at
the same layer; a platform given its own model file (a build per device class) gets a layer of
its own, with its own quantization report (from beside that file) and golden probe. Every probe is
computed by this host's onnxruntime: ONNX semantics do not depend on the CPU, and a device
re-checks its probe at load and refuses a model that does not reproduce it.

Reproducible by construction: the same model, settings and ``created`` time give the same
digest. Tar entries are sorted, owned by 0:0 with fixed modes and mtimes; gzip gets no name
and mtime 0; the probe archive has fixed zip timestamps; generated probe inputs are seeded
from the model's sha256; JSON documents are written with sorted keys. ``created`` defaults to
``SOURCE_DATE_EPOCH`` when set, else to the model file's modification time.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
from edgekit_agent import safejson
from edgekit_agent.modelmeta import (
    METADATA_FILE,
    MODEL_FILE,
    PROBE_FILE,
    FileRef,
    ModelMetadata,
    ProbeRef,
    RuntimeRequirements,
    TensorSpec,
    file_sha256,
)
from edgekit_agent.oci.mediatypes import (
    ANN_CREATED,
    ANN_SOURCE,
    ANN_TITLE,
    ANN_VERSION,
    LABEL_METADATA,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    canonical_json,
    descriptor,
)

from edgekit.errors import ConfigError, DataError, InvalidModelError
from edgekit.image.layouts import LayoutWriter
from edgekit.optimize.inspecting import graph_inputs, inspect_model, tensor_info
from edgekit.optimize.loading import check_path, external_data_files, load_model
from edgekit.optimize.sessions import make_session, run
from edgekit.optimize.shapes import resolve_shape
from edgekit.optimize.speedup import recorded_test

__all__ = ["BuiltImage", "PackageSettings", "build_image", "model_files", "package", "parse_platforms", "report_beside",
           "summarize_report"]

DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")
_BLOCK = 1 << 20
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# How closely a device must reproduce the probe outputs. FP32 kernels differ a little between
# CPUs (FMA, vector width); int8 requantization can differ by one step, so that bound is wider.
_TOLERANCE = {"fp32": (1e-3, 1e-4), "int8": (5e-2, 5e-2), "mixed": (5e-2, 5e-2)}


@dataclass(frozen=True)
class PackageSettings:
    name: str
    version: str
    source: str | None = None
    created: str | None = None  # RFC 3339; default: SOURCE_DATE_EPOCH, else the model's mtime
    report: Path | None = None  # quantize report; default: <model>.report.json when present
    probe_data: Path | None = None  # .npz with input arrays; default: generated
    probe_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    probe_batch: int = 1
    rtol: float | None = None
    atol: float | None = None
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    # platform -> its own model file (a build per device class); the others get the MODEL argument
    platform_models: Mapping[str, Path] = field(default_factory=dict)
    min_onnxruntime: str = "1.18"
    compression_level: int = 6


@dataclass(frozen=True)
class BuiltImage:
    path: Path  # the OCI layout folder
    tag: str
    digest: str  # the image index digest
    manifests: dict[str, str]  # platform -> manifest digest
    layer_digest: str  # the first platform's layer (the only one when all platforms share it)
    layer_size: int
    metadata: ModelMetadata  # the first platform's
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # platform -> {digest, size}
    platform_metadata: dict[str, ModelMetadata] = field(default_factory=dict)  # platform -> its metadata

    @property
    def per_platform(self) -> bool:
        """True when the platforms do not all share one layer."""
        return len({layer["digest"] for layer in self.layers.values()}) > 1

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "tag": self.tag, "digest": self.digest, "manifests": self.manifests,
                "layer": {"digest": self.layer_digest, "size": self.layer_size},
                "layers": {plat: {**layer, "model_sha256": self.platform_metadata[plat].model.sha256}
                           for plat, layer in self.layers.items()},
                "metadata": self.metadata.to_dict()}


# --- settings checks -------------------------------------------------------------------------------
def _check_settings(settings: PackageSettings) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,127}", settings.name):
        raise ConfigError(f"{settings.name!r} must be lowercase letters, digits and . _ - (max 128)",
                          field="--name")
    if not re.fullmatch(r"[\w][\w.-]{0,127}", settings.version):
        raise ConfigError(f"{settings.version!r} must be a valid image tag (letters, digits, . _ -)",
                          field="--version")
    for plat in settings.platforms:
        if plat.count("/") != 1 or not all(plat.split("/")):
            raise ConfigError(f"{plat!r} is not os/arch", field="--platform")
    if len(set(settings.platforms)) != len(settings.platforms):
        raise ConfigError(f"a platform is listed twice: {', '.join(settings.platforms)}", field="--platform")
    if (extra := sorted(set(settings.platform_models) - set(settings.platforms))):
        raise ConfigError(f"a model is given for {', '.join(extra)}, which the image does not list",
                          field="--platform")
    if not 0 <= settings.compression_level <= 9:
        raise ConfigError("must be 0-9", field="compression_level")


def parse_platforms(values: tuple[str, ...] | list[str]) -> tuple[tuple[str, ...], dict[str, Path]]:
    """``--platform`` values (repeatable, comma-separated), each ``OS/ARCH`` or ``OS/ARCH=FILE``:
    the platforms in order (none given: the defaults) and the model file of those that name one."""
    platforms: list[str] = []
    files: dict[str, Path] = {}
    for value in values:
        for item in value.split(","):
            plat, sep, file = (part.strip() for part in item.partition("="))
            if not plat or (sep and not file):
                raise ConfigError(f"{item.strip()!r} is not OS/ARCH or OS/ARCH=FILE", field="--platform")
            platforms.append(plat)
            if file:
                files[plat] = Path(file)
    return tuple(platforms) or DEFAULT_PLATFORMS, files


def model_files(model: Path | None, settings: PackageSettings) -> dict[str, Path]:
    """Which model file each platform of the image gets, in the order the platforms are listed:
    its own (``platform_models``), else ``model``. Raises when a platform has neither, or when
    ``model`` is given but no platform takes it."""
    files: dict[str, Path] = {}
    for plat in settings.platforms:
        own = settings.platform_models.get(plat)
        if own is None and model is None:
            raise ConfigError(f"no model for {plat}: give MODEL, or {plat}=FILE", field="--platform")
        files[plat] = own if own is not None else model  # type: ignore[assignment]
    if model is not None and model not in files.values():
        raise ConfigError(f"MODEL {model} is not used: every platform names its own file",
                          field="--platform", hint="drop MODEL, or list a platform without =FILE")
    return files


def _created(settings: PackageSettings, model: Path) -> tuple[str, int]:
    """The image's creation time as RFC 3339 text and as epoch seconds (tar mtimes); ``model`` is
    the newest model file of the image."""
    if settings.created:
        text = settings.created.replace("Z", "+00:00")
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise ConfigError(f"{settings.created!r} is not an RFC 3339 time", field="--created") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
    elif (epoch := os.environ.get("SOURCE_DATE_EPOCH", "").strip()):
        try:
            when = dt.datetime.fromtimestamp(int(epoch), dt.UTC)
        except ValueError as exc:
            raise ConfigError(f"{epoch!r} is not an integer", field="SOURCE_DATE_EPOCH") from exc
    else:
        when = dt.datetime.fromtimestamp(int(model.stat().st_mtime), dt.UTC)
    when = when.astimezone(dt.UTC).replace(microsecond=0)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ"), max(0, int(when.timestamp()))


# --- quantization report ---------------------------------------------------------------------------
def report_beside(model: Path) -> Path | None:
    """``<model>.report.json`` as written by ``edgekit quantize``, when it exists."""
    for candidate in (model.with_name(model.name + ".report.json"), model.with_suffix(".report.json")):
        if candidate.is_file():
            return candidate
    return None


def summarize_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a quantize report a device and ``show`` care about: method, size, latency, fidelity."""
    result = report.get("result") if isinstance(report.get("result"), Mapping) else {}
    baseline = report.get("baseline") if isinstance(report.get("baseline"), Mapping) else {}
    assert isinstance(result, Mapping) and isinstance(baseline, Mapping)
    fp32_size, size = baseline.get("size_bytes"), result.get("size_bytes")
    fp32_ms, ms = baseline.get("latency_p50_ms"), result.get("latency_p50_ms")
    latency = {"fp32_p50_ms": fp32_ms, "p50_ms": ms, "ratio": result.get("latency_ratio"),
               "threads": report.get("threads")}
    if report.get("timed_on"):
        # where quantize timed it (its host); an older report does not say, and the attestation
        # then attributes the figure to the packaging host
        latency["measured_on"] = report["timed_on"]
    speed = result.get("speed") if isinstance(result.get("speed"), Mapping) else None
    if speed is not None:
        latency["speed"] = recorded_test(speed)  # the build host's paired test against FP32
    devices = _device_latency(report, result)
    if devices is not None:
        latency["devices"] = devices
    return {
        "method": report.get("method"),
        "precision": report.get("precision"),
        "chosen": report.get("chosen"),
        "metric": report.get("metric"),
        # Reports older than the task metrics lack these two: an empty record says "none given".
        "metric_settings": report.get("metric_settings") or {},
        "metric_reason": report.get("metric_reason") or "",
        "budget": report.get("budget"),
        "size": {"fp32_bytes": fp32_size, "bytes": size,
                 "ratio": round(size / fp32_size, 4) if size and fp32_size else None},
        "latency": latency,
        "fidelity": result.get("fidelity") if result else {"score": baseline.get("score")},
    }


def _device_latency(report: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any] | None:
    """What devices of a group measured for the chosen build (``quantize --timing-group``), or None
    when the report was not timed there. The ratio is the paired test's median per-round ratio
    when the devices sent per-round times, else the median over devices of their ratios of medians."""
    source = report.get("latency_source")
    figure = result.get("device_latency")
    if not isinstance(source, Mapping) or source.get("source") != "devices" or not isinstance(figure, Mapping):
        return None
    speed = figure.get("speed") if isinstance(figure.get("speed"), Mapping) else {}
    assert isinstance(speed, Mapping)
    paired = speed.get("ratio") is not None
    names = figure.get("devices") if isinstance(figure.get("devices"), list) else []
    assert isinstance(names, list)
    return {"platform": figure.get("platform") or source.get("platform"), "group": source.get("group"),
            "app": source.get("app"), "devices": len(names), "device_names": [str(n) for n in names],
            "ratio": speed.get("ratio") if paired else figure.get("ratio"),
            "ratio_of_medians": figure.get("ratio"), "median_ms": figure.get("median_ms"), "n": figure.get("n"),
            "reference": figure.get("reference"),
            **recorded_test(speed if paired else {}, ratio=False)}


def _load_report(path: Path) -> dict[str, Any]:
    try:
        data = safejson.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"quantization report {path} does not exist", field="--report") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"quantization report {path} is not readable JSON: {exc}", field="--report") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"quantization report {path} is not a JSON object", field="--report")
    return data


# --- model facts -----------------------------------------------------------------------------------
_COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
_QUANT_COMPUTE = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
                  "DynamicQuantizeMatMul"}


def _precision(model: onnx.ModelProto, state: str) -> str:
    """fp32, int8 (every Conv/MatMul/Gemm runs quantized) or mixed."""
    if state == "none":
        return "fp32"
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    float_compute = quant_compute = 0
    for node in model.graph.node:
        if node.op_type in _QUANT_COMPUTE:
            quant_compute += 1
        elif node.op_type in _COMPUTE:
            fed = [producers.get(i) for i in node.input[:2]]
            if all(p == "DequantizeLinear" for p in fed):
                quant_compute += 1
            else:
                float_compute += 1
    return "mixed" if float_compute and quant_compute else "int8"


def _specs(values: list[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    specs = []
    for value in values:
        info = tensor_info(value)
        shape = tuple("?" if d is None else d for d in (info.shape or ()))
        specs.append(TensorSpec(name=info.name, dtype=info.dtype, shape=shape))
    return tuple(specs)


# --- probe -----------------------------------------------------------------------------------------
def _probe_inputs(model: onnx.ModelProto, settings: PackageSettings, sha256: str) -> dict[str, np.ndarray]:
    infos = [tensor_info(v) for v in graph_inputs(model)]
    if settings.probe_data is not None:
        try:
            with np.load(settings.probe_data, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read probe data {settings.probe_data}: {exc}") from exc
        feed: dict[str, np.ndarray] = {}
        for info in infos:
            arr = arrays.get(f"input/{info.name}", arrays.get(info.name))
            if arr is None:
                raise DataError(f"probe data {settings.probe_data} has no array for input {info.name!r}",
                                hint=f"name it {info.name!r} or 'input/{info.name}'")
            if str(arr.dtype) != info.dtype:
                raise DataError(f"probe input {info.name!r} is {arr.dtype}, the model wants {info.dtype}")
            resolve_shape(info, tuple(int(d) for d in arr.shape))
            feed[info.name] = arr
        return feed
    rng = np.random.default_rng(int(sha256[:16], 16))
    feed = {}
    for info in infos:
        shape = resolve_shape(info, settings.probe_shapes.get(info.name), settings.probe_batch)
        dtype = np.dtype(info.dtype) if info.dtype != "string" else None
        if dtype is None:
            raise DataError(f"input {info.name!r} takes strings; pass --probe-data")
        if dtype.kind == "f":
            feed[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feed[info.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feed[info.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise DataError(f"cannot generate probe data for input {info.name!r} of type {info.dtype}",
                            hint="pass --probe-data")
    return feed


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz with sorted entries and fixed timestamps (numpy's own savez stamps the time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, payload.getvalue())
    return buf.getvalue()


# --- the layer -------------------------------------------------------------------------------------
class _HashingWriter:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _tarinfo(name: str, size: int, mtime: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = mtime
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_layer(entries: Mapping[str, bytes | Path], out: Path, *, mtime: int,
                level: int = 6) -> tuple[str, int, str]:
    """A reproducible gzip tar of ``model/<name>`` entries; returns (digest, size, diff_id)."""
    with open(out, "wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=level) as gz:
            plain = _HashingWriter(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                tar.addfile(_tarinfo("model", 0, mtime, directory=True))
                for name in sorted(entries):
                    item = entries[name]
                    if isinstance(item, bytes):
                        tar.addfile(_tarinfo(f"model/{name}", len(item), mtime), io.BytesIO(item))
                    else:
                        with open(item, "rb") as fh:
                            size = os.fstat(fh.fileno()).st_size
                            tar.addfile(_tarinfo(f"model/{name}", size, mtime), fh)
    return ("sha256:" + compressed.hasher.hexdigest(), compressed.size, "sha256:" + plain.hasher.hexdigest())


# --- the whole image -------------------------------------------------------------------------------
def _annotations(meta: ModelMetadata) -> dict[str, str]:
    ann = {ANN_TITLE: meta.name, ANN_VERSION: meta.version, ANN_CREATED: meta.created}
    if meta.source:
        ann[ANN_SOURCE] = meta.source
    return ann


def build_metadata(model_path: Path, settings: PackageSettings, *,
                   created_from: Path | None = None) -> tuple[ModelMetadata, bytes]:
    """Read the model, run the probe with onnxruntime; return the metadata and probe.npz bytes.
    ``created_from``: the file whose mtime is the default creation time [``model_path``]."""
    _check_settings(settings)
    model = load_model(model_path, load_external=False)
    if external_data_files(model):
        raise InvalidModelError(f"{model_path} keeps its weights in external data files",
                                hint="save the model with its tensors inside (onnx.save without "
                                     "save_as_external_data) to package it")
    info = inspect_model(model_path, model)
    sha256, size = file_sha256(model_path)
    created, _ = _created(settings, created_from or model_path)
    report_path = settings.report or report_beside(model_path)
    report = _load_report(report_path) if report_path else None
    precision = _precision(model, info.quantization)
    if report and report.get("precision") in ("fp32", "int8", "mixed"):
        precision = str(report["precision"])
    feed = _probe_inputs(model, settings, sha256)
    inputs, outputs_spec = _specs(graph_inputs(model)), _specs(list(model.graph.output))
    del model
    session = make_session(model_path, threads=1)
    outputs = run(session, feed)
    out_names = [o.name for o in session.get_outputs()]
    arrays = {f"input/{k}": v for k, v in feed.items()}
    arrays.update({f"output/{name}": arr for name, arr in zip(out_names, outputs, strict=True)})
    probe = _npz_bytes(arrays)
    rtol, atol = _TOLERANCE[precision]
    meta = ModelMetadata(
        name=settings.name,
        version=settings.version,
        model=FileRef(path=MODEL_FILE, sha256=sha256, size=size),
        inputs=inputs,
        outputs=outputs_spec,
        opset=info.opset or 1,
        ir_version=info.ir_version,
        precision=precision,
        quantization=summarize_report(report) if report else None,
        probe=ProbeRef(path=PROBE_FILE, sha256=hashlib.sha256(probe).hexdigest(), size=len(probe),
                       rtol=settings.rtol if settings.rtol is not None else rtol,
                       atol=settings.atol if settings.atol is not None else atol),
        runtime=RuntimeRequirements(min_onnxruntime=settings.min_onnxruntime),
        created=created,
        source=settings.source,
    )
    return meta, probe


def _newest(files: list[Path]) -> Path:
    return max(files, key=lambda p: (p.stat().st_mtime, str(p)))


@dataclass(frozen=True)
class _Layer:
    digest: str
    size: int
    diff_id: str
    metadata: ModelMetadata


def _write_model_layer(model_path: Path, settings: PackageSettings, writer: LayoutWriter, *,
                       newest: Path) -> _Layer:
    before = model_path.stat()
    meta, probe = build_metadata(model_path, settings, created_from=newest)
    _, mtime = _created(settings, newest)
    layer_tmp = writer.temp_file("layer")
    digest, size, diff_id = write_layer(
        {METADATA_FILE: meta.to_json().encode(), MODEL_FILE: model_path, PROBE_FILE: probe}, layer_tmp,
        mtime=mtime, level=settings.compression_level)
    after = model_path.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or after.st_size != meta.model.size:
        raise InvalidModelError(f"{model_path} changed while it was being packaged")
    writer.add_file(layer_tmp, digest)
    return _Layer(digest, size, diff_id, meta)


def build_image(model_path: str | os.PathLike[str] | None, settings: PackageSettings,
                writer: LayoutWriter) -> BuiltImage:
    """Write the blobs of a model image into ``writer`` and return the index descriptor facts.
    ``model_path`` is the model of every platform without its own file in ``settings.platform_models``."""
    _check_settings(settings)
    model = check_path(model_path) if model_path is not None else None
    own = {plat: check_path(path) for plat, path in settings.platform_models.items()}
    files = model_files(model, replace(settings, platform_models=own))
    newest = _newest(list(files.values()))
    built: dict[Path, _Layer] = {}
    for path in dict.fromkeys(files.values()):  # one layer per distinct file, in platform order
        # the --report names MODEL's report; a platform's own file brings the report beside it
        layer_settings = settings if path == model else replace(settings, report=None)
        built[path] = _write_model_layer(path, layer_settings, writer, newest=newest)
    first = built[files[settings.platforms[0]]]
    annotations = _annotations(first.metadata)
    manifests: dict[str, str] = {}
    index_entries = []
    for plat, path in files.items():
        layer = built[path]
        meta = layer.metadata
        os_name, arch = plat.split("/")
        labels = {**_annotations(meta),
                  LABEL_METADATA: json.dumps(meta.to_dict(), separators=(",", ":"), sort_keys=True)}
        config = {
            "architecture": arch, "os": os_name, "created": meta.created,
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created": meta.created, "created_by": f"edgekit package {meta.name}:{meta.version}"}],
        }
        config_bytes = canonical_json(config)
        writer.add_bytes(config_bytes)
        layer_desc = {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size,
                      "annotations": {ANN_TITLE: "model"}}
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, config_bytes), "layers": [layer_desc],
                    "annotations": annotations}
        manifest_bytes = canonical_json(manifest)
        manifests[plat] = writer.add_bytes(manifest_bytes)
        index_entries.append(descriptor(OCI_MANIFEST, manifest_bytes,
                                        platform={"architecture": arch, "os": os_name}))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries, "annotations": annotations}
    index_bytes = canonical_json(index)
    digest = writer.add_bytes(index_bytes)
    return BuiltImage(path=writer.dest, tag=first.metadata.version, digest=digest, manifests=manifests,
                      layer_digest=first.digest, layer_size=first.size, metadata=first.metadata,
                      layers={plat: {"digest": built[p].digest, "size": built[p].size} for plat, p in files.items()},
                      platform_metadata={plat: built[p].metadata for plat, p in files.items()})


def index_entry(image: BuiltImage, writer: LayoutWriter) -> dict[str, Any]:
    from edgekit_agent.oci.mediatypes import ANN_REF_NAME

    data = writer.blob_path(image.digest).read_bytes()
    return descriptor(OCI_INDEX, data, annotations={ANN_REF_NAME: image.tag})


def package(model_path: str | os.PathLike[str] | None, settings: PackageSettings,
            output: str | os.PathLike[str], *, force: bool = False) -> BuiltImage:
    """Build the model image into the OCI layout folder ``output`` (atomically)."""
    if model_path is not None:
        check_path(model_path)
    for path in settings.platform_models.values():
        check_path(path)
    _check_settings(settings)
    with LayoutWriter(output, force=force) as writer:
        image = build_image(model_path, settings, writer)
        writer.commit([index_entry(image, writer)])
    return image


def package_to_temp(model_path: str | os.PathLike[str] | None, settings: PackageSettings) -> tuple[BuiltImage, Path]:
    """Build into a fresh temporary layout (for ``package --push``); the caller removes it."""
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-package-"))
    return package(model_path, settings, tmp / "layout"), tmp
