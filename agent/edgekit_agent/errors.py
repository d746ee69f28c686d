"""The root of edgekit's one exception tree, shared by the agent and the central package.

    EdgekitError                  exit 1   anything edgekit raises on purpose
    ├── ConfigError               exit 2   a setting or flag has a bad value (names the field)
    ├── TemporaryError            exit 75  worth retrying later (network, broker, registry down)
    ├── ImageError                exit 20  model images, registries, signatures (here: the device reads them)
    │   ├── RegistryUnavailableError  21   (also a TemporaryError)
    │   ├── RegistryAuthError         22
    │   ├── ImageNotFoundError        23
    │   ├── DigestMismatchError       24
    │   ├── SignatureInvalidError     25
    │   ├── SignatureMissingError     26
    │   ├── ImageLayoutError          27
    │   ├── ImageReferenceError       28
    │   └── SigningKeyError           29
    ├── ModelMetadataError        exit 38  model folder: edgekit.json missing or malformed
    │   └── ModelIntegrityError       39   model.onnx / probe.npz do not match edgekit.json
    └── (area trees in edgekit.errors and edgekit_agent.*)

Every subclass carries ``exit_code`` so that a CLI maps an error to a distinct exit status
without a lookup table, and ``hint`` says what to do next. Adapters translate library errors
into this tree with ``raise ... from exc`` at the boundary.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Root of every error edgekit raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text


class ConfigError(EdgekitError):
    """A setting, flag or config file field has a value we cannot use."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        if field and not message.startswith(field):
            message = f"{field}: {message}"
        super().__init__(message, hint=hint)
        self.field = field


class TemporaryError(EdgekitError):
    """Something outside us failed in a way that may pass: retrying later can succeed."""

    exit_code = 75  # EX_TEMPFAIL

    def __init__(self, message: str, *, delay: float | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.delay = delay


# --- model images: registry, OCI layout, signatures (20-29) ------------------------------------
# Defined here rather than in edgekit.errors because the device's read side (edgekit_agent.oci)
# raises them too; edgekit.errors re-exports the whole family.
class ImageError(EdgekitError):
    """A model image, an OCI layout folder or a registry exchange went wrong."""

    exit_code = 20


class RegistryUnavailableError(ImageError, TemporaryError):
    """The registry is down, keeps answering 5xx, or drops connections (after retries)."""

    exit_code = 21


class RegistryAuthError(ImageError):
    """The registry refused our credentials (401/403)."""

    exit_code = 22


class ImageNotFoundError(ImageError):
    """No such repository, tag, manifest or blob."""

    exit_code = 23


class DigestMismatchError(ImageError):
    """Content does not hash to the digest that names it (tampered or truncated)."""

    exit_code = 24


class SignatureInvalidError(ImageError):
    """A signature exists but does not verify with the given key, or names another image."""

    exit_code = 25


class SignatureMissingError(ImageError):
    """A signature is required and the image has none."""

    exit_code = 26


class ImageLayoutError(ImageError):
    """An OCI layout folder, index, manifest or config is malformed."""

    exit_code = 27


class ImageReferenceError(ImageError):
    """An image reference cannot be parsed."""

    exit_code = 28


class SigningKeyError(ImageError):
    """A signing or verification key cannot be read (bad PEM, wrong password, not P-256)."""

    exit_code = 29


# --- model folders on the device (38-39; 30-37 are the agent's) ---------------------------------
class ModelMetadataError(EdgekitError):
    """A model folder lacks edgekit.json or the metadata in it is malformed."""

    exit_code = 38


class ModelIntegrityError(ModelMetadataError):
    """model.onnx or probe.npz does not match the sha256/size recorded in edgekit.json."""

    exit_code = 39
