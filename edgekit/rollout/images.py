"""The engine's image port on a registry: resolve a tag to its digest once, check the signature.

A push pins the image by digest before anything else happens, so every node of every wave gets
exactly the same bytes, whatever the tag points to later.
"""

from __future__ import annotations

from typing import Any

from edgekit_agent.oci.fetching import index_platforms, resolve_image
from edgekit_agent.oci.reference import parse_reference
from edgekit_agent.oci.registry import RegistryOptions
from edgekit_agent.oci.signatures import verify_image_signatures
from edgekit_agent.oci.sources import open_source

from edgekit.errors import (
    DigestRequiredError,
    ImageError,
    SignatureInvalidError,
    SignatureMissingError,
    SignatureRequiredError,
)
from edgekit.rollout.resource import ImageRef, revision_for


class RegistryImages:
    """``ImagePort`` on an OCI registry (``RegistryOptions`` from ``edgekit.image.options``)."""

    def __init__(self, options: RegistryOptions | None = None, *, public_key: Any = None,
                 require_digest: bool = False) -> None:
        self.options = options
        self.public_key = public_key
        self.require_digest = require_digest
        self._sizes: dict[str, int] = {}
        self._platforms: dict[str, tuple[str, ...]] = {}

    def pin(self, image: str) -> ImageRef:
        """``image`` (tag or digest) -> ``repository@sha256:…`` with its revision name."""
        ref = parse_reference(image)
        if self.require_digest and not ref.digest:
            raise DigestRequiredError(f"image {image} has no digest and --require-digest is set",
                                      hint="push repository@sha256:<digest>, or drop --require-digest "
                                           "to resolve the tag once")
        source = open_source(image, self.options)
        try:
            top = source.resolve()
            # the index lists its platforms, even those this machine cannot resolve to
            if listed := index_platforms(top):
                self._platforms[top.digest] = listed
            try:
                resolved = resolve_image(source, top=top)
                self._sizes[top.digest] = int(resolved.layer.get("size", 0))
                self._platforms.setdefault(top.digest, tuple(resolved.platforms))
            except ImageError:
                pass  # size is only for plans; the agent checks the image itself
        finally:
            source.close()
        if ref.digest and top.digest != ref.digest:
            raise DigestRequiredError(f"registry answered digest {top.digest} for {image}")
        pinned = f"{ref.name}@{top.digest}"
        return ImageRef(pinned, top.digest, revision_for(top.digest))

    def verify_signature(self, image: ImageRef) -> str | None:
        """The key id that verified ``image``; None when no key is configured.
        SignatureRequiredError when a key is configured and no signature verifies."""
        if self.public_key is None:
            return None
        source = open_source(image.image, self.options)
        try:
            report = verify_image_signatures(source, image.digest, self.public_key)
        except (SignatureMissingError, SignatureInvalidError) as exc:
            raise SignatureRequiredError(f"refusing {image.image}: {exc.message}",
                                         hint="a public key is configured, so the image must carry a valid "
                                              "signature; sign it with `edgekit sign`") from exc
        finally:
            source.close()
        return report.key_id

    def image_size(self, image: ImageRef) -> int | None:
        return self._sizes.get(image.digest)

    def platforms(self, image: ImageRef) -> tuple[str, ...] | None:
        return self._platforms.get(image.digest)
