"""The controller Deployment of ``fleet-manifests/controller``, changed only where the dev cluster
differs from a real one, so that ``edgekit controller`` runs as a real pod on a real node of
``edgekit dev cluster up --real-nodes N``.

The differences, each forced by the dev cluster and nothing else:

- **The API server listens on 127.0.0.1 only, and there is no kube-proxy**, so the ``kubernetes``
  Service's ClusterIP leads nowhere and a pod on the CNI bridge cannot reach 127.0.0.1 of the
  host. The pod uses the host's network (``hostNetwork``) on a chosen real node, and
  ``KUBERNETES_SERVICE_HOST``/``PORT`` name the API server's own address; the client still takes
  the in-cluster path (service account token and cluster CA from the pod's files, no kubeconfig).
- **The dev API server runs without the ServiceAccount admission plugin**, which in a real cluster
  mounts the token. The pod mounts the same projected volume that plugin adds (a bound token of
  the pod's ServiceAccount ``edgekit-engine``, the ``kube-root-ca.crt`` ConfigMap, the namespace),
  so every request is made as that ServiceAccount and the API server enforces its RBAC and the
  admission policy, exactly as in a real cluster.
- **The test broker is plain MQTT without client certificates**: the MQTT TLS settings and their
  volumes are dropped, and the broker, registry and agent settings come from ``env``
  (``EDGEKIT_FLEET_*``, ``EDGEKIT_ROLLOUT_*``, ``EDGEKIT_REGISTRY_*``), as the docs describe.

Everything else (the ServiceAccount, securityContext, read-only root, the public key from ConfigMap
``edgekit-cosign-key``, the command) is the product manifest's. A pure function of its inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["TOKEN_DIR", "dev_controller"]

TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# What the ServiceAccount admission plugin mounts; the kubelet refreshes the token before it expires.
_TOKEN_VOLUME = {
    "name": "kube-api-access",
    "projected": {"defaultMode": 0o444, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                      "fieldPath": "metadata.namespace"}}]}},
    ]},
}
_MQTT_TLS_ENV = ("EDGEKIT_FLEET_MQTT_CA_FILE", "EDGEKIT_FLEET_MQTT_CERT_FILE", "EDGEKIT_FLEET_MQTT_KEY_FILE")
_MQTT_TLS_VOLUMES = ("mqtt-ca", "fleet-cert")


def dev_controller(deployment: Mapping[str, Any], *, image: str, api_host: str, api_port: int, node: str,
                   env: Mapping[str, str]) -> dict[str, Any]:
    """The Deployment ``deployment`` (as rendered from fleet-manifests/controller) for the dev cluster:
    ``image`` by digest, on real node ``node``, reaching the API server at ``api_host:api_port``, with
    ``env`` set over the container's own variables."""
    out: dict[str, Any] = copy.deepcopy(dict(deployment))
    pod = out["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    pod["nodeSelector"] = {"kubernetes.io/hostname": node}
    pod["automountServiceAccountToken"] = False  # mounted below, as the admission plugin would
    pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] not in _MQTT_TLS_VOLUMES] + [_TOKEN_VOLUME]
    container = next(c for c in pod["containers"] if c["name"] == "controller")
    container["image"] = image
    container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] not in _MQTT_TLS_VOLUMES]
    container["volumeMounts"].append({"name": _TOKEN_VOLUME["name"], "mountPath": TOKEN_DIR, "readOnly": True})
    wanted = {"KUBERNETES_SERVICE_HOST": api_host, "KUBERNETES_SERVICE_PORT": str(api_port), **env}
    kept = [e for e in container.get("env", []) if e["name"] not in wanted and e["name"] not in _MQTT_TLS_ENV]
    container["env"] = kept + [{"name": k, "value": v} for k, v in wanted.items()]
    return out
