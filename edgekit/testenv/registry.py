"""A real OCI registry (Debian's ``docker-registry``, distribution 2.8) on 127.0.0.1, for tests and demos.

    reg = DockerRegistry(tmp / "reg").start()                     # plain HTTP, anonymous
    reg = DockerRegistry(tmp / "reg", users={"ci": "pw"}, tls=True).start()   # htpasswd + TLS
    reg.host          # "127.0.0.1:41234"
    reg.blob_path(digest)   # where the filesystem driver keeps a blob (to tamper with it)

Storage is a folder of its own (filesystem driver, deletes enabled); the access log goes to
``registry.log``. The htpasswd file holds bcrypt hashes, written with the ``bcrypt`` package or,
when that is not installed, Apache's ``htpasswd``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from edgekit.testenv.certs import TestCA
from edgekit.testenv.processes import ManagedProcess, ServiceError, free_port

__all__ = ["DockerRegistry", "registry_available"]

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


class DockerRegistry:
    host_ip = "127.0.0.1"

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None, tls: bool = False,
                 ca: TestCA | None = None, port: int | None = None) -> None:
        binary = _binary()
        if binary is None:
            raise ServiceError("docker-registry is not installed (Debian package 'docker-registry')")
        self._binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(self.host_ip)
        self.storage = workdir / "storage"
        self.users = dict(users or {})
        self.ca_path: Path | None = None
        self._tls_pair = None
        if tls:
            ca = ca or TestCA(workdir / "pki")
            self.ca_path = ca.cert_path
            self._tls_pair = ca.issue_server(f"registry-{self.port}")
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self._write_config()
        self._proc: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return f"{self.host_ip}:{self.port}"

    @property
    def tls(self) -> bool:
        return self._tls_pair is not None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

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

    def start(self, timeout: float = 30.0) -> DockerRegistry:
        if self.running:
            return self
        self._proc = ManagedProcess(f"docker-registry:{self.port}",
                                    [self._binary, "serve", str(self.config_path)], self.log_path)
        self._proc.start()
        try:
            self._proc.wait_ready(self._ready, timeout=timeout, interval=0.05)
        except ServiceError:
            self._proc.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def __enter__(self) -> DockerRegistry:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

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

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
