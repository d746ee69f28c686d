"""Settings shared across areas. Each area keeps its own typed, frozen settings next to its code,
loaded with ``edgekit_agent.layered.load_layered`` (file < ``EDGEKIT_*`` environment < flags)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_PREFIX = "EDGEKIT_"


def cache_dir() -> Path:
    """Where slow work (Go builds, fetched models) is cached, keyed by version:
    ``$EDGEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgekit``, else ``~/.cache/edgekit``."""
    if env := os.environ.get("EDGEKIT_CACHE_DIR"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit"


def require_public_key(public_key: str | None, allow_unsigned: bool, *, what: str, key_from: str) -> None:
    """Signed by default: ``what`` needs a public key (``key_from`` says where one is set) unless
    unsigned images are explicitly allowed. Checked before anything is contacted or changed."""
    from edgekit_agent.errors import PublicKeyRequiredError

    if public_key is None and not allow_unsigned:
        raise PublicKeyRequiredError(f"{what} requires a public key: images are signed by default",
                                     hint=f"{key_from}, or --allow-unsigned to run unsigned images")


def read_public_key_pem(path: str) -> str:
    """The PEM text of the cosign public key at ``path`` (checked to be one), to ship to devices."""
    from edgekit_agent.errors import ConfigError
    from edgekit_agent.oci.signatures import load_public_key

    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PEM file"
        raise ConfigError(f"cannot read {path}: {reason}", field="public_key") from exc
    load_public_key(text.encode())
    return text


def read_ca_pem(path: str) -> str:
    """The PEM text of the CA certificate(s) at ``path`` (checked to be certificates and nothing
    secret), to ship to devices as the broker's trust anchor."""
    from cryptography import x509
    from edgekit_agent.errors import TelemetryTLSError

    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PEM file"
        raise TelemetryTLSError(f"cannot read CA certificate {path}: {reason}") from exc
    if "PRIVATE KEY" in text:  # a ConfigMap is readable by anyone with get on it
        raise TelemetryTLSError(f"{path} holds a private key", hint="pass only the CA certificate")
    try:
        x509.load_pem_x509_certificates(text.encode())
    except ValueError as exc:
        raise TelemetryTLSError(f"{path} is not a PEM certificate",
                                hint="pass the CA certificate that signed the broker's certificate") from exc
    return text
