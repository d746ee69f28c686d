"""A throwaway certificate authority for local TLS services (tests and demos only).

ECDSA P-256 keys, a self-signed CA, server certificates for ``localhost``/``127.0.0.1`` and
client certificates whose common name is the client's identity (mosquitto can use it as the
username, so the same ACL works for passwords and certificates).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its unencrypted PEM private key."""

    cert: Path
    key: Path


def pem_private_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(pem_private_key(key))
    path.chmod(0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgekit test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def build_certificate(subject: x509.Name, issuer: x509.Name, public_key: Any, signer: ec.EllipticCurvePrivateKey, *,
                      ca: bool = False, server_names: tuple[str, ...] = (), client: bool = False,
                      not_before: dt.datetime | None = None, not_after: dt.datetime | None = None
                      ) -> x509.Certificate:
    """One certificate, CA or leaf (server names become SANs; ``client`` selects client auth),
    with the key identifiers strict verifiers (OpenSSL 3, Python 3.13) insist on."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=not ca, key_cert_sign=ca,
                                     crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(signer, hashes.SHA256())


class TestCA:
    """A CA kept in ``directory`` (``ca.pem``, ``ca.key``) that issues server and client pairs."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, *, name: str = "edgekit test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = build_certificate(_name(name), _name(name), self._key.public_key(), self._key, ca=True)
        self.cert_path = directory / "ca.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        _write_key(self._key, directory / "ca.key")

    def _issue(self, stem: str, cn: str, *, server: bool) -> CertPair:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build_certificate(_name(cn), self._cert.subject, key.public_key(), self._key, client=not server,
                                 server_names=("localhost", "127.0.0.1") if server else ())
        pair = CertPair(self.directory / f"{stem}.pem", self.directory / f"{stem}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, pair.key)
        return pair

    def issue_server(self, stem: str = "server") -> CertPair:
        """A server pair valid for ``localhost`` and ``127.0.0.1``."""
        return self._issue(stem, "localhost", server=True)

    def issue_client(self, common_name: str) -> CertPair:
        """A client pair whose CN is ``common_name``."""
        return self._issue(f"client-{common_name}", common_name, server=False)
