"""Manifests for one revision of an app on one device group: pure functions from settings to objects.

For app ``A`` at revision ``R`` on group ``G``:

- DaemonSet ``A-R``: pods only on nodes labelled ``rollout.edgekit.io/A=R`` *and* in ``G``; the
  rollout engine moves nodes between revisions by relabelling them. The pod runs
  ``edgekit-agent serve`` with probes on the agent's OIP endpoints (``/v2/health/live``;
  ``/v2/health/ready``, which answers 200 only once the model is verified and its golden probe
  passed; port ``http`` 8080). Every container meets Pod Security ``restricted`` (uid/gid 10001,
  read-only root filesystem, no privilege escalation, seccomp RuntimeDefault, capabilities
  dropped). The agent writes to an emptyDir ``tmp`` and to ``spool``, a hostPath per app
  (``/var/lib/edgekit/<app>/spool``, DirectoryOrCreate) so that reports outlive the pods a wave or a
  rollback replaces; each revision writes its own subdirectory under its own lock and adopts what
  gone revisions left (``edgekit_agent.spoollock``). The node must give that directory to uid 10001
  (docs/kubernetes.md, node preparation): the kubelet creates a missing hostPath as root, fsGroup
  does not apply to hostPaths and ``restricted`` allows no root init container to chown it. The
  other hostPath is ``device`` (the node's MQTT client certificate, read-only, under
  ``/etc/edgekit/``); edgekit's admission policy (``edgekit.kube.admission``) holds the engine to
  this shape.
- The model: a Kubernetes image volume (the model image itself, mounted at ``/model``), or an init
  container ``edgekit-agent fetch <ref@digest> --to /model`` for clusters without image volumes
  (KubeEdge's edgecore, Kubernetes < 1.35, containerd < 2.1). ``model_source: auto`` takes the
  target's default; the engine and ``edgekit render --apply`` first decide it from the group's nodes
  (``edgekit.kube.modelsources``).
- Architectures: ``kubernetes.io/arch`` is limited to those both the agent image and the model image
  provide (``agent_platforms``, ``model_platforms``; ``edgekit.kube.platforms``).
- The termination grace period is the agent's drain time (``drain_seconds``) plus 10 s to stop; what
  it cannot send in that time stays in the hostPath spool for the next pod.
- Images are signed by default: with the cosign public key (``public_key_pem``, from
  ``edgekit render --public-key FILE``) ConfigMap ``edgekit-cosign-key`` carries it to the devices and
  the agent config points at it; the rollout engine only names that ConfigMap
  (``public_key_configmap``). With ``allow_unsigned`` the agents run unsigned images.
- ConfigMap ``A-R`` (the agent's ``config.json``), ServiceAccount ``A`` (no API token), Service
  ``A`` with ``internalTrafficPolicy: Local`` so device applications reach the agent on their own
  node only, and NetworkPolicy ``A``: no pod reaches the agent's port except from the namespaces
  named in ``api_from_namespaces`` (the node itself always can: NetworkPolicy never blocks a pod's
  own node, which is where kubelet probes and host processes come from).
- Accelerators (``nvidia.com/gpu`` ...): request the device-plugin resource, schedule only on nodes
  that have it, and run the matching onnxruntime execution provider with CPU as fallback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgekit.errors import ConfigError, DigestRequiredError, ImageReferenceError
from edgekit.kube import names
from edgekit.kube.groups import DeviceGroup
from edgekit.kube.platforms import DEFAULT_AGENT_PLATFORMS, common_arches
from edgekit.kube.selectors import to_match_expressions
from edgekit.kube.targets import DEFAULT_TARGET, TARGETS, Target, check_target

__all__ = [
    "ACCELERATORS",
    "KEY_CONFIGMAP",
    "MQTT_CA_CONFIGMAP",
    "TARGETS",
    "Accelerator",
    "ImageRef",
    "RenderSettings",
    "Target",
    "key_configmap",
    "mqtt_ca_configmap",
    "parse_image",
    "render",
    "revision_for",
]

AGENT_PORT = 8080
AGENT_CONFIG_DIR = "/etc/edgekit-agent"
MODEL_DIR = "/model"
DEFAULT_AGENT_IMAGE = "edgekit/edgekit-agent:0.1.0"
KEY_CONFIGMAP = "edgekit-cosign-key"  # the devices' trust: cosign public key under ``cosign.pub``
KEY_FILE = "cosign.pub"
MQTT_CA_CONFIGMAP = "edgekit-mqtt-ca"  # the devices' trust: the broker's CA certificate under ``ca.crt``
MQTT_CA_FILE = "ca.crt"
AGENT_UID = 10001  # the agent image's user (Dockerfile): fixed, non-root
SPOOL_DIR = "/var/lib/edgekit-agent/spool"
# The pod's volumes, by name: the admission policy allows these and no others.
AGENT_VOLUMES = ("model", "config", "tmp", "spool", "mqtt-ca", "device", "keys")
DEVICE_HOST_PREFIX = "/etc/edgekit/"  # hostPath of the read-only ``device`` volume lives under it
SPOOL_HOST_PREFIX = "/var/lib/edgekit/"  # a hostPath ``spool`` may live only in <prefix><app>/
STOP_SECONDS = 10  # beyond the drain: final report, offline status, DISCONNECT, process exit
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_REPO = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ImageRef:
    repository: str  # registry/host[:port]/path
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        return self.repository + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def pinned(self) -> str:
        """``repository@digest`` (what nodes pull), or the reference as given when it has no digest."""
        return f"{self.repository}@{self.digest}" if self.digest else str(self)


def parse_image(ref: str) -> ImageRef:
    """``host[:port]/path[:tag][@sha256:<64 hex>]`` -> ImageRef (ImageReferenceError if malformed)."""
    text = ref.strip()
    name, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ImageReferenceError(f"image reference {ref!r} has a malformed digest (want sha256:<64 hex>)")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ImageReferenceError(f"image reference {ref!r} has an invalid tag {tag!r}")
    if not name or not _REPO.match(name):
        raise ImageReferenceError(f"{ref!r} is not an image reference (host/path[:tag][@sha256:...])")
    return ImageRef(name, tag, digest or None)


def revision_for(image: ImageRef) -> str:
    """Revision name: the first 12 hex digits of the digest, else the tag made label-safe."""
    if image.digest:
        return image.digest.split(":", 1)[1][:12]
    slug = re.sub(r"[^a-z0-9-]+", "-", (image.tag or "latest").lower()).strip("-")[:22].strip("-")
    return slug or "latest"


@dataclass(frozen=True)
class Accelerator:
    resource: str  # device-plugin resource name
    node_label: tuple[str, str]  # label that nodes with the device carry
    providers: tuple[str, ...]  # onnxruntime execution providers, CPU appended as fallback


ACCELERATORS: dict[str, Accelerator] = {
    "nvidia.com/gpu": Accelerator("nvidia.com/gpu", ("nvidia.com/gpu.present", "true"),
                                  ("CUDAExecutionProvider",)),
    "gpu.intel.com/i915": Accelerator("gpu.intel.com/i915", ("intel.feature.node.kubernetes.io/gpu", "true"),
                                      ("OpenVINOExecutionProvider",)),
    "amd.com/gpu": Accelerator("amd.com/gpu", ("edgekit.io/accelerator", "amd.com_gpu"),
                               ("MIGraphXExecutionProvider",)),
}


def accelerator_for(resource: str, provider: str | None = None) -> Accelerator:
    if resource in ACCELERATORS and not provider:
        return ACCELERATORS[resource]
    known = ACCELERATORS.get(resource)
    if not known and not provider:
        raise ConfigError(f"unknown accelerator {resource!r}: name its execution provider too "
                          f"(known: {', '.join(ACCELERATORS)})", field="accelerator")
    label = known.node_label if known else ("edgekit.io/accelerator", resource.replace("/", "_"))
    return Accelerator(resource, label, (provider,) if provider else known.providers)  # type: ignore[union-attr]


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides the manifests of one revision (defaults fit a small ARM device)."""

    app: str
    image: str
    group: DeviceGroup
    target: str = DEFAULT_TARGET
    namespace: str = names.DEFAULT_NAMESPACE
    revision: str | None = None
    agent_image: str = DEFAULT_AGENT_IMAGE
    model_source: Literal["auto", "image-volume", "init-container"] = "auto"
    require_digest: bool = False
    accelerator: str | None = None
    accelerator_provider: str | None = None
    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    cpu_limit: str | None = "1"
    memory_limit: str = "512Mi"
    broker_url: str | None = None  # default: the fleet-manifests broker in ``namespace``
    mqtt_auth: Literal["node-cert", "none"] = "node-cert"
    device_credentials_dir: str = "/etc/edgekit/device"  # on the node: tls.crt/tls.key with CN=<node>
    public_key_configmap: str | None = None  # cosign public key (key ``cosign.pub``) to verify images
    public_key_pem: str | None = None  # the key itself: rendered as that ConfigMap (default KEY_CONFIGMAP)
    allow_unsigned: bool = False  # agents without a key run unsigned images (refused otherwise)
    registry_insecure: bool = False  # plain-HTTP registry (local demos): fetch and agent skip TLS
    telemetry_interval: float = 10.0
    api_from_namespaces: tuple[str, ...] = ()  # namespaces whose pods may reach the agent's API
    # the agent refuses a password over plain mqtt:// to a broker off its host unless told the
    # network is trusted: an explicit opt-in, rendered only when set
    mqtt_allow_plaintext_password: bool = False
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    # architectures: the rule allows those in both lists (model None: not known, the agent's alone)
    agent_platforms: tuple[str, ...] = DEFAULT_AGENT_PLATFORMS
    model_platforms: tuple[str, ...] | None = None
    # SIGTERM to exit: the agent sends its spool for this long, then leaves the rest in the hostPath
    # spool for the next pod; the pod's grace period is this plus STOP_SECONDS
    drain_seconds: int = 20
    # a shadow revision (push --shadow-first): the agents also run this candidate on a sampled
    # share of live requests; it is fetched into the spool volume, so the pod needs no new volume
    shadow_image: str | None = None
    shadow_ratio: float = 0.1
    shadow_metric: str = "top1"

    def __post_init__(self) -> None:
        names.check_app_name(self.app)
        check_target(self.target)
        if self.revision is not None:
            names.check_revision(self.revision)
        if self.model_source not in ("auto", "image-volume", "init-container"):
            raise ConfigError(f"unknown model source {self.model_source!r}", field="model_source")
        if self.public_key_pem is not None and not self.public_key_configmap:
            object.__setattr__(self, "public_key_configmap", KEY_CONFIGMAP)
        if not _under(self.device_credentials_dir, DEVICE_HOST_PREFIX):
            raise ConfigError(f"{self.device_credentials_dir!r} must be a directory under {DEVICE_HOST_PREFIX}",
                              field="device_credentials_dir")
        if not 1 <= self.drain_seconds <= 3600:
            raise ConfigError(f"must be 1..3600 seconds, got {self.drain_seconds!r}", field="drain_seconds")
        common_arches(self.agent_platforms, self.model_platforms)  # ConfigError when none is common
        for ns in self.api_from_namespaces:
            if not names.is_dns_label(ns):
                raise ConfigError(f"{ns!r} is not a namespace name", field="api_from_namespaces")


def _under(path: str, prefix: str) -> bool:
    parts = path.split("/")
    return path.startswith(prefix) and len(path) > len(prefix) and ".." not in parts and "." not in parts


def _group_name(group: DeviceGroup) -> str:
    """The group as the agent reports it (one MQTT topic level)."""
    if group.kind != "selector":
        return group.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", group.name).strip("-")[:63] or "selector"


def _labels(app: str, revision: str) -> dict[str, str]:
    return {**names.AGENT_NAME_LABELS, "app.kubernetes.io/instance": app, "app.kubernetes.io/version": revision,
            **names.MANAGED_BY_LABELS, names.APP_LABEL: app, names.REVISION_LABEL: revision}


def spool_host_path(app: str) -> str:
    """The node's directory for the app's spool (hostPath), under ``SPOOL_HOST_PREFIX``."""
    return f"{SPOOL_HOST_PREFIX}{app}/spool"


def _agent_config(s: RenderSettings, image: ImageRef, revision: str, accel: Accelerator | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "group": _group_name(s.group),
        "model_dir": MODEL_DIR,
        "broker_url": s.broker_url or f"mqtts://edgekit-mqtt.{s.namespace}.svc:8883",
        "interval": s.telemetry_interval,
        "spool_dir": SPOOL_DIR,
        "spool_instance": revision,  # the hostPath is shared by the app's revisions: one directory each
        "drain_timeout_s": s.drain_seconds,
        "listen_host": "0.0.0.0",  # kubelet probes reach the pod IP
        "listen_port": AGENT_PORT,
    }
    if image.digest:
        config["image"] = image.pinned
    if accel:
        config["execution_providers"] = [*accel.providers, "CPUExecutionProvider"]
    if (s.broker_url or "mqtts://").startswith("mqtts://"):
        config["mqtt_ca_file"] = f"{AGENT_CONFIG_DIR}/mqtt-ca/{MQTT_CA_FILE}"
    if s.mqtt_auth == "node-cert":
        config["mqtt_cert_file"] = "/etc/edgekit-agent/device/tls.crt"
        config["mqtt_key_file"] = "/etc/edgekit-agent/device/tls.key"
    if s.mqtt_allow_plaintext_password:
        config["mqtt_allow_plaintext_password"] = True
    if s.public_key_configmap:
        config["public_key"] = f"{AGENT_CONFIG_DIR}/keys/{KEY_FILE}"
    elif s.allow_unsigned:
        config["allow_unsigned"] = True
    if s.registry_insecure:
        config["registry_insecure"] = True
    if s.shadow_image:
        config.update(shadow_image=parse_image(s.shadow_image).pinned, shadow_ratio=s.shadow_ratio,
                      shadow_metric=s.shadow_metric,
                      shadow_model_dir="shadow-model")  # relative: in this revision's spool directory
    config.update(s.extra_config)
    return config


def key_configmap(namespace: str, pem: str, name: str | None = None) -> dict[str, Any]:
    """The ConfigMap that carries the cosign public key to the devices (``keys`` volume)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name or KEY_CONFIGMAP, "namespace": namespace,
                         "labels": dict(names.MANAGED_BY_LABELS)},
            "data": {KEY_FILE: pem}}


def mqtt_ca_configmap(namespace: str, pem: str) -> dict[str, Any]:
    """The ConfigMap that carries the broker's CA certificate to the devices (``mqtt-ca`` volume)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": MQTT_CA_CONFIGMAP, "namespace": namespace,
                         "labels": dict(names.MANAGED_BY_LABELS)},
            "data": {MQTT_CA_FILE: pem}}


def render(s: RenderSettings) -> list[dict[str, Any]]:
    """ServiceAccount, ConfigMap, Service, NetworkPolicy and DaemonSet for one revision, in apply order
    (the key ConfigMap first when ``public_key_pem`` is given)."""
    image = parse_image(s.image)
    if s.require_digest and not image.digest:
        raise DigestRequiredError(f"image {s.image!r} has no digest",
                                  hint="pin it as repository@sha256:<digest> (see `edgekit push`)")
    revision = s.revision or revision_for(image)
    target = TARGETS[s.target]
    source = target.model_source if s.model_source == "auto" else s.model_source
    accel = accelerator_for(s.accelerator, s.accelerator_provider) if s.accelerator else None
    app, ns = s.app, s.namespace
    name = f"{app}-{revision}"
    labels = _labels(app, revision)
    selector_labels = {names.APP_LABEL: app, names.REVISION_LABEL: revision}
    annotations = {names.IMAGE_ANNOTATION: image.pinned, names.TARGET_ANNOTATION: target.name,
                   "edgekit.io/group": s.group.spec, "edgekit.io/model-source": source}

    # Scheduling: the revision label plus the group (equality terms as nodeSelector, the rest as affinity).
    node_selector = {names.rollout_label(app): revision, names.OS_LABEL: "linux"}
    expressions: list[dict[str, Any]] = []
    for req in s.group.requirements:
        if req.op == "=" and req.key not in node_selector:
            node_selector[req.key] = req.values[0]
        else:
            expressions.extend(to_match_expressions((req,)))
    expressions.extend(dict(t) for t in target.node_terms)
    if accel:
        expressions.append({"key": accel.node_label[0], "operator": "In", "values": [accel.node_label[1]]})
    expressions.append({"key": names.ARCH_LABEL, "operator": "In",
                        "values": common_arches(s.agent_platforms, s.model_platforms)})

    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": s.cpu_request, "memory": s.memory_request},
        "limits": {"memory": s.memory_limit, **({"cpu": s.cpu_limit} if s.cpu_limit else {})},
    }
    if accel:
        resources["limits"][accel.resource] = "1"
        resources["requests"][accel.resource] = "1"

    mounts: list[dict[str, Any]] = [
        {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
        {"name": "config", "mountPath": AGENT_CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "spool", "mountPath": SPOOL_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "spool", "hostPath": {"path": spool_host_path(app), "type": "DirectoryOrCreate"}},
    ]
    if (s.broker_url or "mqtts://").startswith("mqtts://"):
        mounts.append({"name": "mqtt-ca", "mountPath": f"{AGENT_CONFIG_DIR}/mqtt-ca", "readOnly": True})
        volumes.append({"name": "mqtt-ca", "configMap": {"name": MQTT_CA_CONFIGMAP, "optional": True}})
    if s.mqtt_auth == "node-cert":
        mounts.append({"name": "device", "mountPath": f"{AGENT_CONFIG_DIR}/device", "readOnly": True})
        volumes.append({"name": "device", "hostPath": {"path": s.device_credentials_dir,
                                                        "type": "DirectoryOrCreate"}})
    if s.public_key_configmap:
        mounts.append({"name": "keys", "mountPath": f"{AGENT_CONFIG_DIR}/keys", "readOnly": True})
        volumes.append({"name": "keys", "configMap": {"name": s.public_key_configmap}})

    # Pod Security `restricted` in every field, on every container (not only inherited from the pod).
    security = {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                "runAsNonRoot": True, "runAsUser": AGENT_UID, "runAsGroup": AGENT_UID,
                "seccompProfile": {"type": "RuntimeDefault"}, "capabilities": {"drop": ["ALL"]}}
    env = [
        {"name": "EDGEKIT_AGENT_DEVICE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "EDGEKIT_AGENT_GROUP", "value": _group_name(s.group)},
        # names the agent's bench topic ({root}/{group}/{device}/bench/{app}/request)
        {"name": "EDGEKIT_AGENT_APP", "value": app},
    ]
    init_containers: list[dict[str, Any]] = []
    if source == "image-volume":
        volumes.insert(0, {"name": "model", "image": {"reference": image.pinned, "pullPolicy": "IfNotPresent"}})
        # The image's layer holds model/{model.onnx,edgekit.json,probe.npz} (contract 3.1): mount
        # that folder, not the image root, so the agent finds the files at /model either way.
        mounts[0]["subPath"] = "model"
    else:
        volumes.insert(0, {"name": "model", "emptyDir": {"sizeLimit": "1Gi"}})
        fetch = ["edgekit-agent", "fetch", image.pinned, "--to", MODEL_DIR]
        if s.public_key_configmap:
            fetch += ["--public-key", f"{AGENT_CONFIG_DIR}/keys/{KEY_FILE}"]
        elif s.allow_unsigned:
            fetch.append("--allow-unsigned")
        if s.registry_insecure:
            fetch.append("--insecure")
        if not image.digest:
            fetch.append("--allow-tag")
        init_containers.append({
            "name": "fetch-model", "image": s.agent_image, "imagePullPolicy": "IfNotPresent",
            "command": fetch,
            "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR},
                             *[m for m in mounts if m["name"] in ("config", "keys", "tmp")]],
            "resources": {"requests": {"cpu": s.cpu_request, "memory": s.memory_request},
                          "limits": {"memory": s.memory_limit}},
            "securityContext": security,
        })

    probe = {"httpGet": {"path": "/v2/health/live", "port": "http"}}
    container = {
        "name": "agent",
        "image": s.agent_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["edgekit-agent", "serve", "--config", f"{AGENT_CONFIG_DIR}/config.json"],
        "ports": [{"name": "http", "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "env": env,
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 90},
        "livenessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                           "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3},
        "resources": resources,
        "securityContext": security,
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": app,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": s.drain_seconds + STOP_SECONDS,
        "securityContext": {"runAsNonRoot": True, "runAsUser": AGENT_UID, "runAsGroup": AGENT_UID,
                            "fsGroup": AGENT_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "nodeSelector": node_selector,
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if expressions:
        pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": expressions}]}}}
    if target.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in target.tolerations]

    config = _agent_config(s, image, revision, accel)
    meta: dict[str, Any] = {"namespace": ns, "labels": labels}
    key = [key_configmap(ns, s.public_key_pem, s.public_key_configmap)] if s.public_key_pem is not None else []
    # No shared sub-objects (deepcopy would keep the aliases, e.g. one securityContext for two
    # containers): callers may edit one container, and YAML needs no anchors.
    return _unshared([
        *key,
        {"apiVersion": "v1", "kind": "ServiceAccount", "automountServiceAccountToken": False,
         "metadata": {"name": app, "namespace": ns, "labels": {**names.MANAGED_BY_LABELS, names.APP_LABEL: app}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta},
         "data": {"config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": app, "namespace": ns, "labels": {**names.MANAGED_BY_LABELS, names.APP_LABEL: app}},
         "spec": {"selector": {names.APP_LABEL: app}, "internalTrafficPolicy": "Local",
                  "ports": [{"name": "http", "port": AGENT_PORT, "targetPort": "http", "protocol": "TCP"}]}},
        _network_policy(app, ns, s.api_from_namespaces),
        {"apiVersion": "apps/v1", "kind": "DaemonSet",
         "metadata": {"name": name, **meta, "annotations": annotations},
         "spec": {
             "selector": {"matchLabels": selector_labels},
             "revisionHistoryLimit": 2,
             "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
             "template": {"metadata": {"labels": labels, "annotations": {
                 names.IMAGE_ANNOTATION: image.pinned,
                 **({names.SHADOW_ANNOTATION: parse_image(s.shadow_image).pinned,
                     names.SHADOW_SETTINGS_ANNOTATION: json.dumps({"ratio": s.shadow_ratio,
                                                                   "metric": s.shadow_metric})}
                    if s.shadow_image else {})}},
                          "spec": pod_spec},
         }},
    ])


def _unshared(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    copied: list[dict[str, Any]] = json.loads(json.dumps(objects))
    return copied


def _network_policy(app: str, namespace: str, from_namespaces: tuple[str, ...]) -> dict[str, Any]:
    """Ingress to the app's pods (every revision): the API port from the named namespaces, nothing
    else (no rule at all: no pod). Egress stays open (the broker and the registry may be anywhere)."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {names.APP_LABEL: app}}, "policyTypes": ["Ingress"]}
    if from_namespaces:  # (an empty list would read back as absent: every apply a change)
        spec["ingress"] = [{"from": [{"namespaceSelector": {"matchLabels": {names.NAMESPACE_NAME_LABEL: ns}}}
                                     for ns in sorted(set(from_namespaces))],
                            "ports": [{"port": AGENT_PORT, "protocol": "TCP"}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": app, "namespace": namespace,
                         "labels": {**names.MANAGED_BY_LABELS, names.APP_LABEL: app}},
            "spec": spec}
