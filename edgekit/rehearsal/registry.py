"""A real OCI registry (Debian's ``docker-registry``, distribution 2.8) on 127.0.0.1, for tests and demos.

    reg = DockerRegistry(tmp / "reg").start()                     # plain HTTP, anonymous
    reg = DockerRegistry(tmp / "reg", users={"ci": "pw"}, tls=True).start()   # htpasswd + TLS
    tokens = TokenServer(tmp / "tok", users={"ci": "pw"}).start()
    reg = DockerRegistry(tmp / "reg", token_server=tokens).start()            # bearer tokens
    reg.host          # "127.0.0.1:41234"
    reg.blob_path(digest)   # where the filesystem driver keeps a blob (to tamper with it)

Storage is a folder of its own (filesystem driver, deletes enabled); the access log goes to
``registry.log``. The htpasswd file holds bcrypt hashes, written with the ``bcrypt`` package or,
when that is not installed, Apache's ``htpasswd``.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from edgekit.rehearsal.certs import TestCA
from edgekit.rehearsal.processes import LocalService, ServiceError, free_port

__all__ = ["DockerRegistry", "TokenServer", "registry_available"]

REGISTRY_BINARIES = ("docker-registry", "registry")


def _binary() -> str | None:
    return next((found for name in REGISTRY_BINARIES if (found := shutil.which(name))), None)


def registry_available() -> bool:
    return _binary() is not None


def _bcrypt_hash(password: str) -> str:
    try:
        import bcrypt
    except ImportError:
        tool = shutil.which("htpasswd")
        if tool is None:
            raise ServiceError("writing an htpasswd file needs the bcrypt package or htpasswd "
                               "(apache2-utils)") from None
        out = subprocess.run([tool, "-nbB", "u", password], capture_output=True, text=True, check=True)
        return out.stdout.strip().split(":", 1)[1]
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6)).decode()


class DockerRegistry(LocalService):
    host_ip = "127.0.0.1"

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None, tls: bool = False,
                 ca: TestCA | None = None, port: int | None = None,
                 token_server: TokenServer | None = None) -> None:
        super().__init__()
        binary = _binary()
        if binary is None:
            raise ServiceError("docker-registry is not installed (Debian package 'docker-registry')")
        self._binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(self.host_ip)
        self.storage = workdir / "storage"
        self.users = dict(users or {})
        self.token_server = token_server
        self.ca_path: Path | None = None
        self._tls_pair = None
        if tls:
            ca = ca or TestCA(workdir / "pki")
            self.ca_path = ca.cert_path
            self._tls_pair = ca.issue_server(f"registry-{self.port}")
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self._write_config()

    @property
    def host(self) -> str:
        return f"{self.host_ip}:{self.port}"

    @property
    def tls(self) -> bool:
        return self._tls_pair is not None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _write_config(self) -> None:
        # JSON is YAML: no YAML writer needed.
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": f"{self.host_ip}:{self.port}", "secret": "edgekit-test-secret",
                     "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        if self._tls_pair is not None:
            config["http"]["tls"] = {"certificate": str(self._tls_pair.cert),  # type: ignore[index]
                                     "key": str(self._tls_pair.key)}
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{_bcrypt_hash(p)}\n" for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "edgekit-test", "path": str(htpasswd)}}
        if self.token_server is not None:
            config["auth"] = {"token": {"realm": self.token_server.realm, "service": self.token_server.service,
                                        "issuer": self.token_server.issuer,
                                        "rootcertbundle": str(self.token_server.cert_path)}}
        self.config_path.write_text(json.dumps(config, indent=2))

    def _ready(self) -> bool:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.ca_path))
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=ctx) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False

    def _argv(self) -> list[str]:
        return [self._binary, "serve", str(self.config_path)]

    def __repr__(self) -> str:
        return f"DockerRegistry({self.url}, running={self.running})"

    @property
    def cert_dir(self) -> Path | None:
        """A folder with only ``ca.crt``, the layout skopeo's ``--cert-dir`` wants."""
        if self.ca_path is None:
            return None
        folder = self.workdir / "certs.d"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(self.ca_path, folder / "ca.crt")
        return folder

    def blob_path(self, digest: str) -> Path:
        """The file holding a blob in the filesystem storage driver."""
        algo, _, hexpart = digest.partition(":")
        return self.storage / "docker" / "registry" / "v2" / "blobs" / algo / hexpart[:2] / hexpart / "data"


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A bearer-token service as registries use (Docker Hub, GHCR, Harbor): basic credentials in,
    a short-lived ES256 JWT granting the requested repository actions out.

    distribution checks the token's ``x5c`` certificate against ``rootcertbundle`` (our
    self-signed signing certificate), its issuer, audience (the service) and lifetime. Every
    token request is recorded in ``requests`` as (user or None, scopes).
    """

    service = "edgekit-test-registry"
    issuer = "edgekit-test-token-issuer"

    def __init__(self, workdir: Path, *, users: Mapping[str, str], port: int | None = None) -> None:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users)
        self.port = port or free_port(DockerRegistry.host_ip)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgekit test token signer")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=7))
                .sign(self._key, hashes.SHA256()))
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[tuple[str | None, list[str]]] = []
        self._server: object | None = None

    @property
    def realm(self) -> str:
        return f"http://{DockerRegistry.host_ip}:{self.port}/token"

    def issue(self, user: str, scopes: list[str]) -> str:
        import base64
        import secrets
        import time

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            if kind == "repository" and repo:
                access.append({"type": kind, "name": repo, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def start(self) -> TokenServer:
        import base64
        import threading
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                scopes = query.get("scope", [])
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(name) != password:
                        server.requests.append((name, scopes))
                        self._answer(401, {"details": "incorrect username or password"})
                        return
                    user = name
                server.requests.append((user, scopes))
                token = server.issue(user, scopes) if user else server.issue("", [])
                self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        httpd = ThreadingHTTPServer((DockerRegistry.host_ip, self.port), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, name=f"token:{self.port}", daemon=True).start()
        self._server = httpd
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server.server_close()  # type: ignore[attr-defined]
            self._server = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
