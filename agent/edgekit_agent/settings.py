"""The agent's settings: one frozen dataclass, loaded as defaults < file < ``EDGEKIT_AGENT_*`` env < flags.

Every check names its field, so ``edgekit-agent check-config`` (and ``serve``) print one line and
exit 2 on a bad value. The device id defaults to the Kubernetes node name (``NODE_NAME``, set from
the downward API) and then the host name. The MQTT client fields (``mqtt_*``, ``reconnect_*``) are
``edgekit_agent.mqtt.MqttSettings``'s, shared with the fleet watcher.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import urlsplit

from edgekit_agent.agreement import BUILTIN_AGREEMENT
from edgekit_agent.errors import ConfigError
from edgekit_agent.layered import load_layered
from edgekit_agent.mqtt.settings import MQTT_PROTOCOLS, MqttSettings
from edgekit_agent.protocol.topics import DEFAULT_ROOT, check_segment

ENV_PREFIX = "EDGEKIT_AGENT_"
LOG_LEVELS = ("debug", "info", "warning", "error")
# json.loads recurses once per level; far below Python's recursion limit even on a handler thread
MAX_JSON_DEPTH = 256
_SAFE_NAME = re.compile(r"^(?!\.)[A-Za-z0-9._-]{1,253}$")  # one path component, never . or ..


@dataclass(frozen=True)
class AgentSettings(MqttSettings):
    # identity
    device: str = ""
    group: str = "default"
    app: str | None = None        # the app this agent serves (rendered from the DaemonSet); names its bench topic
    platform: str | None = None   # os/arch whose layers this device takes [this machine's]
    # model
    model_dir: str = "/model"
    model_name: str | None = None
    image: str | None = None
    public_key: str | None = None
    allow_unsigned: bool = False  # without public_key, serve unsigned models (reported as "unverified")
    execution_providers: tuple[str, ...] = ()
    registry_insecure: bool = False
    registry_ca_file: str | None = None
    intra_op_threads: int = 0
    intra_op_spinning: bool = False  # onnxruntime's pool busy-waits between runs (a core for lower latency)
    max_model_bytes: int = 4 << 30  # per file of a fetched layer whose image records no sizes
    # shadow evaluation: a candidate image run beside the served model on a sampled share of live
    # requests (shadowing.py); fetched and verified by the same rules as ``image``
    shadow_image: str | None = None
    shadow_model_dir: str = "/shadow-model"  # a relative path is under the spool path (``spool_path``)
    shadow_ratio: float = 0.1        # share of served requests offered to the shadow
    shadow_cpu_budget: float = 0.25  # share of one core the shadow may use; samples over it are skipped
    shadow_metric: str = "top1"      # top1 | cosine | MODULE:FUNCTION (as ``edgekit quantize --metric``)
    shadow_queue: int = 16           # samples waiting for the shadow; more are dropped
    # device benchmarks (benching.py): candidate images timed beside the served model, never served;
    # fetched and verified by the same rules as ``image``, one bench at a time, within these bounds
    bench_enabled: bool = True
    bench_cpu_budget: float = 0.25   # duty cycle: share of one core the bench's timed runs may use
    bench_max_candidates: int = 4
    bench_max_runs: int = 200        # timed runs per model
    bench_max_seconds: float = 120.0  # wall time of one bench, fetches included
    bench_max_model_bytes: int = 256 << 20  # per candidate model file
    # where candidates are fetched while timed (emptied before and after each bench); a relative path
    # is under the spool path: the pod's /tmp is a small emptyDir, the spool a hostPath of its own
    bench_dir: str = "bench"
    # telemetry (and the MQTT client fields of MqttSettings)
    broker_url: str | None = None
    topic_root: str = DEFAULT_ROOT
    auth_retry_limit: int = 5
    message_expiry: int = 86_400
    interval: float = 10.0
    probe_interval: float = 300.0
    error_burst_ratio: float = 0.1
    error_burst_min: int = 5
    # store-and-forward
    spool_dir: str | None = "/var/lib/edgekit-agent/spool"
    spool_max_bytes: int = 16 * 1024 * 1024
    spool_max_age: float = 7 * 86_400.0
    # a spool root shared by several agents (a hostPath per app): this agent writes only
    # <spool_dir>/<device>/<spool_instance>/ (the renderer sets the revision) and adopts the
    # other directories of its device once their agents are gone (spoollock.py)
    spool_instance: str | None = None
    spool_lock_timeout_s: float = 60.0  # wait for an agent of the same instance to let go
    drain_timeout_s: float = 20.0  # at SIGTERM: how long to keep sending the spool before leaving
    # signed chains of image-volume models, kept after their first fetch (None: <spool path>/chains,
    # inside the spool volume, so the DaemonSet needs no other writable volume)
    chain_dir: str | None = None
    # local API
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    max_request_bytes: int = 64 * 1024 * 1024
    # JSON costs ~10x more CPU per byte than binary tensors to take in (and refuse): a JSON body, or
    # the JSON header of a binary one, over this gets 413 from its declared length, unread
    max_json_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    max_connections: int = 64
    header_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    api_token_file: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not self.device:
            object.__setattr__(self, "device", os.environ.get("NODE_NAME") or socket.gethostname())
        for name in ("device", "group"):
            try:
                check_segment(name, getattr(self, name))
            except ValueError as exc:
                raise ConfigError(str(exc), field=name) from exc
        if not self.topic_root or any(c in self.topic_root for c in "+#") or self.topic_root.startswith("/"):
            raise ConfigError(f"{self.topic_root!r} is not a valid topic root", field="topic_root")
        super().__post_init__()
        _positive(self, "interval", "probe_interval", "spool_max_age", "header_timeout_s", "body_timeout_s",
                  "spool_lock_timeout_s", "drain_timeout_s")
        if self.spool_instance is not None and not _SAFE_NAME.match(self.spool_instance):
            raise ConfigError(f"{self.spool_instance!r} is not a directory name (letters, digits, . _ -)",
                              field="spool_instance")
        if self.spool_instance is not None and not _SAFE_NAME.match(self.device):
            raise ConfigError(f"{self.device!r} cannot name a spool directory (letters, digits, . _ -)",
                              field="device")
        _at_least(self, 1, "max_model_bytes", "spool_max_bytes", "auth_retry_limit", "max_request_bytes",
                  "max_json_bytes", "error_burst_min", "max_json_depth", "max_connections")
        if self.max_json_depth > MAX_JSON_DEPTH:
            raise ConfigError(f"must be <= {MAX_JSON_DEPTH}, got {self.max_json_depth}", field="max_json_depth")
        _at_least(self, 0, "intra_op_threads", "listen_port", "message_expiry")
        if self.listen_port > 65535:
            raise ConfigError(f"{self.listen_port} is not a TCP port", field="listen_port")
        if not 0 < self.error_burst_ratio <= 1:
            raise ConfigError("must be in (0, 1]", field="error_burst_ratio")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}",
                              field="log_level")
        if self.broker_url is not None:
            _check_broker_url(self.broker_url)
        if self.tls_files and self.broker_url and not self.broker_url.startswith("mqtts://"):
            raise ConfigError("TLS files are set but the URL is not mqtts://", field="broker_url")
        self.check_plaintext_password([self.broker_url] if self.broker_url else [], "broker_url")
        if self.image is not None and "@sha256:" not in self.image:
            raise ConfigError(f"{self.image!r} must be pinned by digest (…@sha256:…)", field="image")
        if self.shadow_image is not None and "@sha256:" not in self.shadow_image:
            raise ConfigError(f"{self.shadow_image!r} must be pinned by digest (…@sha256:…)", field="shadow_image")
        if not 0 <= self.shadow_ratio <= 1:
            raise ConfigError(f"must be in [0, 1], got {self.shadow_ratio!r}", field="shadow_ratio")
        if not (math.isfinite(self.shadow_cpu_budget) and 0 < self.shadow_cpu_budget <= 1):
            raise ConfigError(f"must be a share of one core in (0, 1], got {self.shadow_cpu_budget!r}",
                              field="shadow_cpu_budget")
        _at_least(self, 1, "shadow_queue", "bench_max_candidates", "bench_max_runs", "bench_max_model_bytes")
        if not (math.isfinite(self.bench_cpu_budget) and 0 < self.bench_cpu_budget <= 1):
            raise ConfigError(f"must be a share of one core in (0, 1], got {self.bench_cpu_budget!r}",
                              field="bench_cpu_budget")
        _positive(self, "bench_max_seconds")
        if self.app is not None:
            try:
                check_segment("app", self.app)
            except ValueError as exc:
                raise ConfigError(str(exc), field="app") from exc
        if self.platform is not None and (self.platform.count("/") != 1 or not all(self.platform.split("/"))):
            raise ConfigError(f"expected OS/ARCH such as linux/arm64, got {self.platform!r}", field="platform")
        if self.shadow_metric not in BUILTIN_AGREEMENT and ":" not in self.shadow_metric:
            raise ConfigError(f"unknown metric {self.shadow_metric!r}; use top1, cosine or MODULE:FUNCTION",
                              field="shadow_metric")

    # -- derived values ------------------------------------------------------------------------
    @property
    def broker_host(self) -> str:
        return urlsplit(self.broker_url or "").hostname or "127.0.0.1"

    @property
    def broker_port(self) -> int:
        parts = urlsplit(self.broker_url or "")
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def broker_tls(self) -> bool:
        return bool(self.broker_url and self.broker_url.startswith("mqtts://"))

    @property
    def signature(self) -> Literal["verified", "unverified"]:
        """What the agent's birth status says of signatures: ``unverified`` when it runs unsigned
        models (no key, ``allow_unsigned``), else ``verified`` (only what the key verifies loads)."""
        return "unverified" if self.public_key is None and self.allow_unsigned else "verified"

    @property
    def image_digest(self) -> str | None:
        return self.image.rsplit("@", 1)[1] if self.image else None

    @property
    def spool_path(self) -> str | None:
        """The directory this agent writes: ``<spool_dir>/<device>/<spool_instance>``, or
        ``spool_dir`` without an instance; None for a memory spool."""
        if self.spool_dir is None or self.spool_instance is None:
            return self.spool_dir
        return os.path.join(self.spool_dir, self.device, self.spool_instance)

    @property
    def kept_chains(self) -> str | None:
        """Where chains of image-volume models are kept: ``chain_dir``, else ``<spool path>/chains``;
        None (neither set): kept nowhere, the registry is asked at every load."""
        if self.chain_dir:
            return self.chain_dir
        spool = self.spool_path
        return os.path.join(spool, "chains") if spool else None

    @property
    def shadow_model_path(self) -> str:
        """``shadow_model_dir``, a relative one under the spool path (a revision's own directory)."""
        if os.path.isabs(self.shadow_model_dir) or self.spool_path is None:
            return self.shadow_model_dir
        return os.path.join(self.spool_path, self.shadow_model_dir)

    @property
    def bench_path(self) -> str:
        """``bench_dir``; a relative one under the spool path, or the system's temporary directory
        when the agent has no spool directory (a memory spool: the simulator)."""
        if os.path.isabs(self.bench_dir):
            return self.bench_dir
        if self.spool_path is None:
            return os.path.join(tempfile.gettempdir(), f"edgekit-bench-{self.device}", self.bench_dir)
        return os.path.join(self.spool_path, self.bench_dir)

    def registry_options(self) -> Any:
        """``RegistryOptions`` for fetching ``image`` (and verifying its signature)."""
        from edgekit_agent.oci import RegistryOptions

        return RegistryOptions(insecure=self.registry_insecure, ca_file=self.registry_ca_file)

    def read_api_token(self) -> str | None:
        """The bearer token the inference API requires, read from ``api_token_file`` (None: no token)."""
        if self.api_token_file is None:
            return None
        try:
            with open(self.api_token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read {self.api_token_file}: {reason}", field="api_token_file") from exc
        if not token:
            raise ConfigError(f"{self.api_token_file} is empty", field="api_token_file")
        return token

    def check_files(self, *more: str) -> None:
        """Check that every file setting names a readable file (``check-config`` and ``serve``)."""
        super().check_files("public_key", "registry_ca_file", "api_token_file", *more)
        self.read_api_token()  # an empty token file would lock every client out

    def redacted(self) -> dict[str, Any]:
        # check-config lists the settings in their documented order: the shared MQTT fields
        # (which dataclass inheritance puts first) after topic_root, where they always stood.
        names = [f.name for f in fields(self)]
        shared = len(fields(MqttSettings))
        own = names[shared:]
        at = own.index("topic_root") + 1
        out = {name: getattr(self, name) for name in [*own[:at], *names[:shared], *own[at:]]}
        if out["mqtt_password"] is not None:
            out["mqtt_password"] = "***"
        out["execution_providers"] = list(self.execution_providers)
        return out


def _positive(s: AgentSettings, *names: str) -> None:
    for name in names:
        value = getattr(s, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"must be a positive number of seconds, got {value!r}", field=name)


def _at_least(s: AgentSettings, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(s, name) < minimum:
            raise ConfigError(f"must be >= {minimum}, got {getattr(s, name)!r}", field=name)


def _check_broker_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{url!r} is not a valid URL: {exc}", field="broker_url") from exc
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}", field="broker_url")
    if port == 0 or parts.path not in ("", "/") or parts.username or parts.password:
        raise ConfigError(f"{url!r}: only scheme, host and port are allowed (credentials go in "
                          "mqtt_username / mqtt_password_file)", field="broker_url")


def load_settings(file: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> AgentSettings:
    """Load settings from ``file`` < ``EDGEKIT_AGENT_*`` environment < ``overrides``."""
    return load_layered(AgentSettings, file=file, env_prefix=ENV_PREFIX, env=env, overrides=overrides)


__all__ = ["ENV_PREFIX", "MQTT_PROTOCOLS", "AgentSettings", "load_settings"]
