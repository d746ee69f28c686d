"""fleet-manifests/: every overlay renders with kubectl kustomize and applies to a real API server;
the shipped mosquitto config really enforces TLS client certificates and the per-device ACL."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.kube.install import install_objects
from edgekit.kube.yamlio import dump_all
from edgekit.rehearsal.certs import TestCA
from edgekit.rehearsal.mosquitto import MOSQUITTO_BINARIES, _binary, device_acl, mosquitto_available
from edgekit.rehearsal.processes import ManagedProcess, free_port, port_open
from tests.fixtures.kube import KubeHandle

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "fleet-manifests"
OVERLAYS = ("k3s", "kubeedge", "openyurt")


def test_base_install_matches_edgekit_install() -> None:
    text = (MANIFESTS / "base" / "install.yaml").read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert body == dump_all(install_objects("edgekit")), \
        "regenerate: edgekit install --print --namespace edgekit > fleet-manifests/base/install.yaml"


def test_controller_runs_signed_with_the_devices_key() -> None:
    """The controller Deployment gives `edgekit controller` the public key the devices verify with
    (it refuses to start without one, exit 85), from the cosign key ConfigMap the agents mount too."""
    from edgekit.kube.rendering import KEY_CONFIGMAP, KEY_FILE

    deploy = yaml.safe_load((MANIFESTS / "controller" / "deployment.yaml").read_text())
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    key = env["EDGEKIT_ROLLOUT_PUBLIC_KEY"]
    assert "EDGEKIT_ROLLOUT_ALLOW_UNSIGNED" not in env
    mount = next(m for m in container["volumeMounts"] if key.startswith(m["mountPath"] + "/"))
    assert key == f"{mount['mountPath']}/{KEY_FILE}" and mount["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == KEY_CONFIGMAP


def test_broker_acl_is_the_recommended_device_acl() -> None:
    assert (MANIFESTS / "base" / "mosquitto" / "acl").read_text() == device_acl()


@pytest.mark.kube
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_applies(kube_cluster: KubeHandle, overlay: str) -> None:
    rendered = kube_cluster.kubectl("kustomize", str(MANIFESTS / "overlays" / overlay)).stdout
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                            "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "ConfigMap",
                            "ConfigMap", "Service", "Deployment"]
                          + ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 5)
    cluster_scoped = ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                      "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    for doc in docs:
        assert doc["metadata"]["labels"]["edgekit.io/target"] == overlay
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "edgekit"
    defaults = next(d for d in docs if d["metadata"]["name"] == "edgekit-agent-defaults")
    assert defaults["data"]["target"] == overlay
    assert json.loads(defaults["data"]["config.json"])["broker_url"].startswith("mqtts://")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    config_volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    for volume, prefix in ((config_volume, "edgekit-mqtt-config"), (next(
            v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "telemetry"),
            "edgekit-mqtt-telemetry")):
        config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix))
        assert volume["configMap"]["name"] == config_map["metadata"]["name"]  # hashed name rewritten
    service = next(d for d in docs if d["kind"] == "Service")
    assert (service["spec"].get("type") == "NodePort") == (overlay == "kubeedge")

    out = kube_cluster.kubectl("apply", "--server-side", "--field-manager=fleet-manifests", "-f", "-",
                               input=rendered).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/edgerollouts.edgekit.io serverside-applied" in out
    client = kube_cluster.client()
    got = client.get("/apis/apps/v1/namespaces/edgekit/deployments/edgekit-mqtt")
    assert got["metadata"]["labels"]["edgekit.io/target"] == overlay
    cm = client.get("/api/v1/namespaces/edgekit/configmaps/edgekit-agent-defaults")
    assert cm["data"]["target"] == overlay


# --- the broker config, run for real ---------------------------------------------------------
def _conf_for_test(workdir: Path, port: int, ca: Path, cert: Path, key: Path) -> Path:
    conf = (MANIFESTS / "base" / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/config/acl", str(MANIFESTS / "base" / "mosquitto" / "acl"))
    conf = conf.replace("/mosquitto/tls/ca.crt", str(ca)).replace("/mosquitto/tls/tls.crt", str(cert))
    conf = conf.replace("/mosquitto/tls/tls.key", str(key)).replace("/mosquitto/data/", f"{workdir}/")
    conf = re.sub(r"^listener 8883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    included = workdir / "conf.d"
    included.mkdir()
    shutil.copy(MANIFESTS / "base" / "mosquitto" / "telemetry.conf", included / "telemetry.conf")
    conf = conf.replace("/mosquitto/conf.d", str(included))
    conf = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n" + conf  # as root it would drop to "mosquitto"
    path = workdir / "mosquitto.conf"
    path.write_text(conf)
    return path


def _client(name: str, port: int, ca: Path, pair: Any | None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{name}")
    client.tls_set(ca_certs=str(ca), certfile=str(pair.cert) if pair else None,
                   keyfile=str(pair.key) if pair else None)
    return client


@pytest.mark.mqtt
@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed (scripts/setup installs it)")
def test_shipped_broker_config_enforces_certificates_and_device_acl(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue_server()
    port = free_port()
    conf = _conf_for_test(tmp_path, port, ca.cert_path, server.cert, server.key)
    binary = _binary("mosquitto", MOSQUITTO_BINARIES)
    assert binary
    broker = ManagedProcess("mosquitto", [binary, "-c", str(conf)], tmp_path / "mosquitto.log").start()
    try:
        broker.wait_ready(lambda: port_open(port), timeout=20)
        received: list[str] = []
        got = threading.Event()
        fleet = _client("fleet", port, ca.cert_path, ca.issue_client("fleet"))
        fleet.on_message = lambda c, u, msg: (received.append(msg.topic), got.set())
        fleet.connect("127.0.0.1", port)
        fleet.subscribe("edgekit/v1/#", qos=1)
        fleet.loop_start()
        device = _client("cam-1", port, ca.cert_path, ca.issue_client("cam-1"))
        device.connect("127.0.0.1", port)
        device.loop_start()
        time.sleep(0.5)
        device.publish("edgekit/v1/cams/cam-2/health", b"{}", qos=1).wait_for_publish(5)  # not its own: dropped
        device.publish("edgekit/v1/cams/cam-1/health", b"{}", qos=1).wait_for_publish(5)
        assert got.wait(5)
        time.sleep(0.5)
        assert received == ["edgekit/v1/cams/cam-1/health"]
        for c in (device, fleet):
            c.loop_stop()
            c.disconnect()
        anonymous = _client("anon", port, ca.cert_path, None)
        refused = False
        try:
            anonymous.connect("127.0.0.1", port)  # the TLS handshake needs a client certificate
            anonymous.loop_start()
            time.sleep(1.0)
            refused = not anonymous.is_connected()
            anonymous.loop_stop()
        except (OSError, ssl.SSLError):
            refused = True
        assert refused, "a client without certificate got in"
    finally:
        broker.stop()
