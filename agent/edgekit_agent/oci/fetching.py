"""``fetch_image``: get a model image onto the device as a verified model folder.

Order matters: the signature is checked on the top-level digest before any layer is
downloaded; the platform manifest, config and layer are each checked against the digests
that name them; the model folder is unpacked next to ``dest``, bounded by the sizes the config's
copy of ``edgekit.json`` records, and checked with ``verify_model_dir`` (and, with a key, the
whole kept chain with ``check_chain``); the chain is kept in ``.edgekit-image/`` inside it
(``edgekit_agent.provenance``); only then does it replace ``dest`` (a rename). On any
failure ``dest`` is left as it was and the temporary files are gone.
"""

from __future__ import annotations

import contextlib
import os
import platform as _platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent import safejson
from edgekit_agent.errors import ConfigError, EdgekitError, ImageLayoutError, ImageNotFoundError
from edgekit_agent.modelmeta import METADATA_FILE, ModelMetadata, parse_metadata, verify_model_dir
from edgekit_agent.oci.mediatypes import GZIP_LAYER_TYPES, LABEL_METADATA, check_descriptor, parse_json_object
from edgekit_agent.oci.registry import Manifest, RegistryOptions
from edgekit_agent.oci.signatures import SignatureReport, verify_image_signatures
from edgekit_agent.oci.sources import ImageSource, manifest_kind, open_source
from edgekit_agent.oci.unpacking import DEFAULT_MAX_BYTES, layer_budget, unpack_model_layer
from edgekit_agent.provenance import ImageChain, Provenance, check_chain, write_chain

__all__ = ["FetchResult", "ResolvedImage", "current_platform", "fetch_image", "resolve_image"]

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x"}


def current_platform() -> str:
    """``linux/<arch>`` of this machine in OCI terms (``linux/amd64``, ``linux/arm64``, …)."""
    machine = _platform.machine().lower()
    return f"linux/{_ARCH.get(machine, machine)}"


@dataclass(frozen=True)
class ResolvedImage:
    """An image resolved down to one platform's manifest, config and model layer descriptor."""

    digest: str  # the top-level digest (index, or the manifest when there is no index)
    top: Manifest
    manifest: Manifest
    config: dict[str, Any]
    config_digest: str
    layer: dict[str, Any]
    platform: str
    platforms: tuple[str, ...]
    config_bytes: bytes = b""

    def recorded_metadata(self) -> ModelMetadata | None:
        """The config's copy of ``edgekit.json`` (``io.edgekit.metadata``), if it has a valid one."""
        try:
            return parse_metadata(safejson.loads(self.config["config"]["Labels"][LABEL_METADATA]))
        except (EdgekitError, KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class FetchResult:
    reference: str
    digest: str  # telemetry's model.digest: the image (index) digest
    manifest_digest: str
    layer_digest: str
    platform: str
    path: Path
    metadata: ModelMetadata
    signature: SignatureReport | None
    provenance: Provenance


def _platform_of(desc: dict[str, Any]) -> str:
    plat = desc.get("platform") or {}
    if not isinstance(plat, dict):
        return "?"
    text = f"{plat.get('os', '?')}/{plat.get('architecture', '?')}"
    return text + (f"/{plat['variant']}" if plat.get("variant") else "")


def index_platforms(top: Manifest) -> tuple[str, ...]:
    """The ``os/arch[/variant]`` of every entry of an image index (empty for a single manifest)."""
    if manifest_kind(top) != "index":
        return ()
    entries = top.json().get("manifests")
    return tuple(_platform_of(e) for e in entries if isinstance(e, dict)) if isinstance(entries, list) else ()


def resolve_image(source: ImageSource, *, platform: str | None = None, top: Manifest | None = None) -> ResolvedImage:
    """Resolve a source to the manifest of ``platform`` (default: this machine) and its model layer."""
    want = platform or current_platform()
    top = top or source.resolve()
    kind = manifest_kind(top)
    platforms: tuple[str, ...]
    if kind == "index":
        entries = top.json().get("manifests")
        if not isinstance(entries, list) or not entries:
            raise ImageLayoutError(f"image index {top.digest[:19]}… of {source.description} lists no manifests")
        descs = [check_descriptor(d, "index entry") for d in entries]
        platforms = tuple(_platform_of(d) for d in descs)
        chosen = [d for d in descs if _platform_of(d) == want or _platform_of(d).startswith(want + "/")]
        if not chosen:
            raise ImageNotFoundError(f"{source.description} has no {want} image (it has: {', '.join(platforms)})")
        manifest = source.manifest(chosen[0]["digest"])
    else:
        manifest, platforms = top, ()
    body = manifest.json()
    config_desc = check_descriptor(body.get("config"), "manifest config")
    config_bytes = source.blob(config_desc["digest"])
    config = parse_json_object(config_bytes, "image config")
    if kind == "manifest":
        plat = f"{config.get('os', '?')}/{config.get('architecture', '?')}"
        platforms = (plat,)
        if platform and plat != want:
            raise ImageNotFoundError(f"{source.description} is a {plat} image, not {want}")
        want = plat
    layers = body.get("layers")
    if not isinstance(layers, list):
        raise ImageLayoutError(f"manifest {manifest.digest[:19]}… has no layers list")
    model_layers = [check_descriptor(layer, "layer") for layer in layers
                    if isinstance(layer, dict) and layer.get("mediaType") in GZIP_LAYER_TYPES]
    if len(model_layers) != 1 or len(layers) != 1:
        raise ImageLayoutError(f"{source.description} is not an edgekit model image: expected one gzip "
                               f"tar layer, found {len(layers)} layer(s)")
    return ResolvedImage(digest=top.digest, top=top, manifest=manifest, config=config,
                         config_digest=config_desc["digest"], layer=model_layers[0], platform=want,
                         platforms=platforms, config_bytes=config_bytes)


STAGING_PREFIX = ".edgekit-fetch-"


def stage_inside(dest: Path) -> bool:
    """Whether to stage the download inside ``dest`` rather than beside it: ``dest`` is a folder we
    may write but its parent is not, e.g. the init container's ``/model`` (an emptyDir mount point on
    a read-only root filesystem), which can be neither renamed nor have a sibling."""
    return dest.is_dir() and os.access(dest, os.W_OK) and not os.access(dest.parent, os.W_OK)


def _fill_dir(new: Path, dest: Path, work: Path) -> None:
    """Move the verified folder ``new``'s entries into ``dest``, the model metadata last, so a folder
    cut short never looks like a model. What ``dest`` held is replaced only when it is a model folder;
    staging folders of an earlier attempt that died are removed."""
    held = [p for p in dest.iterdir() if p != work]
    for stale in [p for p in held if p.name.startswith(STAGING_PREFIX)]:
        shutil.rmtree(stale, ignore_errors=True)
    held = [p for p in held if not p.name.startswith(STAGING_PREFIX)]
    if held and not (dest / METADATA_FILE).exists():
        raise ConfigError(f"{dest} is not empty and is not a model folder; refusing to replace it", field="dest")
    for old in sorted(held, key=lambda p: p.name == METADATA_FILE, reverse=True):  # metadata first: no model
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for entry in sorted(new.iterdir(), key=lambda p: p.name == METADATA_FILE):
        os.rename(entry, dest / entry.name)


def _replace_dir(new: Path, dest: Path) -> None:
    if dest.exists():
        if not dest.is_dir():
            raise ConfigError(f"{dest} exists and is not a folder", field="dest")
        if any(dest.iterdir()) and not (dest / METADATA_FILE).exists():
            raise ConfigError(f"{dest} is not empty and is not a model folder; refusing to replace it",
                              field="dest")
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rename(dest, old / "x")
        try:
            os.rename(new, dest)
        except OSError:
            os.rename(old / "x", dest)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, dest)


def fetch_image(ref: str, dest: str | os.PathLike[str], *, public_key: Any = None,
                require_signature: bool = False, options: RegistryOptions | None = None,
                platform: str | None = None, on_bytes: Callable[[int], None] | None = None,
                max_model_bytes: int = DEFAULT_MAX_BYTES, source: ImageSource | None = None) -> FetchResult:
    """Download, verify and unpack model image ``ref`` (registry reference or layout folder) into ``dest``.

    ``public_key`` (PEM path/bytes): the image's cosign signature must verify with it.
    ``require_signature`` without a key is a configuration error. ``max_model_bytes`` bounds each
    file of a layer whose config records no sizes.
    """
    if require_signature and public_key is None:
        raise ConfigError("a signature is required but no public key was given", field="public_key")
    dest = Path(dest)
    src = source or open_source(ref, options)
    try:
        top = src.resolve()
        report = verify_image_signatures(src, top.digest, public_key) if public_key is not None else None
        image = resolve_image(src, platform=platform, top=top)
        dest.parent.mkdir(parents=True, exist_ok=True)
        inside = stage_inside(dest)
        work = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX if inside else f".{dest.name}.tmp-",
                                     dir=dest if inside else dest.parent))
        try:
            layer_file = work / "layer.tar.gz"
            src.fetch_blob(image.layer["digest"], layer_file, size=image.layer["size"], on_bytes=on_bytes)
            folder = work / "model"
            folder.mkdir()
            budget = layer_budget(image.recorded_metadata(), max_bytes=max_model_bytes)
            diff_id = unpack_model_layer(layer_file, folder, budget=budget)
            diff_ids = (image.config.get("rootfs") or {}).get("diff_ids") or []
            if diff_ids and diff_ids[0] != diff_id:
                raise ImageLayoutError(f"model layer of {src.description} unpacks to {diff_id[:19]}…, "
                                       f"its config says {str(diff_ids[0])[:19]}…")
            layer_file.unlink()
            metadata = verify_model_dir(folder)
            index = image.top.data if image.top.digest != image.manifest.digest else None
            chain = ImageChain(image=ref, index=index, manifest=image.manifest.data, config=image.config_bytes,
                               payload=report.payload if report else None,
                               signature=report.signature if report else None)
            if public_key is not None:
                provenance = check_chain(folder, chain, metadata, public_key=public_key)
            else:
                provenance = Provenance(image=ref, digest=image.digest, layer_digest=image.layer["digest"],
                                        key_sha256=None)
            write_chain(folder, chain)
            if inside:
                _fill_dir(folder, dest, work)
            else:
                _replace_dir(folder, dest)
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
        return FetchResult(reference=ref, digest=image.digest, manifest_digest=image.manifest.digest,
                           layer_digest=image.layer["digest"], platform=image.platform, path=dest,
                           metadata=metadata, signature=report, provenance=provenance)
    finally:
        if source is None:
            src.close()
