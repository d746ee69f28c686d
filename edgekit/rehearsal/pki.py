"""Throwaway certificates, keys and kubeconfigs for the local control plane (tests and demos only)."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edgekit.rehearsal.certs import build_certificate, pem_private_key

__all__ = ["ClusterPKI", "write_kubeconfig"]


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class ClusterPKI:
    """Files in ``directory``: ca.crt/key, apiserver.crt/key, apiserver-kubelet-client.crt/key, sa.key/pub."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def kubelet_client_cert(self) -> Path:
        """The API server's client certificate towards kubelets (``logs``, ``exec``)."""
        return self.directory / "apiserver-kubelet-client.crt"

    @property
    def kubelet_client_key(self) -> Path:
        return self.directory / "apiserver-kubelet-client.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.ca_key, self.server_cert, self.server_key,
                                         self.kubelet_client_cert, self.kubelet_client_key,
                                         self.sa_key, self.sa_pub))

    def create(self) -> ClusterPKI:
        self.directory.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("edgekit-test-ca")
        ca = build_certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = build_certificate(_name("kube-apiserver"), ca_name, server_key.public_key(), ca_key,
                       server_names=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                                     "kubernetes.default.svc", "10.0.0.1"))
        kubelet_client_key = ec.generate_private_key(ec.SECP256R1())
        kubelet_client = build_certificate(_name("kube-apiserver-kubelet-client", "system:masters"), ca_name,
                                           kubelet_client_key.public_key(), ca_key, client=True)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        files = {
            self.kubelet_client_cert: kubelet_client.public_bytes(serialization.Encoding.PEM),
            self.kubelet_client_key: pem_private_key(kubelet_client_key),
            self.ca_cert: ca.public_bytes(serialization.Encoding.PEM),
            self.ca_key: pem_private_key(ca_key),
            self.server_cert: server.public_bytes(serialization.Encoding.PEM),
            self.server_key: pem_private_key(server_key),
            self.sa_key: pem_private_key(sa_key),
            self.sa_pub: sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo),
        }
        for path, data in files.items():
            path.write_bytes(data)
            if path.suffix == ".key":
                path.chmod(0o600)
        return self

    def client_cert(self, user: str, groups: tuple[str, ...] = (), *,
                    expired: bool = False) -> tuple[bytes, bytes]:
        """A client certificate + key (PEM) signed by the cluster CA; ``expired`` ones ended yesterday."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        window = ((now - dt.timedelta(days=2), now - dt.timedelta(days=1)) if expired
                  else (now - dt.timedelta(minutes=5), now + dt.timedelta(days=30)))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user),
                             *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups)])
        cert = build_certificate(subject, ca.subject, key.public_key(), ca_key, client=True,
                     not_before=window[0], not_after=window[1])
        return cert.public_bytes(serialization.Encoding.PEM), pem_private_key(key)


def write_kubeconfig(path: Path, server: str, ca_cert: Path, *, user: str = "admin",
                     token: str | None = None, client_cert: tuple[bytes, bytes] | None = None,
                     namespace: str | None = None) -> Path:
    """A one-context kubeconfig with either a bearer token or an embedded client certificate."""
    b64 = base64.b64encode
    creds: dict[str, str] = {}
    if token:
        creds["token"] = token
    if client_cert:
        creds["client-certificate-data"] = b64(client_cert[0]).decode()
        creds["client-key-data"] = b64(client_cert[1]).decode()
    context: dict[str, str] = {"cluster": "edgekit-dev", "user": user}
    if namespace:
        context["namespace"] = namespace
    data = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "edgekit-dev", "cluster": {
            "server": server, "certificate-authority-data": b64(ca_cert.read_bytes()).decode()}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": f"{user}@edgekit-dev", "context": context}],
        "current-context": f"{user}@edgekit-dev",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path
