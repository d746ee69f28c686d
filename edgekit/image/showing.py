"""``show``: what a model image is, local or remote, without downloading its layer.

The metadata comes from the ``io.edgekit.metadata`` label of the platform config (a small,
digest-checked blob); the signature status from the ``sha256-<hex>.sig`` manifest, verified
when a public key is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edgekit_agent import safejson
from edgekit_agent.errors import EdgekitError, SignatureInvalidError, SignatureMissingError
from edgekit_agent.oci.fetching import resolve_image
from edgekit_agent.oci.mediatypes import LABEL_METADATA, parse_json_object
from edgekit_agent.oci.registry import RegistryOptions
from edgekit_agent.oci.signatures import load_public_key, signature_layers, verify_image_signatures
from edgekit_agent.oci.sources import LayoutSource, open_source

__all__ = ["ImageSummary", "show_image"]


@dataclass
class ImageSummary:
    source: str
    kind: str  # registry | layout
    digest: str
    media_type: str
    platforms: list[str]
    layer_digest: str
    layer_size: int
    total_size: int  # layer + configs + manifests, each counted once
    metadata: dict[str, Any] | None
    signature: dict[str, Any] = field(default_factory=dict)
    platform: str = ""  # the platform whose manifest, layer and metadata these are

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def show_image(target: str, *, options: RegistryOptions | None = None, public_key: Any = None,
               platform: str | None = None) -> ImageSummary:
    """What ``show`` prints; ``platform``: whose manifest and metadata (default: this machine's)."""
    source = open_source(target, options)
    try:
        top = source.resolve()
        image = resolve_image(source, top=top, platform=platform)
        total = len(top.data) + int(image.layer["size"])
        if top.digest != image.manifest.digest:
            for entry in top.json().get("manifests") or []:
                total += int(entry.get("size", 0))
        total += len(json.dumps(image.config))  # configs are tiny; one stands for all
        labels = (image.config.get("config") or {}).get("Labels") or {}
        metadata = None
        if isinstance(labels, dict) and isinstance(labels.get(LABEL_METADATA), str):
            try:
                metadata = safejson.loads(labels[LABEL_METADATA])
            except json.JSONDecodeError:
                metadata = None
        signature: dict[str, Any]
        sig_manifest = source.signatures(top.digest)
        if sig_manifest is None:
            signature = {"status": "unsigned", "count": 0}
        else:
            count = len(signature_layers(parse_json_object(sig_manifest.data, "signature manifest")))
            signature = {"status": "signed (not verified: no key given)", "count": count}
        if public_key is not None:
            pub = load_public_key(public_key)
            try:
                report = verify_image_signatures(source, top.digest, pub)
                signature = {"status": "verified", "count": report.found, "key": report.key_id}
            except (SignatureMissingError, SignatureInvalidError) as exc:
                signature = {"status": "invalid" if isinstance(exc, SignatureInvalidError) else "unsigned",
                             "count": signature.get("count", 0), "error": exc.one_line()}
            except EdgekitError:
                raise
        return ImageSummary(
            source=source.description, kind="layout" if isinstance(source, LayoutSource) else "registry",
            digest=top.digest, media_type=top.media_type, platforms=list(image.platforms),
            layer_digest=image.layer["digest"], layer_size=int(image.layer["size"]), total_size=total,
            metadata=metadata, signature=signature, platform=image.platform)
    finally:
        source.close()
