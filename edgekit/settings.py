"""Central settings: typed, frozen, layered (file < ``EDGEKIT_*`` env < flags).

Each area keeps its own small settings dataclass next to its code; this module holds what is
shared (where edgekit keeps state and caches) and the loader every area uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.layered import load_layered

ENV_PREFIX = "EDGEKIT_"


def cache_dir() -> Path:
    """Where slow work (Go builds, converted models) is cached, keyed by version."""
    return Path(os.environ.get("EDGEKIT_CACHE_DIR", Path.home() / ".cache" / "edgekit"))


@dataclass(frozen=True)
class GlobalSettings:
    """Settings every command may use."""

    output: str = "table"
    config: str | None = None
    kubeconfig: str | None = None
    namespace: str = "edgekit-system"
    broker: str = "mqtt://127.0.0.1:1883"
    topic_root: str = "edgekit/v1"
    registry_insecure: bool = False


def load_global(file: str | None = None, **overrides: Any) -> GlobalSettings:
    path = file or os.environ.get("EDGEKIT_CONFIG")
    return load_layered(GlobalSettings, file=path, env_prefix=ENV_PREFIX, overrides=overrides)
