"""What a broker's answer or a failed socket means, as the ``TelemetryError`` family (paho's reason
code kept as ``reason_code``). Both MQTT clients classify refusals here and nowhere else."""

from __future__ import annotations

from typing import Any, Final

from edgekit_agent.errors import (
    BrokerError,
    BrokerProtocolError,
    SubscriptionDeniedError,
    TelemetryAuthError,
    TelemetryError,
    TelemetryTLSError,
)

__all__ = ["AUTH_CODES", "UNSUPPORTED_PROTOCOL", "code_of", "connack_error", "connect_error", "short",
           "suback_error"]

AUTH_CODES: Final = frozenset((134, 135, 140))   # bad user name or password, not authorized, bad auth method
UNSUPPORTED_PROTOCOL: Final = 132                 # also what paho makes of a 3.1.1 broker's CONNACK 0x01


def code_of(reason: Any) -> int | None:
    """The numeric code of a paho ``ReasonCode`` (or of a plain int)."""
    value = getattr(reason, "value", reason)
    return value if isinstance(value, int) else None


def connack_error(reason: Any, url: str, *, version: str = "5", auth_hint: str | None = None) -> TelemetryError:
    """The error a refused CONNACK means: credentials, protocol version, or anything else (retry)."""
    code = code_of(reason)
    if code in AUTH_CODES:
        return TelemetryAuthError(f"{url} refused our credentials: {reason}", reason_code=code, hint=auth_hint)
    if code == UNSUPPORTED_PROTOCOL:
        return BrokerProtocolError(f"{url} refused MQTT {version}: {reason}", reason_code=code)
    return BrokerError(f"{url} refused the connection: {reason}", reason_code=code)


def suback_error(reason: Any, url: str, *, hint: str | None = None) -> SubscriptionDeniedError:
    return SubscriptionDeniedError(f"{url} refused the subscription: {reason}", reason_code=code_of(reason),
                                   hint=hint)


def connect_error(exc: BaseException, url: str, *, tls_hint: str | None = None) -> TelemetryError:
    """The error a failed connect means: TLS (not worth retrying as is) or an unreachable broker."""
    import ssl  # here, not at the top: reading settings (this package) must not pay for importing ssl

    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return TelemetryTLSError(f"TLS with {url} failed: {short(exc)}", hint=tls_hint)
    return BrokerError(f"cannot reach {url}: {short(exc)}")


def short(exc: BaseException) -> str:
    """One line of at most 200 characters describing ``exc``."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]
