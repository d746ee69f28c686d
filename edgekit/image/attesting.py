"""Attach a quantization attestation to an image in a registry, and read it back verified.

Stored as cosign stores attestations (see ``edgekit.image.attestations`` for the format): one
DSSE envelope per layer of the manifest tagged ``sha256-<hex>.att``. Attesting again adds a layer;
the same envelope twice is stored once. ECDSA signatures are randomized, so re-attesting the same
report with the same key adds a new layer, as ``cosign attest`` does.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from edgekit_agent.errors import EdgekitError, ImageNotFoundError
from edgekit_agent.oci.mediatypes import (
    COSIGN_SIGNATURE_ANNOTATION,
    OCI_CONFIG,
    OCI_MANIFEST,
    canonical_json,
    parse_json_object,
    sha256_digest,
)
from edgekit_agent.oci.reference import Reference
from edgekit_agent.oci.registry import Manifest, RegistryClient, RegistryOptions
from edgekit_agent.oci.signatures import key_fingerprint, load_public_key
from edgekit_agent.oci.sources import LayoutSource, RegistrySource, open_source

from edgekit.errors import AttestationInvalidError, AttestationMissingError
from edgekit.image.attestations import (
    DSSE_ENVELOPE,
    PREDICATE_ANNOTATION,
    QUANTIZATION_PREDICATE,
    AttestedClaim,
    attestation_tag,
    envelope_json,
    open_envelope,
    quantization_predicate,
    sign_envelope,
    statement_bytes,
)
from edgekit.image.signing import _put_blob, _signature_config

__all__ = ["AttestResult", "AttestationReport", "attest_image", "host_platform", "predicate_for",
           "verify_attestation"]

_MAX_ENVELOPE = 4 << 20


def host_platform() -> str:
    """This machine as an OCI platform (where ``edgekit quantize`` timed the model, by assumption)."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"linux/{arch}"


def predicate_for(metadata: Mapping[str, Any], platforms: tuple[str, ...] | list[str], *,
                  edgekit_version: str, per_platform: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The quantization predicate of an image's metadata (``per_platform``: each platform's, for an
    image with a layer per platform), with the versions of the tools at hand (``edgekit_version``
    from the caller: the library does not import the package root)."""
    import onnx
    import onnxruntime

    tools = {"edgekit": edgekit_version, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}
    return quantization_predicate(metadata, platforms=platforms, host_platform=host_platform(), tools=tools,
                                  per_platform=per_platform)


@dataclass(frozen=True)
class AttestResult:
    reference: str
    digest: str
    attestation_tag: str
    predicate_type: str
    key_id: str
    attestations: int  # layers in the .att manifest after attesting

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def attest_image(ref: Reference, key: ec.EllipticCurvePrivateKey, predicate: Mapping[str, Any], *,
                 predicate_type: str = QUANTIZATION_PREDICATE,
                 options: RegistryOptions | None = None) -> AttestResult:
    """Sign ``predicate`` as an in-toto statement about the image ``ref`` resolves to (its index
    digest, the one cosign uses) and store the envelope beside it."""
    with RegistryClient(ref.api_host, options) as client:
        digest = ref.digest or client.get_manifest(ref.repository, ref.identifier).digest
        if ref.digest:
            client.get_manifest(ref.repository, ref.digest)  # must exist: refuse to attest a typo
        envelope = envelope_json(sign_envelope(key, statement_bytes(ref.name, digest, predicate, predicate_type)))
        tag = attestation_tag(digest)
        try:
            layers = _layers(client.get_manifest(ref.repository, tag))
        except ImageNotFoundError:
            layers = []
        env_digest = sha256_digest(envelope)
        if not any(layer.get("digest") == env_digest for layer in layers):
            _put_blob(client, ref.repository, envelope)
            layers.append({"mediaType": DSSE_ENVELOPE, "digest": env_digest, "size": len(envelope),
                           "annotations": {COSIGN_SIGNATURE_ANNOTATION: "", PREDICATE_ANNOTATION: predicate_type}})
        config = _signature_config([layer["digest"] for layer in layers])
        _put_blob(client, ref.repository, config)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
                    "layers": layers}
        resp = client.request("PUT", f"/v2/{ref.repository}/manifests/{tag}", repository=ref.repository,
                              actions=("pull", "push"), body=canonical_json(manifest),
                              headers={"Content-Type": OCI_MANIFEST}, expect=(201,),
                              what=f"attestation manifest {tag}")
        resp.read()
        return AttestResult(reference=str(ref.with_digest(digest)), digest=digest, attestation_tag=tag,
                            predicate_type=predicate_type, key_id=key_fingerprint(key.public_key()),
                            attestations=len(layers))


def _layers(manifest: Manifest) -> list[dict[str, Any]]:
    layers = parse_json_object(manifest.data, "attestation manifest").get("layers")
    return [dict(layer) for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []


def _attestation_manifest(source: Any, digest: str) -> Manifest | None:
    tag = attestation_tag(digest)
    if isinstance(source, RegistrySource):
        try:
            return source.client.get_manifest(source.ref.repository, tag)
        except ImageNotFoundError:
            return None
    if isinstance(source, LayoutSource):
        desc = source.layout.find_tag(tag)
        return source.manifest(desc["digest"]) if desc else None
    return None


@dataclass(frozen=True)
class AttestationReport:
    """What the ``.att`` manifest of one digest holds, and the predicate that verified."""

    digest: str
    found: int  # envelopes of the predicate type
    key_id: str
    predicate: dict[str, Any] = field(default_factory=dict)
    predicate_type: str = QUANTIZATION_PREDICATE

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "predicate_type": self.predicate_type, "found": self.found,
                "key_id": self.key_id, "predicate": self.predicate}


def verify_attestation(target: str, key: Any, *, options: RegistryOptions | None = None,
                       predicate_type: str = QUANTIZATION_PREDICATE,
                       digest: str | None = None) -> AttestationReport:
    """The newest attestation of ``predicate_type`` on the image that verifies with ``key`` and
    names the image digest (``digest`` when the caller pinned it already).

    Raises ``AttestationMissingError`` when there is none of that type and
    ``AttestationInvalidError`` when none verifies for this image."""
    pub = load_public_key(key)
    kid = key_fingerprint(pub)
    source = open_source(target, options)
    try:
        if digest is None:
            top = source.resolve()
            if isinstance(source, RegistrySource) and source.ref.digest:
                top = source.manifest(source.ref.digest)
            digest = top.digest
        manifest = _attestation_manifest(source, digest)
        layers = [] if manifest is None else [
            layer for layer in _layers(manifest)
            if (layer.get("annotations") or {}).get(PREDICATE_ANNOTATION) == predicate_type
            and layer.get("mediaType") == DSSE_ENVELOPE]
        if not layers:
            raise AttestationMissingError(f"{target} ({digest[:19]}…) has no {predicate_type} attestation",
                                          hint="package it with `edgekit package --push --sign-key`")
        claims: list[AttestedClaim] = []
        for layer in reversed(layers):  # the newest first
            try:
                data = source.blob(layer["digest"], max_size=_MAX_ENVELOPE)
            except EdgekitError:
                continue
            claims.append(open_envelope(data, pub))
    finally:
        source.close()
    for claim in claims:
        if claim.signed and claim.predicate_type == predicate_type and claim.names(digest):
            return AttestationReport(digest=digest, found=len(layers), key_id=kid, predicate=claim.predicate,
                                     predicate_type=predicate_type)
    if any(c.signed and c.statement is not None for c in claims):
        raise AttestationInvalidError(f"the {predicate_type} attestation of {target} signed with key {kid} "
                                      f"is about another image or type, not {digest[:19]}…")
    raise AttestationInvalidError(f"none of the {len(layers)} attestation(s) of {target} ({digest[:19]}…) "
                                  f"verifies with key {kid}", hint="signed with another key, or tampered with")
