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
