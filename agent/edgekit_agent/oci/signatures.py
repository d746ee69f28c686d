"""Verifying cosign-compatible keyed signatures (simple signing, ``sha256-<hex>.sig`` tag).

cosign stores the signatures of image ``sha256:X`` as an OCI manifest tagged ``sha256-X.sig``
in the image's repository. Each layer of that manifest is one signature: the layer blob is
the simple-signing JSON payload

    {"critical": {"identity": {"docker-reference": "registry/repo"},
                  "image": {"docker-manifest-digest": "sha256:X"},
                  "type": "cosign container image signature"},
     "optional": null}

and the layer's ``dev.cosignproject.cosign/signature`` annotation is the base64 DER ECDSA
signature of the payload's SHA-256. Like ``cosign verify --key``, a signature counts when it
verifies with the key and its payload names the image digest (the ``docker-reference`` is not
compared: signatures stay valid when an image is copied to another registry).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgekit_agent import safejson
from edgekit_agent.errors import (
    EdgekitError,
    SignatureInvalidError,
    SignatureMissingError,
    SigningKeyError,
)
from edgekit_agent.oci.mediatypes import (
    COSIGN_SIGNATURE_ANNOTATION,
    COSIGN_SIGNATURE_TYPE,
    SIMPLESIGNING,
    parse_json_object,
)

__all__ = [
    "SignatureReport",
    "key_fingerprint",
    "load_public_key",
    "simple_signing_payload",
    "verify_image_signatures",
    "verify_kept_signature",
    "verify_payload_signature",
]

_MAX_PAYLOAD = 1 << 20


def load_public_key(key: str | os.PathLike[str] | bytes | ec.EllipticCurvePublicKey) -> ec.EllipticCurvePublicKey:
    """An ECDSA P-256 public key from a PEM file, PEM bytes, or a key object."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        pub = key
    else:
        if isinstance(key, bytes):
            pem, where = key, "public key"
        else:
            where = str(key)
            try:
                pem = Path(key).read_bytes()
            except OSError as exc:
                raise SigningKeyError(f"cannot read public key {where}: {exc.strerror}") from exc
        try:
            loaded = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            hint = "pass the .pub file, not the private key" if b"PRIVATE KEY" in pem else None
            raise SigningKeyError(f"{where} is not a PEM public key", hint=hint) from exc
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise SigningKeyError(f"{where} is not an ECDSA key (edgekit signs with ECDSA P-256)")
        pub = loaded
    if not isinstance(pub.curve, ec.SECP256R1):
        raise SigningKeyError(f"key uses curve {pub.curve.name}; edgekit verifies ECDSA P-256 keys")
    return pub


def key_fingerprint(pub: ec.EllipticCurvePublicKey) -> str:
    """A short id of a public key (sha256 of its DER SubjectPublicKeyInfo, 12 hex digits)."""
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:12]


def simple_signing_payload(docker_reference: str, digest: str, optional: dict[str, Any] | None = None) -> bytes:
    """The payload bytes cosign signs (Go's encoding/json field order, compact)."""
    doc = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_SIGNATURE_TYPE,
        },
        "optional": optional,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def verify_payload_signature(pub: ec.EllipticCurvePublicKey, payload: bytes, signature_b64: str) -> bool:
    try:
        sig = base64.b64decode(signature_b64, validate=True)
        pub.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True)
class SignatureReport:
    """What the signature manifest of one digest holds, and what verified."""

    digest: str
    found: int  # simple-signing layers in the .sig manifest
    verified: tuple[dict[str, Any], ...]  # payloads that verified with the key and name the digest
    key_id: str | None = None
    # the first verified signature as fetched: payload bytes and base64 signature, kept beside the
    # model so that every later load can verify it again without the registry
    payload: bytes = b""
    signature: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.verified)


def _claimed_digest(payload: bytes) -> str | None:
    try:
        doc = safejson.loads(payload)
        critical = doc["critical"]
        if critical["type"] != COSIGN_SIGNATURE_TYPE:
            return None
        digest = critical["image"]["docker-manifest-digest"]
    except (ValueError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) else None


def signature_layers(sig_manifest: dict[str, Any]) -> list[dict[str, Any]]:
    layers = sig_manifest.get("layers")
    if not isinstance(layers, list):
        return []
    return [layer for layer in layers if isinstance(layer, dict) and layer.get("mediaType") == SIMPLESIGNING
            and isinstance((layer.get("annotations") or {}).get(COSIGN_SIGNATURE_ANNOTATION), str)]


def verify_image_signatures(source: Any, digest: str, key: Any) -> SignatureReport:
    """Check the cosign signatures of ``digest`` held by ``source`` (an ``ImageSource``).

    Raises ``SignatureMissingError`` when there are none and ``SignatureInvalidError`` when no
    signature verifies with ``key`` for this digest.
    """
    pub = load_public_key(key)
    kid = key_fingerprint(pub)
    sig_manifest = source.signatures(digest)
    if sig_manifest is None:
        raise SignatureMissingError(f"{source.description} ({digest[:19]}…) is not signed",
                                    hint="sign it with `edgekit sign` or `cosign sign --key`")
    layers = signature_layers(parse_json_object(sig_manifest.data, "signature manifest"))
    if not layers:
        raise SignatureMissingError(f"{source.description} ({digest[:19]}…) has a signature manifest "
                                    "without simple-signing signatures")
    verified: list[dict[str, Any]] = []
    evidence: tuple[bytes, str] = (b"", "")
    other_image = 0
    for layer in layers:
        try:
            payload = source.blob(layer["digest"], max_size=_MAX_PAYLOAD)
        except EdgekitError:
            continue
        if not verify_payload_signature(pub, payload, layer["annotations"][COSIGN_SIGNATURE_ANNOTATION]):
            continue
        if _claimed_digest(payload) != digest:
            other_image += 1
            continue
        verified.append(safejson.loads(payload))
        if not evidence[0]:
            evidence = (payload, layer["annotations"][COSIGN_SIGNATURE_ANNOTATION])
    if not verified:
        if other_image:
            raise SignatureInvalidError(f"the signature of {source.description} made with key {kid} is for "
                                        f"another image, not {digest[:19]}…")
        raise SignatureInvalidError(f"none of the {len(layers)} signature(s) of {source.description} "
                                    f"({digest[:19]}…) verifies with key {kid}",
                                    hint="signed with another key, or tampered with")
    return SignatureReport(digest=digest, found=len(layers), verified=tuple(verified), key_id=kid,
                           payload=evidence[0], signature=evidence[1])


def verify_kept_signature(key: Any, payload: bytes, signature_b64: str) -> str:
    """The image digest a kept simple-signing payload names, once its signature verifies with ``key``.

    Raises ``SignatureInvalidError`` when it does not verify or is not an image signature.
    """
    pub = load_public_key(key)
    if not verify_payload_signature(pub, payload, signature_b64):
        raise SignatureInvalidError(f"the kept signature does not verify with key {key_fingerprint(pub)}",
                                    hint="signed with another key, or tampered with")
    digest = _claimed_digest(payload)
    if digest is None:
        raise SignatureInvalidError("the kept signature is not a cosign image signature")
    return digest
