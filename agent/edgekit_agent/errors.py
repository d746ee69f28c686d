"""The root of edgekit's one exception tree, shared by the agent and the central package.

    EdgekitError                  exit 1   anything edgekit raises on purpose
    ├── ConfigError               exit 2   a setting or flag has a bad value (names the field)     [P]
    ├── PermanentError            exit 3   retrying will not help until something is changed
    ├── TemporaryError            exit 75  worth retrying later; ``retry_after`` says when, if known
    ├── ImageError                exit 20  model images, registries, signatures (here: the device reads them)
    │   ├── RegistryUnavailableError  21   down, 429/5xx, dropped connections                      [T]
    │   ├── RegistryAuthError         22                                                           [P]
    │   ├── ImageNotFoundError        23                                                           [P]
    │   ├── DigestMismatchError       24                                                           [P]
    │   ├── SignatureInvalidError     25                                                           [P]
    │   ├── SignatureMissingError     26                                                           [P]
    │   ├── ImageLayoutError          27                                                           [P]
    │   │   ├── UnexpectedLayerEntryError 81  a layer entry that is not one of the model files
    │   │   ├── LayerTooLargeError        82  a layer unpacks past the recorded sizes (or the cap)
    │   │   ├── TooManyLayerEntriesError  83
    │   │   └── TrailingLayerDataError    84  data after the end of the tar archive
    │   ├── ImageReferenceError       28                                                           [P]
    │   └── SigningKeyError           29                                                           [P]
    ├── ModelMetadataError        exit 38  model folder: edgekit.json missing or malformed
    │   └── ModelIntegrityError       39   model.onnx / probe.npz do not match edgekit.json
    ├── ProvenanceError           exit 80  a folder's signature chain is missing, forged or broken [P]
    ├── PublicKeyRequiredError    exit 85  no public key configured and unsigned not allowed (a ConfigError) [P]
    ├── AgentError                exit 30  the on-device agent
    │   ├── ModelRejectedError        31   verified, but cannot be served here
    │   ├── ProbeFailedError          32   golden probe outputs out of tolerance
    │   ├── InferenceRequestError     33   malformed inference request (carries the HTTP status)
    │   ├── ModelNotReadyError        34   no model loaded, or probe failing
    │   └── SpoolError                37   telemetry spool cannot be opened or written
    │       └── SpoolLockedError          86   another agent holds this spool past the wait     [T]
    ├── TelemetryError            exit 50  MQTT (agent and fleet alike); ``reason_code`` keeps the broker's
    │   ├── BrokerError               51   broker unreachable or dropped us                        [T]
    │   ├── TelemetryAuthError        52   broker refused our credentials                          [P]
    │   ├── TelemetryTLSError         53   TLS handshake, certificate, or unreadable TLS files     [P]
    │   ├── SubscriptionDeniedError   54   broker refused a subscription (ACL)                     [P]
    │   └── BrokerProtocolError       55   no MQTT version in common
    └── (area trees in edgekit.errors and edgekit_agent.*)

[T] is also a ``TemporaryError``, [P] also a ``PermanentError``: "should I retry?" is in the type,
so a retry loop catches ``TemporaryError`` and waits ``retry_after`` (when the other side said how
long, e.g. an HTTP ``Retry-After``) or its own backoff; anything else stops it.

The MQTT family is one for the device's publisher and the fleet watcher (``edgekit_agent.mqtt``
translates paho's reason codes into it). It replaces the agent's former ``BrokerError`` (35) and
``BrokerAuthError`` (36), which no code path raised; the codes are the ones ``edgekit`` exits
with. ``BrokerAuthError`` stays as another name of ``TelemetryAuthError``.

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


class PermanentError(EdgekitError):
    """Retrying as it is cannot succeed: credentials, names, content or settings must change first."""

    exit_code = 3


class ConfigError(PermanentError):
    """A setting, flag or config file field has a value we cannot use."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        if field and not message.startswith(field):
            message = f"{field}: {message}"
        super().__init__(message, hint=hint)
        self.field = field


class TemporaryError(EdgekitError):
    """Something outside us failed in a way that may pass: retrying later can succeed.

    ``retry_after`` is how long the other side asked us to wait (seconds, e.g. from an HTTP
    ``Retry-After``); None leaves the delay to the retrying loop's own backoff."""

    exit_code = 75  # EX_TEMPFAIL

    def __init__(self, message: str, *, retry_after: float | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value (delta-seconds or an HTTP date); None
    when absent or unparsable."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    import email.utils
    import time

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --- model images: registry, OCI layout, signatures (20-29) ------------------------------------
# Defined here rather than in edgekit.errors because the device's read side (edgekit_agent.oci)
# raises them too; edgekit.errors re-exports the whole family.
class ImageError(EdgekitError):
    """A model image, an OCI layout folder or a registry exchange went wrong."""

    exit_code = 20


class RegistryUnavailableError(ImageError, TemporaryError):
    """The registry is down, keeps answering 5xx, or drops connections (after retries)."""

    exit_code = 21


class RegistryAuthError(ImageError, PermanentError):
    """The registry refused our credentials (401/403)."""

    exit_code = 22


class ImageNotFoundError(ImageError, PermanentError):
    """No such repository, tag, manifest or blob."""

    exit_code = 23


class DigestMismatchError(ImageError, PermanentError):
    """Content does not hash to the digest that names it (tampered or truncated)."""

    exit_code = 24


class SignatureInvalidError(ImageError, PermanentError):
    """A signature exists but does not verify with the given key, or names another image."""

    exit_code = 25


class SignatureMissingError(ImageError, PermanentError):
    """A signature is required and the image has none."""

    exit_code = 26


class ImageLayoutError(ImageError, PermanentError):
    """An OCI layout folder, index, manifest or config is malformed."""

    exit_code = 27


class UnexpectedLayerEntryError(ImageLayoutError):
    """A model layer holds an entry that is not one of the model files (or not a regular file)."""

    exit_code = 81


class LayerTooLargeError(ImageLayoutError):
    """A model layer unpacks to more than its signed metadata records (or the configured cap)."""

    exit_code = 82


class TooManyLayerEntriesError(ImageLayoutError):
    """A model layer has more tar entries than a model folder can hold."""

    exit_code = 83


class TrailingLayerDataError(ImageLayoutError):
    """A model layer carries data after the end of its tar archive (beyond the padding blocks)."""

    exit_code = 84


class ImageReferenceError(ImageError, PermanentError):
    """An image reference cannot be parsed."""

    exit_code = 28


class SigningKeyError(ImageError, PermanentError):
    """A signing or verification key cannot be read (bad PEM, wrong password, not P-256)."""

    exit_code = 29


# --- model folders on the device (38-39; 30-37 are the agent's) ---------------------------------
class ModelMetadataError(EdgekitError):
    """A model folder lacks edgekit.json or the metadata in it is malformed."""

    exit_code = 38


class ModelIntegrityError(ModelMetadataError):
    """model.onnx or probe.npz does not match the sha256/size recorded in edgekit.json."""

    exit_code = 39


class ProvenanceError(PermanentError):
    """A model folder is not tied to a signed image: its stored chain (signature, manifest, config)
    is missing, does not verify with the configured key, or names other files than the folder holds."""

    exit_code = 80


class PublicKeyRequiredError(ConfigError):
    """No public key is configured and unsigned images are not explicitly allowed: edgekit runs
    signed images by default, so this is a setting to make, not a default to fall back on."""

    exit_code = 85


# --- the agent (30-37) ---------------------------------------------------------------------------
class AgentError(EdgekitError):
    """The on-device agent failed at something it was asked to do."""

    exit_code = 30


class ModelRejectedError(AgentError):
    """A model folder verified but cannot be served here (onnxruntime refuses it, runtime too old,
    no signature record although a public key is configured)."""

    exit_code = 31


class ProbeFailedError(AgentError):
    """The golden probe's outputs differ from the packaged ones beyond tolerance."""

    exit_code = 32


class InferenceRequestError(AgentError):
    """An inference request is malformed or does not fit the model; ``status`` is the HTTP code."""

    exit_code = 33

    def __init__(self, message: str, *, status: int = 400, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class ModelNotReadyError(AgentError):
    """No model is loaded, or its golden probe is failing."""

    exit_code = 34


class SpoolError(AgentError):
    """The on-disk telemetry spool cannot be opened or written."""

    exit_code = 37


class SpoolLockedError(SpoolError, TemporaryError):
    """Another agent process held this spool's lock for longer than ``spool_lock_timeout_s``."""

    exit_code = 86


class LocalFileError(AgentError):
    """A file or folder on the device that a command needs cannot be read or written (a read-only
    mount, a missing volume, permissions)."""

    exit_code = 87


# --- MQTT, for the device's publisher and the fleet watcher alike (50-55) -----------------------
# Defined here because both MQTT clients are built on ``edgekit_agent.mqtt``; edgekit.errors
# re-exports the family and adds the fleet-only members (56-57).
class TelemetryError(EdgekitError):
    """An MQTT exchange failed; ``reason_code`` is the broker's (CONNACK/SUBACK) when it gave one."""

    exit_code = 50

    def __init__(self, message: str, *, reason_code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason_code = reason_code


class BrokerError(TelemetryError, TemporaryError):
    """No broker accepted a connection (refused, unresolvable, timed out), or it dropped us."""

    exit_code = 51


class TelemetryAuthError(TelemetryError, PermanentError):
    """The broker refused our username/password or client certificate (not worth fast retries)."""

    exit_code = 52


class TelemetryTLSError(TelemetryError, PermanentError):
    """TLS failed: handshake, certificate verification, or unreadable CA/cert/key files."""

    exit_code = 53


class SubscriptionDeniedError(TelemetryError, PermanentError):
    """The broker refused to subscribe us to the telemetry topics (ACL)."""

    exit_code = 54


class BrokerProtocolError(TelemetryError):
    """The broker and we share no MQTT version, or it broke the protocol."""

    exit_code = 55


BrokerAuthError = TelemetryAuthError  # the agent's former name for the same refusal
