"""Reading model images on a device: references, registries, layout folders, cosign signatures.

Standard library plus ``cryptography`` only. The central package (``edgekit.image``) builds,
pushes and signs on top of these pieces.

    fetch_image(ref, dest, public_key=...)   verified model folder from a registry or layout
    open_source(text)                        RegistrySource | LayoutSource
    RegistryClient(host, RegistryOptions())  the distribution API client
    verify_image_signatures(source, digest, key)
"""

from __future__ import annotations

from edgekit_agent.oci.credentials import Credentials, load_docker_credentials
from edgekit_agent.oci.fetching import FetchResult, ResolvedImage, current_platform, fetch_image, resolve_image
from edgekit_agent.oci.layout import OciLayout
from edgekit_agent.oci.reference import Reference, parse_reference
from edgekit_agent.oci.registry import Manifest, RegistryClient, RegistryOptions
from edgekit_agent.oci.signatures import (
    SignatureReport,
    key_fingerprint,
    load_public_key,
    simple_signing_payload,
    verify_image_signatures,
)
from edgekit_agent.oci.sources import ImageSource, LayoutSource, RegistrySource, open_source

__all__ = [
    "Credentials",
    "FetchResult",
    "ImageSource",
    "LayoutSource",
    "Manifest",
    "OciLayout",
    "Reference",
    "RegistryClient",
    "RegistryOptions",
    "RegistrySource",
    "ResolvedImage",
    "SignatureReport",
    "current_platform",
    "fetch_image",
    "key_fingerprint",
    "load_docker_credentials",
    "load_public_key",
    "open_source",
    "parse_reference",
    "resolve_image",
    "simple_signing_payload",
    "verify_image_signatures",
]
