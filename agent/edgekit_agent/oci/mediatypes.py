"""OCI / Docker media types, annotation keys and digest helpers used by model images."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from edgekit_agent import safejson
from edgekit_agent.errors import DigestMismatchError, ImageLayoutError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
GZIP_LAYER_TYPES = (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP)
# What we ask a registry for when resolving a reference.
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

# cosign's simple-signing signatures
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"

ANN_TITLE = "org.opencontainers.image.title"
ANN_VERSION = "org.opencontainers.image.version"
ANN_CREATED = "org.opencontainers.image.created"
ANN_SOURCE = "org.opencontainers.image.source"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_DESCRIPTION = "org.opencontainers.image.description"
# Compact edgekit.json, carried in the config so `show` needs no layer download.
LABEL_METADATA = "io.edgekit.metadata"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(text: str) -> bool:
    return bool(_DIGEST.match(text))


def check_digest(text: Any, what: str = "digest") -> str:
    """Return ``text`` if it is a ``sha256:<64 hex>`` digest (the only algorithm we accept)."""
    if not isinstance(text, str) or not _DIGEST.match(text):
        raise ImageLayoutError(f"{what} {text!r} is not a sha256 digest")
    return text


def verify_bytes(data: bytes, digest: str, what: str) -> bytes:
    actual = sha256_digest(data)
    if actual != digest:
        raise DigestMismatchError(f"{what} hashes to {actual[:19]}…, expected {digest[:19]}…",
                                  hint="the content was tampered with or corrupted")
    return data


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of an image digest: ``sha256-<hex>.sig``."""
    algo, _, hexpart = check_digest(digest).partition(":")
    return f"{algo}-{hexpart}.sig"


def canonical_json(obj: Any) -> bytes:
    """Compact JSON with sorted keys: the bytes we hash for manifests and configs we write."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = safejson.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImageLayoutError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ImageLayoutError(f"{what} is not a JSON object")
    return obj


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    desc: dict[str, Any] = {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}
    desc.update({k: v for k, v in extra.items() if v})
    return desc


def check_descriptor(desc: Any, what: str) -> dict[str, Any]:
    if not isinstance(desc, dict):
        raise ImageLayoutError(f"{what} is not a descriptor object")
    check_digest(desc.get("digest"), f"{what} digest")
    size = desc.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImageLayoutError(f"{what} has no valid size")
    if not isinstance(desc.get("mediaType"), str):
        raise ImageLayoutError(f"{what} has no mediaType")
    return desc
