"""The rehearsal area: everything for trying edgekit out without real devices or a real cluster.

Real local services (mosquitto, an OCI registry, a fault-injecting proxy), a Kubernetes control
plane with KWOK nodes built from pinned Go modules (``gobuild``, ``cluster``; ``devcluster`` keeps
one running for ``edgekit dev cluster``), the fleet simulator (``sim``, for ``edgekit sim``) and the
demo (``demo``, for ``scripts/demo``). Everything binds 127.0.0.1 on free ports.

The product never imports this package (an import-linter contract in pyproject.toml checks it);
it finds a running dev cluster by its well-known kubeconfig path (``edgekit.kube.kubeconfigs``).
"""
