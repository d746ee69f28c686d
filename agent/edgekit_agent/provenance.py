"""The signed chain kept beside a fetched model, and its offline check.

``fetch_image`` keeps, in ``.edgekit-image/`` inside the model folder, the exact bytes that tie the
files to a signature:

    signature.json   {"payload": b64, "signature": b64}: the cosign simple-signing payload and its
                     signature (only when a key verified the image at fetch time)
    index.json       the image index the signature names (absent when it names a manifest)
    manifest.json    the platform manifest
    config.json      the image config: ``rootfs.diff_ids`` and the ``io.edgekit.metadata`` label
    record.json      the reference it was fetched by (informative only: nothing in it is trusted)

Every load checks the chain again with the configured key alone, no network: signature ->
index/manifest digest -> config digest -> the config's copy of ``edgekit.json`` -> (then
``verify_model_dir``) the file hashes -> the files. The layer's diff_id was checked when it was
unpacked; the files are tied to the config by the metadata hashes. A chain is only ever bytes to
verify: none of it says "verified" by itself, so copying it beside other files proves nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent import safejson
from edgekit_agent.errors import EdgekitError, ProvenanceError, SignatureInvalidError
from edgekit_agent.modelmeta import ModelMetadata, parse_metadata

__all__ = ["CHAIN_DIR", "ImageChain", "Provenance", "check_chain", "read_chain", "write_chain"]

CHAIN_DIR = ".edgekit-image"
_RECORD, _INDEX, _MANIFEST, _CONFIG, _SIGNATURE = (
    "record.json", "index.json", "manifest.json", "config.json", "signature.json")
_MAX_FILE = 1 << 20


@dataclass(frozen=True)
class ImageChain:
    """The bytes kept beside a model folder, exactly as fetched."""

    image: str  # the reference it was fetched by (unsigned)
    index: bytes | None  # the top-level index when the image has one
    manifest: bytes
    config: bytes
    payload: bytes | None = None  # simple-signing payload and its base64 signature
    signature: str | None = None

    @property
    def digest(self) -> str:
        """The image digest (telemetry's model.digest): what the signature names."""
        return "sha256:" + hashlib.sha256(self.index if self.index is not None else self.manifest).hexdigest()


@dataclass(frozen=True)
class Provenance:
    """What the chain of a folder proved: the image, its model layer and the key that verified it."""

    image: str
    digest: str
    layer_digest: str | None
    key_sha256: str | None  # id of the public key that verified the signature (``key_fingerprint``)


# --- the check (no I/O besides reading the key) ---------------------------------------------------
def _fail(root: Path, what: str, hint: str | None = None) -> ProvenanceError:
    return ProvenanceError(f"{root} is not tied to a signed image: {what}", hint=hint)


def _json(data: bytes, what: str, root: Path) -> dict[str, Any]:
    from edgekit_agent.oci.mediatypes import parse_json_object

    try:
        return parse_json_object(data, what)
    except EdgekitError as exc:
        raise _fail(root, exc.message) from exc


def check_chain(root: Path, chain: ImageChain, meta: ModelMetadata, *, public_key: Any = None) -> Provenance:
    """Check ``chain`` from the signature (when ``public_key`` is given) down to ``meta``.

    Raises ``ProvenanceError`` naming the first link that does not hold.
    """
    from edgekit_agent.oci.mediatypes import LABEL_METADATA, sha256_digest
    from edgekit_agent.oci.signatures import key_fingerprint, load_public_key, verify_kept_signature

    digest = chain.digest
    key_id = None
    if public_key is not None:
        pub = load_public_key(public_key)
        key_id = key_fingerprint(pub)
        if chain.payload is None or chain.signature is None:
            raise _fail(root, f"it keeps no signature (fetched without a key) and key {key_id} is configured",
                        hint="fetch it again with `edgekit-agent fetch REF --to DIR --public-key KEY`")
        try:
            signed = verify_kept_signature(pub, chain.payload, chain.signature)
        except SignatureInvalidError as exc:
            raise _fail(root, f"it was not verified with key {key_id}: {exc.message}") from exc
        if signed != digest:
            raise _fail(root, f"its signature names {signed[:19]}…, its kept image is {digest[:19]}…")
    manifest_digest = sha256_digest(chain.manifest)
    if chain.index is not None:
        entries = _json(chain.index, "kept image index", root).get("manifests")
        listed = {e.get("digest") for e in entries if isinstance(e, dict)} if isinstance(entries, list) else set()
        if manifest_digest not in listed:
            raise _fail(root, f"its index does not list its manifest {manifest_digest[:19]}…")
    manifest = _json(chain.manifest, "kept manifest", root)
    config_desc = manifest.get("config")
    if not isinstance(config_desc, dict) or config_desc.get("digest") != sha256_digest(chain.config):
        raise _fail(root, "its manifest names another config")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise _fail(root, "its manifest does not name exactly one model layer")
    config = _json(chain.config, "kept config", root)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config.get("rootfs"), dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != 1:
        raise _fail(root, "its config does not name the model layer's diff_id")
    try:
        signed_meta = parse_metadata(safejson.loads(config["config"]["Labels"][LABEL_METADATA]))
    except (EdgekitError, KeyError, TypeError, ValueError) as exc:
        raise _fail(root, f"its config does not record the model metadata ({LABEL_METADATA})") from exc
    if signed_meta != meta:
        raise _fail(root, "its edgekit.json differs from the metadata the image config records",
                    hint="the model folder was modified: fetch it again")
    layer_digest = layers[0].get("digest")
    return Provenance(image=chain.image, digest=digest,
                      layer_digest=layer_digest if isinstance(layer_digest, str) else None, key_sha256=key_id)


# --- the folder (adapter) -------------------------------------------------------------------------
def _b64(text: Any, what: str, root: Path) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise _fail(root, f"its {what} is not base64") from exc


def read_chain(root: Path) -> ImageChain | None:
    """The chain kept in ``root``, or None when the folder has none (an image volume)."""
    folder = root / CHAIN_DIR
    if not folder.is_dir():
        return None

    def read(name: str, *, optional: bool = False) -> bytes | None:
        path = folder / name
        try:
            with open(path, "rb") as fh:
                data = fh.read(_MAX_FILE + 1)
        except FileNotFoundError:
            if optional:
                return None
            raise _fail(root, f"{CHAIN_DIR}/{name} is missing") from None
        except OSError as exc:
            raise _fail(root, f"cannot read {CHAIN_DIR}/{name}: {exc.strerror}") from exc
        if len(data) > _MAX_FILE:
            raise _fail(root, f"{CHAIN_DIR}/{name} is larger than {_MAX_FILE} bytes")
        return data

    record = _json(read(_RECORD) or b"", "kept record", root)
    sig = read(_SIGNATURE, optional=True)
    payload = signature = None
    if sig is not None:
        doc = _json(sig, "kept signature", root)
        payload = _b64(doc.get("payload"), "signature payload", root)
        if not isinstance(doc.get("signature"), str):
            raise _fail(root, "its kept signature has no signature")
        signature = str(doc["signature"])
    return ImageChain(image=str(record.get("image", "")), index=read(_INDEX, optional=True),
                      manifest=read(_MANIFEST) or b"", config=read(_CONFIG) or b"", payload=payload,
                      signature=signature)


def write_chain(root: Path, chain: ImageChain, *, mode: int = 0o644) -> None:
    """Keep ``chain`` in ``root/.edgekit-image/`` (the folder is not in place yet: no atomic renames).
    The files are flushed to disk: the caller renames ``root`` into place next."""
    folder = root / CHAIN_DIR
    folder.mkdir(mode=0o777 if mode & 0o077 else 0o700)  # private files, private folder
    files = {_RECORD: json.dumps({"image": chain.image, "fetched": time.time()}, indent=2).encode() + b"\n",
             _MANIFEST: chain.manifest, _CONFIG: chain.config}
    if chain.index is not None:
        files[_INDEX] = chain.index
    if chain.payload is not None and chain.signature is not None:
        files[_SIGNATURE] = json.dumps({"payload": base64.b64encode(chain.payload).decode(),
                                        "signature": chain.signature}, indent=2).encode() + b"\n"
    for name, data in files.items():
        with open(folder / name, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(folder / name, mode)
