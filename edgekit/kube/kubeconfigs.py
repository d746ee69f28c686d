"""Which kubeconfig a command uses when none is given.

Lookup order (docs/kubernetes.md, "Which cluster"):

1. ``--kubeconfig`` (a file that must exist);
2. ``$KUBECONFIG`` (the kubernetes client's own rules, contexts merged);
3. ``~/.kube/config``;
4. the dev cluster's well-known kubeconfig, :func:`dev_cluster_kubeconfig`.

(``edgekit controller`` and the rollout commands also use a pod's service account between 2 and 3.)

The dev cluster (``edgekit dev cluster up``, in the rehearsal area) writes its admin kubeconfig to
the well-known path and ``edgekit dev cluster down`` removes it, so the product finds a running dev
cluster through a plain file and never imports the rehearsal area.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import ConfigError
from edgekit.settings import cache_dir

__all__ = ["DEFAULT_KUBECONFIG", "dev_cluster_dir", "dev_cluster_kubeconfig", "find_kubeconfig"]

DEFAULT_KUBECONFIG = Path("~/.kube/config")


def dev_cluster_dir() -> Path:
    """Where the dev cluster keeps its state: ``$EDGEKIT_DEV_DIR``, else ``<cache dir>/dev``
    (cache dir: ``$EDGEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgekit``, else ``~/.cache/edgekit``)."""
    return Path(os.environ.get("EDGEKIT_DEV_DIR") or cache_dir() / "dev")


def dev_cluster_kubeconfig() -> Path:
    """The well-known kubeconfig of the dev cluster; it exists while one is up."""
    return dev_cluster_dir() / "kubeconfig"


def find_kubeconfig(explicit: Path | None) -> Path | None:
    """The kubeconfig to load: ``explicit``; ``None`` when ``$KUBECONFIG`` or ``~/.kube/config``
    is there (the kubernetes client reads those itself); else the dev cluster's.

    Raises ConfigError when there is none at all.
    """
    if explicit is not None:
        return explicit
    if os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG.expanduser().exists():
        return None
    dev = dev_cluster_kubeconfig()
    if dev.is_file():
        return dev
    raise ConfigError("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or start `edgekit dev cluster up`",
                      field="kubeconfig")
