"""edgekit's exception tree (central side). The root lives in ``edgekit_agent.errors``.

    EdgekitError                          1
    ├── ConfigError                       2   bad flag/setting/config field                        [P]
    │   └── PublicKeyRequiredError        85  no public key and no --allow-unsigned (defined in         [P]
    │                                           edgekit_agent.errors: the device refuses the same way)
    ├── PermanentError                    3   retrying will not help until something changes
    ├── TemporaryError                    75  retry may succeed (``retry_after``: when, if known)
    ├── ModelError                        10  model file problems
    │   ├── ModelNotFoundError            11
    │   ├── InvalidModelError             12  not ONNX, truncated, fails the checker
    │   └── MissingExternalDataError      13
    ├── DataError                         14  calibration / eval / label data does not fit the model
    ├── QuantizationError                 15  every candidate failed to build
    │   └── UnsupportedModelError         17  the search met a model it cannot handle (the message
    │                                           says what failed where)
    ├── OutputError                       16  cannot write the output path
    ├── ImageError                        20  model image / registry (defined in edgekit_agent.errors,
    │   │                                       the device reads images too)
    │   ├── RegistryUnavailableError      21  down, 429/5xx, dropped connections                   [T]
    │   ├── RegistryAuthError             22  credentials refused                                  [P]
    │   ├── ImageNotFoundError            23  repository / tag / blob missing                      [P]
    │   ├── DigestMismatchError           24  tampered or truncated content                        [P]
    │   ├── SignatureInvalidError         25  wrong key or signature names another image           [P]
    │   ├── SignatureMissingError         26  unsigned image where a signature is required         [P]
    │   ├── ImageLayoutError              27  corrupt OCI layout folder / manifest                 [P]
    │   ├── ImageReferenceError           28  unparsable image reference                           [P]
    │   └── SigningKeyError               29  unreadable key, wrong password                       [P]
    ├── KubeError                         40  Kubernetes (see edgekit.kube)
    │   ├── KubeUnavailableError          41  API server unreachable, 429/5xx                      [T]
    │   ├── KubeAuthError                 42  credentials refused/expired                          [P]
    │   ├── KubeForbiddenError            43  RBAC forbidden                                       [P]
    │   ├── KubeNotFoundError             44  object / kind / namespace missing                    [P]
    │   ├── KubeConflictError             45  field manager conflict, or the object changed meanwhile
    │   ├── KubeInvalidError              46  object rejected as invalid                           [P]
    │   └── SelectorError                 48  label selector does not parse                        [P]
    ├── TelemetryError                    50  MQTT / fleet telemetry (50-55 defined in edgekit_agent.errors,
    │   │                                       one family for the agent and the fleet watcher)
    │   ├── BrokerError                   51  no broker answered                                   [T]
    │   │                                       ``BrokerUnreachableError`` is its former name here
    │   ├── TelemetryAuthError            52  broker refused our credentials                       [P]
    │   ├── TelemetryTLSError             53  TLS handshake / certificate / TLS files              [P]
    │   ├── SubscriptionDeniedError       54  broker refused the subscription (ACL)                [P]
    │   ├── BrokerProtocolError           55  no MQTT version in common, broken session
    │   ├── ExporterBindError             56  cannot listen on the exporter address
    │   ├── NoTelemetryError              57  nothing (of the asked group) received in time
    │   └── IncompleteTelemetryError      58  the fleet's picture may lack devices (dropped messages)  [T]
    └── RolloutError                      60  rollouts, device groups and what they ship; a command
        │                                       that does not fit the rollout's state
        ├── GroupNotFoundError            61  no such device group (no node carries its label), or [P]
        │                                       none of its nodes has the accelerator asked for
        ├── EmptyGroupError               62  the device group exists but has no nodes
        ├── DigestRequiredError           63  image reference without a digest (--require-digest), [P]
        │                                       or the registry answered another digest
        ├── SignatureRequiredError        64  no valid signature while one is required             [P]
        ├── RolloutInProgressError        65  a rollout already runs on this app/group,
        │   └── EngineConflictError       65  or another engine holds this rollout
        ├── InvalidWavesError             66  waves that do not parse or do not add up             [P]
        ├── ThresholdRangeError           67  a gate threshold or duration out of range            [P]
        ├── RolloutNotFoundError          68  no such EdgeRollout                                  [P]
        └── RolledBackError               69  the rollout ended rolled back (a gate failed or aborted)
    ReleasePolicyError                    90  the release policy refuses the image (quantization     [P]
    │                                           attestation); raised before any cluster call
    ├── AttestationMissingError           91  no quantization attestation, where one is required   [P]
    ├── AttestationInvalidError           92  attestations exist but none verifies with the key    [P]
    │                                           for this image (other key, tampered, other image)
    ├── AccuracyBudgetError               93  attested accuracy drop over the policy's budget      [P]
    └── LatencyBudgetError                94  attested latency ratio for the platform at or over   [P]
                                                the policy's limit, or not measured there
    DeviceBenchError                      95  timing candidates on the devices (``edgekit bench --group``)
    ├── NoBenchDeviceError                96  no device of the group answers benches for the app    [P]
    ├── BenchTimeoutError                 97  devices were asked but no result came back in time   [T]
    ├── CandidateRefusedError             98  the devices refused a candidate (signature, digest,  [P]
    │                                           inputs) or its run failed there
    └── BenchInputError                   99  a bad bench request (candidate not pinned by digest,  [P]
                                                too many, out of the agents' bounds)

[T]: also a ``TemporaryError``, worth retrying (after ``retry_after`` when the server said how
long). [P]: also a ``PermanentError``, not worth retrying as it is. Errors marked neither depend on
the situation (a conflict may clear, a rollback is an outcome).

Areas add subclasses here, with exit codes inside their range, so ``edgekit --help`` can list
them all and the CLI maps each to its own exit status. Codes 47 and 49 are retired: a device
group that matches no node and an unpinned image are 61 and 63 from every command.
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
    PermanentError,
    PublicKeyRequiredError,
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
    "AccuracyBudgetError",
    "AttestationInvalidError",
    "AttestationMissingError",
    "BenchInputError",
    "BenchTimeoutError",
    "BrokerError",
    "BrokerProtocolError",
    "BrokerUnreachableError",
    "CandidateRefusedError",
    "ConfigError",
    "DataError",
    "DeviceBenchError",
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
    "IncompleteTelemetryError",
    "InvalidModelError",
    "InvalidWavesError",
    "KubeAuthError",
    "KubeConflictError",
    "KubeError",
    "KubeForbiddenError",
    "KubeInvalidError",
    "KubeNotFoundError",
    "KubeUnavailableError",
    "LatencyBudgetError",
    "MissingExternalDataError",
    "ModelError",
    "ModelNotFoundError",
    "NoBenchDeviceError",
    "NoTelemetryError",
    "OutputError",
    "PermanentError",
    "PublicKeyRequiredError",
    "QuantizationError",
    "RegistryAuthError",
    "RegistryUnavailableError",
    "ReleasePolicyError",
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
    "UnsupportedModelError",
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


class UnsupportedModelError(QuantizationError):
    """Something in the model or its data that the quantization search does not handle: one
    line naming the step and the cause instead of a traceback."""

    exit_code = 17


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


class KubeAuthError(KubeError, PermanentError):
    """The API server refused the credentials (401: expired or unknown token/certificate)."""

    exit_code = 42


class KubeForbiddenError(KubeError, PermanentError):
    """RBAC forbids the request (403)."""

    exit_code = 43


class KubeNotFoundError(KubeError, PermanentError):
    """An object, namespace or API kind (e.g. the EdgeRollout CRD) does not exist (404)."""

    exit_code = 44


class KubeConflictError(KubeError):
    """Another field manager owns a field edgekit would change, or the object changed meanwhile (409)."""

    exit_code = 45


class KubeInvalidError(KubeError, PermanentError):
    """The API server rejected an object as invalid (400/422)."""

    exit_code = 46


class SelectorError(KubeError, PermanentError):
    """A label selector does not parse."""

    exit_code = 48


# --- telemetry (50-59): 50-55 imported above from edgekit_agent.errors --------------------------
BrokerUnreachableError = BrokerError  # the former name of the same error (exit 51)


class ExporterBindError(TelemetryError):
    """The Prometheus exporter cannot listen on the requested address."""

    exit_code = 56


class NoTelemetryError(TelemetryError):
    """Nothing (of the requested group) was received in the time we waited."""

    exit_code = 57


class IncompleteTelemetryError(TelemetryError, TemporaryError):
    """The fleet's picture may lack devices: the broker or this subscriber dropped messages, or the
    retained status has not all arrived (see ``edgekit.fleet.completeness``)."""

    exit_code = 58


# --- rollouts, device groups and the images they ship (60-69) ------------------------------
class RolloutError(EdgekitError):
    exit_code = 60


class GroupNotFoundError(RolloutError, PermanentError):
    """No such device group: no node carries its label (or, with an accelerator, none of its nodes
    advertises it). ``edgekit push``, ``groups show`` and ``render --apply`` all raise this one."""

    exit_code = 61


class EmptyGroupError(RolloutError):
    """The device group exists (a KubeEdge NodeGroup, an OpenYurt NodePool, a selector) but has no nodes."""

    exit_code = 62


class DigestRequiredError(RolloutError, PermanentError):
    """An image reference has no digest where one is required (``--require-digest`` on ``push`` and
    ``render``), or the registry answered another digest than the reference names."""

    exit_code = 63


class SignatureRequiredError(RolloutError, PermanentError):
    exit_code = 64


class RolloutInProgressError(RolloutError):
    """Another rollout of the same app runs on the same group."""

    exit_code = 65


class EngineConflictError(RolloutInProgressError):
    """Another engine holds this rollout's lease (same exit code: someone else is at work)."""


class InvalidWavesError(RolloutError, PermanentError):
    exit_code = 66


class ThresholdRangeError(RolloutError, PermanentError):
    exit_code = 67


class RolloutNotFoundError(RolloutError, PermanentError):
    exit_code = 68


class RolledBackError(RolloutError):
    """The rollout finished rolled back; scripts see a failure."""

    exit_code = 69


# --- device benchmarks (95-99) ----------------------------------------------------------------
class DeviceBenchError(EdgekitError):
    """Timing candidate images on devices of a group (``edgekit bench --group``)."""

    exit_code = 95


class NoBenchDeviceError(DeviceBenchError, PermanentError):
    """No online device of the group answers bench requests for the app (none online, or their
    agents predate device benchmarks or run without an app)."""

    exit_code = 96


class BenchTimeoutError(DeviceBenchError, TemporaryError):
    """The chosen devices were asked but none answered with figures before the deadline."""

    exit_code = 97


class CandidateRefusedError(DeviceBenchError, PermanentError):
    """Every device asked refused a candidate: it did not fetch or verify with the agents' release
    key (tampered, unsigned, other key), did not take the served model's inputs, or failed to run."""

    exit_code = 98


class BenchInputError(DeviceBenchError, PermanentError):
    """A bench request the agents would not run: a candidate not pinned by digest, too many
    candidates, runs or time outside the agents' bounds."""

    exit_code = 99


# --- release policy and quantization attestations (90-94) ---------------------------------
class ReleasePolicyError(PermanentError):
    """The release policy (``edgekit push --policy``) refuses the image. Raised before any call to
    the cluster, so nothing changed. Each subclass is one family of refusal."""

    exit_code = 90


class AttestationMissingError(ReleasePolicyError):
    """The image has no quantization attestation (or its report records no figure the policy needs)."""

    exit_code = 91


class AttestationInvalidError(ReleasePolicyError):
    """Quantization attestations exist, but none verifies with the key and names this image."""

    exit_code = 92


class AccuracyBudgetError(ReleasePolicyError):
    """The attested accuracy drop against FP32 is over the policy's budget."""

    exit_code = 93


class LatencyBudgetError(ReleasePolicyError):
    """The attested latency ratio against FP32 for the group's platform is at or over the limit
    (or was never measured there)."""

    exit_code = 94


def first_line(exc: BaseException, limit: int = 200) -> str:
    """One line describing a foreign exception (some, like a bare AssertionError, have no text)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit]
