"""Settings of rollouts: typed, frozen, layered (file < ``EDGEKIT_ROLLOUT_*`` environment < flags).

The strategy of one rollout (waves, bake, gates) comes from flags (``strategy.build_strategy``);
these are what stays the same from push to push: where rollouts live, which key images must be
signed with, how the DaemonSets reach the broker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from edgekit_agent.layered import load_layered

from edgekit.errors import ConfigError
from edgekit.kube import names
from edgekit.kube.platforms import DEFAULT_AGENT_PLATFORMS, parse_platforms
from edgekit.kube.rendering import KEY_CONFIGMAP
from edgekit.kube.targets import DEFAULT_TARGET, check_target
from edgekit.settings import require_public_key

ENV_PREFIX = "EDGEKIT_ROLLOUT_"


@dataclass(frozen=True)
class RolloutSettings:
    namespace: str = names.DEFAULT_NAMESPACE
    target: str = DEFAULT_TARGET          # a name in edgekit.kube.targets.TARGETS
    public_key: str | None = None         # images must carry a valid signature by it (or allow_unsigned)
    allow_unsigned: bool = False          # without a key: roll out unsigned images, agents run them
    require_digest: bool = False          # refuse tags instead of resolving them once
    registry_insecure: bool = False
    # what the rendered DaemonSets tell the agents
    agent_image: str | None = None
    agent_broker: str | None = None       # broker URL the agents publish to
    mqtt_auth: str = "node-cert"          # node-cert | none
    model_source: str = "auto"            # auto (from the nodes' runtimes) | image-volume | init-container
    telemetry_interval: float = 10.0
    public_key_configmap: str | None = None  # the devices' key (default: edgekit-cosign-key with a key)
    api_from_namespaces: tuple[str, ...] = ()  # pods of these namespaces may reach the agents' API
    mqtt_allow_plaintext_password: bool = False  # agents may send an MQTT password over plain mqtt://
    # os/arch the agent image provides; the pods run only on architectures both images provide
    agent_platforms: tuple[str, ...] = DEFAULT_AGENT_PLATFORMS
    # the engine
    lease_seconds: float = 15.0
    tick_seconds: float = 0.5

    def __post_init__(self) -> None:
        check_target(self.target)
        if self.mqtt_auth not in ("node-cert", "none"):
            raise ConfigError(f"expected node-cert or none, got {self.mqtt_auth!r}", field="mqtt_auth")
        if self.model_source not in ("auto", "image-volume", "init-container"):
            raise ConfigError(f"expected auto, image-volume or init-container, got {self.model_source!r}",
                              field="model_source")
        if self.public_key is not None and not os.path.isfile(self.public_key):
            raise ConfigError(f"{self.public_key} does not exist", field="public_key")
        if not self.lease_seconds >= 3:
            raise ConfigError("must be at least 3 seconds", field="lease_seconds")
        if not self.telemetry_interval > 0:
            raise ConfigError("must be above 0", field="telemetry_interval")
        parse_platforms(self.agent_platforms, "agent_platforms")

    def render_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mqtt_auth": self.mqtt_auth, "telemetry_interval": self.telemetry_interval}
        if self.model_source != "auto":
            out["model_source"] = self.model_source
        if self.agent_image:
            out["agent_image"] = self.agent_image
        if self.agent_broker:
            out["broker_url"] = self.agent_broker
        # The engine only names the key's ConfigMap: the key is written by `edgekit render
        # --public-key` / `edgekit push --public-key` (an operator), never by the engine itself.
        if self.public_key is not None or self.public_key_configmap:
            out["public_key_configmap"] = self.public_key_configmap or KEY_CONFIGMAP
        elif self.allow_unsigned:
            out["allow_unsigned"] = True
        if self.registry_insecure:  # the agents fetch and verify from the same plain-HTTP registry
            out["registry_insecure"] = True
        if self.api_from_namespaces:
            out["api_from_namespaces"] = tuple(self.api_from_namespaces)
        if self.mqtt_allow_plaintext_password:
            out["mqtt_allow_plaintext_password"] = True
        if tuple(self.agent_platforms) != DEFAULT_AGENT_PLATFORMS:
            out["agent_platforms"] = tuple(self.agent_platforms)
        return out

    def require_trust(self, what: str) -> None:
        """``PublicKeyRequiredError`` unless a public key or ``allow_unsigned`` is set."""
        require_public_key(self.public_key, self.allow_unsigned, what=what,
                           key_from="pass --public-key FILE or set EDGEKIT_ROLLOUT_PUBLIC_KEY (or public_key "
                                    "in the --config file)")


def load_rollout_settings(file: str | None = None, **overrides: Any) -> RolloutSettings:
    return load_layered(RolloutSettings, file=file, env_prefix=ENV_PREFIX, overrides=overrides)
