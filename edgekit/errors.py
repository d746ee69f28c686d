"""edgekit's exception tree (central side). The root lives in ``edgekit_agent.errors``.

    EdgekitError                          1
    ├── ConfigError                       2   bad flag/setting/config field
    ├── TemporaryError                    75  retry may succeed
    ├── ModelError                        10  model file problems
    │   ├── ModelNotFoundError            11
    │   ├── InvalidModelError             12  not ONNX, truncated, fails the checker
    │   └── MissingExternalDataError      13
    ├── DataError                         14  calibration / eval / label data does not fit the model
    ├── QuantizationError                 15  every candidate failed to build
    ├── OutputError                       16  cannot write the output path
    ├── ImageError                        20  model image / registry (defined in edgekit_agent.errors,
    │   │                                       the device reads images too)
    │   ├── RegistryUnavailableError      21  down, persistent 5xx, dropped connections
    │   ├── RegistryAuthError             22  credentials refused
    │   ├── ImageNotFoundError            23  repository / tag / blob missing
    │   ├── DigestMismatchError           24  tampered or truncated content
    │   ├── SignatureInvalidError         25  wrong key or signature names another image
    │   ├── SignatureMissingError         26  unsigned image where a signature is required
    │   ├── ImageLayoutError              27  corrupt OCI layout folder / manifest
    │   ├── ImageReferenceError           28  unparsable image reference
    │   └── SigningKeyError               29  unreadable key, wrong password
    ├── KubeError                         40  Kubernetes (see edgekit.kube)
    │   ├── KubeUnavailableError          41  API server unreachable (also a TemporaryError)
    │   ├── KubeAuthError                 42  credentials refused/expired
    │   ├── KubeForbiddenError            43  RBAC forbidden
    │   ├── KubeNotFoundError             44  object / kind / namespace missing
    │   ├── KubeConflictError             45  field manager conflict
    │   ├── KubeInvalidError              46  object rejected as invalid
    │   ├── GroupNotFoundError            47  device group matches no node
    │   ├── SelectorError                 48  label selector does not parse
    │   └── UnpinnedImageError            49  image reference without digest (--require-digest)
    ├── TelemetryError                    50  MQTT / fleet telemetry (50-55 defined in edgekit_agent.errors,
    │   │                                       one family for the agent and the fleet watcher)
    │   ├── BrokerError                   51  no broker answered (also a TemporaryError);
    │   │                                       ``BrokerUnreachableError`` is its former name here
    │   ├── TelemetryAuthError            52  broker refused our credentials
    │   ├── TelemetryTLSError             53  TLS handshake / certificate / TLS files
    │   ├── SubscriptionDeniedError       54  broker refused the subscription (ACL)
    │   ├── BrokerProtocolError           55  no MQTT version in common, broken session
    │   ├── ExporterBindError             56  cannot listen on the exporter address
    │   └── NoTelemetryError              57  nothing (of the asked group) received in time
    └── RolloutError                      60  rollout engine; a command that does not fit the state
        ├── UnknownGroupError             61  the device group does not exist
        ├── EmptyGroupError               62  the device group has no nodes
        ├── DigestRequiredError           63  image reference without a resolvable digest
        ├── SignatureRequiredError        64  no valid signature while one is required
        ├── RolloutInProgressError        65  a rollout already runs on this app/group,
        │   └── EngineConflictError       65  or another engine holds this rollout
        ├── InvalidWavesError             66  waves that do not parse or do not add up
        ├── ThresholdRangeError           67  a gate threshold or duration out of range
        ├── RolloutNotFoundError          68  no such EdgeRollout
        └── RolledBackError               69  the rollout ended rolled back (a gate failed or aborted)

Areas add subclasses here, with exit codes inside their range, so ``edgekit --help`` can list
them all and the CLI maps each to its own exit status.
"""

from __future__ import annotations

from edgekit_agent.errors import (
    BrokerError,
    BrokerProtocolError,
    ConfigError,
    DigestMismatchError,
    EdgekitError,
    ImageError,
    ImageLayoutError,
    ImageNotFoundError,
    ImageReferenceError,
    RegistryAuthError,
    RegistryUnavailableError,
    SignatureInvalidError,
    SignatureMissingError,
    SigningKeyError,
    SubscriptionDeniedError,
    TelemetryAuthError,
    TelemetryError,
    TelemetryTLSError,
    TemporaryError,
)

__all__ = [
    "BrokerError",
    "BrokerProtocolError",
    "BrokerUnreachableError",
    "ConfigError",
    "DataError",
    "DigestMismatchError",
    "DigestRequiredError",
    "EdgekitError",
    "EmptyGroupError",
    "EngineConflictError",
    "ExporterBindError",
    "GroupNotFoundError",
    "ImageError",
    "ImageLayoutError",
    "ImageNotFoundError",
    "ImageReferenceError",
    "InvalidModelError",
    "InvalidWavesError",
    "KubeAuthError",
    "KubeConflictError",
    "KubeError",
    "KubeForbiddenError",
    "KubeInvalidError",
    "KubeNotFoundError",
    "KubeUnavailableError",
    "MissingExternalDataError",
    "ModelError",
    "ModelNotFoundError",
    "NoTelemetryError",
    "OutputError",
    "QuantizationError",
    "RegistryAuthError",
    "RegistryUnavailableError",
    "RolledBackError",
    "RolloutError",
    "RolloutInProgressError",
    "RolloutNotFoundError",
    "SelectorError",
    "SignatureInvalidError",
    "SignatureMissingError",
    "SignatureRequiredError",
    "SigningKeyError",
    "SubscriptionDeniedError",
    "TelemetryAuthError",
    "TelemetryError",
    "TelemetryTLSError",
    "TemporaryError",
    "ThresholdRangeError",
    "UnknownGroupError",
    "UnpinnedImageError",
]


# --- models and optimization (10-19) ---------------------------------------------------------
class ModelError(EdgekitError):
    exit_code = 10


class ModelNotFoundError(ModelError):
    exit_code = 11


class InvalidModelError(ModelError):
    exit_code = 12


class MissingExternalDataError(ModelError):
    exit_code = 13


class DataError(EdgekitError):
    """Calibration, eval or label data that does not fit the model."""

    exit_code = 14


class QuantizationError(EdgekitError):
    exit_code = 15


class OutputError(EdgekitError):
    exit_code = 16


# --- model images and registries (20-29): imported above from edgekit_agent.errors ----------


# --- Kubernetes (40-49) ----------------------------------------------------------------------
class KubeError(EdgekitError):
    """Any other failure talking to the Kubernetes API (unexpected status)."""

    exit_code = 40


class KubeUnavailableError(KubeError, TemporaryError):
    """The API server cannot be reached (refused, timed out, TLS failure, 5xx)."""

    exit_code = 41


class KubeAuthError(KubeError):
    """The API server refused the credentials (401: expired or unknown token/certificate)."""

    exit_code = 42


class KubeForbiddenError(KubeError):
    """RBAC forbids the request (403)."""

    exit_code = 43


class KubeNotFoundError(KubeError):
    """An object, namespace or API kind (e.g. the EdgeRollout CRD) does not exist (404)."""

    exit_code = 44


class KubeConflictError(KubeError):
    """Another field manager owns a field edgekit would change, or the object changed meanwhile (409)."""

    exit_code = 45


class KubeInvalidError(KubeError):
    """The API server rejected an object as invalid (400/422)."""

    exit_code = 46


class GroupNotFoundError(KubeError):
    """A device group matches no node."""

    exit_code = 47


class SelectorError(KubeError):
    """A label selector does not parse."""

    exit_code = 48


class UnpinnedImageError(KubeError):
    """An image reference has no digest where one is required (render --require-digest)."""

    exit_code = 49


# --- telemetry (50-59): 50-55 imported above from edgekit_agent.errors --------------------------
BrokerUnreachableError = BrokerError  # the former name of the same error (exit 51)


class ExporterBindError(TelemetryError):
    """The Prometheus exporter cannot listen on the requested address."""

    exit_code = 56


class NoTelemetryError(TelemetryError):
    """Nothing (of the requested group) was received in the time we waited."""

    exit_code = 57


# --- rollouts (60-69) ------------------------------------------------------------------------
class RolloutError(EdgekitError):
    exit_code = 60


class UnknownGroupError(RolloutError):
    exit_code = 61


class EmptyGroupError(RolloutError):
    exit_code = 62


class DigestRequiredError(RolloutError):
    exit_code = 63


class SignatureRequiredError(RolloutError):
    exit_code = 64


class RolloutInProgressError(RolloutError):
    """Another rollout of the same app runs on the same group."""

    exit_code = 65


class EngineConflictError(RolloutInProgressError):
    """Another engine holds this rollout's lease (same exit code: someone else is at work)."""


class InvalidWavesError(RolloutError):
    exit_code = 66


class ThresholdRangeError(RolloutError):
    exit_code = 67


class RolloutNotFoundError(RolloutError):
    exit_code = 68


class RolledBackError(RolloutError):
    """The rollout finished rolled back; scripts see a failure."""

    exit_code = 69


def first_line(exc: BaseException, limit: int = 200) -> str:
    """One line describing a foreign exception (some, like a bare AssertionError, have no text)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit]
