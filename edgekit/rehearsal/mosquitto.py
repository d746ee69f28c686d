"""A real mosquitto broker on 127.0.0.1, configured per instance, for tests and demos.

    broker = start_mosquitto(tmp / "mqtt", users={"dev-1": "pw"}, acl=device_acl())
    broker.url            # "mqtt://127.0.0.1:41234"
    broker.stop(); broker.start()   # same port, same persistence dir (outage tests)

Flavours are combinations of options: plain; TLS with a throwaway CA (server certificate plus
client certificates on request, optionally required and used as the username); a password file
(written with ``mosquitto_passwd -b``); an ACL file. ``device_acl()`` gives the recommended ACL of
contract 3.2: a device may write only under its own ``{root}/{group}/{device}/...`` topics
(mosquitto substitutes the username for ``%u`` in ``pattern`` lines), readers only read.

Runs as root too: mosquitto drops privileges to the ``mosquitto`` user when started as root, which
could then not read the 0600 files written here, so the config names the current user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.rehearsal.certs import CertPair, TestCA
from edgekit.rehearsal.processes import LocalService, ServiceError, free_port, port_open

__all__ = ["MosquittoBroker", "device_acl", "mosquitto_available", "start_mosquitto"]

MOSQUITTO_BINARIES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def _binary(name: str, fallbacks: Sequence[str] = ()) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((p for p in fallbacks if os.access(p, os.X_OK)), None)


def mosquitto_available() -> bool:
    return _binary("mosquitto", MOSQUITTO_BINARIES) is not None and _binary("mosquitto_passwd") is not None


def device_acl(root: str = "edgekit/v1", *, readers: Sequence[str] = ("fleet",),
               admins: Sequence[str] = ("admin",), benchers: Sequence[str] = ("bench",)) -> str:
    """The recommended ACL: devices write only their own topics; ``readers`` read all of ``root``;
    ``benchers`` (``edgekit bench --group``, ``quantize --timing-group``) read it too and may write
    bench requests, nothing else."""
    root = root.rstrip("/")
    lines = ["# edgekit: a device may write only under its own topics; subscribers are read-only;",
             "# bench users may also write device bench requests."]
    for admin in admins:
        lines += [f"user {admin}", "topic readwrite #", ""]
    for reader in readers:
        lines += [f"user {reader}", f"topic read {root}/#", ""]
    for bencher in benchers:
        lines += [f"user {bencher}", f"topic read {root}/#", f"topic write {root}/+/+/bench/+/request", ""]
    lines += [f"pattern write {root}/+/%u/#", f"pattern read {root}/+/%u/#", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Options:
    tls: bool
    require_certificate: bool
    use_identity_as_username: bool
    allow_anonymous: bool
    persistence: bool
    max_queued_messages: int
    extra_config: str


class MosquittoBroker(LocalService):
    """One mosquitto process with its own directory, port, config and (optionally) certificates."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *, tls: bool = False, users: Mapping[str, str] | None = None,
                 acl: str | None = None, client_certs: Sequence[str] = (),
                 require_certificate: bool = False, use_identity_as_username: bool = False,
                 allow_anonymous: bool | None = None, persistence: bool = True,
                 max_queued_messages: int = 100_000, extra_config: str = "",
                 ca: TestCA | None = None, port: int | None = None) -> None:
        super().__init__()
        binary = _binary("mosquitto", MOSQUITTO_BINARIES)
        if binary is None:
            raise ServiceError("mosquitto is not installed (Debian package 'mosquitto')")
        self._binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(self.host)
        self.users: dict[str, str] = dict(users or {})
        self.acl = acl
        if (require_certificate or client_certs or use_identity_as_username) and not tls:
            raise ValueError("client certificates need tls=True")
        if allow_anonymous is None:
            allow_anonymous = not self.users and not use_identity_as_username
        self._opts = _Options(tls, require_certificate, use_identity_as_username, allow_anonymous,
                              persistence, max_queued_messages, extra_config)
        self.ca_path: Path | None = None
        self.server_cert: CertPair | None = None
        self.client_certs: dict[str, CertPair] = {}
        if tls:
            ca = ca or TestCA(workdir / "pki")
            self.ca_path = ca.cert_path
            self.server_cert = ca.issue_server(f"server-{self.port}")
            self.client_certs = {name: ca.issue_client(name) for name in client_certs}
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._write_files()

    # -- public API --------------------------------------------------------------------------
    @property
    def tls(self) -> bool:
        return self._opts.tls

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    start_timeout = 20.0

    def _argv(self) -> list[str]:
        return [self._binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        return port_open(self.port, self.host)

    def add_user(self, username: str, password: str) -> None:
        """Add or change a password (takes effect at the next start, or now via SIGHUP)."""
        self.users[username] = password
        self._write_passwords()
        if self._proc is not None and self._proc.alive():
            import signal
            os.kill(self._proc.pid, signal.SIGHUP)

    def __repr__(self) -> str:
        return f"MosquittoBroker({self.url}, running={self.running})"

    # -- files -------------------------------------------------------------------------------
    def _write_passwords(self) -> Path:
        path = self.workdir / "passwd"
        path.write_text("")
        path.chmod(0o600)
        passwd = _binary("mosquitto_passwd")
        if passwd is None:
            raise ServiceError("mosquitto_passwd is not installed (Debian package 'mosquitto')")
        for user, password in self.users.items():
            result = subprocess.run([passwd, "-b", str(path), user, password], capture_output=True,
                                    text=True, check=False)
            if result.returncode != 0:
                raise ServiceError(f"mosquitto_passwd failed for {user!r}: {result.stderr.strip()}")
        return path

    def _write_files(self) -> None:
        o = self._opts
        persist = self.workdir / "data"
        persist.mkdir(exist_ok=True)
        lines = [
            "# written by edgekit.rehearsal.mosquitto",
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"pid_file {self.workdir / 'mosquitto.pid'}",
            "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            f"persistence {'true' if o.persistence else 'false'}",
            f"persistence_location {persist}/",
            "autosave_interval 30",
            f"max_queued_messages {o.max_queued_messages}",
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            f"allow_anonymous {'true' if o.allow_anonymous else 'false'}",
        ]
        if self.users:
            lines.append(f"password_file {self._write_passwords()}")
        if self.acl is not None:
            acl_path = self.workdir / "acl"
            acl_path.write_text(self.acl)
            lines.append(f"acl_file {acl_path}")
        lines.append(f"listener {self.port} {self.host}")
        if o.tls:
            assert self.ca_path is not None and self.server_cert is not None
            lines += [f"cafile {self.ca_path}", f"certfile {self.server_cert.cert}",
                      f"keyfile {self.server_cert.key}",
                      f"require_certificate {'true' if o.require_certificate else 'false'}"]
            if o.use_identity_as_username:
                lines.append("use_identity_as_username true")
        if o.extra_config:
            lines.append(o.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")


def start_mosquitto(workdir: Path, **options: object) -> MosquittoBroker:
    """Create a broker in ``workdir`` with ``options`` (see ``MosquittoBroker``) and start it."""
    return MosquittoBroker(workdir, **options).start()  # type: ignore[arg-type]
