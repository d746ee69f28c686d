"""Pure Kubernetes logic: selectors, groups, fleets, rendering, and the CLI's bad-input errors
(no cluster needed)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.errors import ConfigError, DigestRequiredError, ImageReferenceError, SelectorError
from edgekit.kube import names
from edgekit.kube.applying import sort_for_apply
from edgekit.kube.groups import node_states, parse_group, summarize
from edgekit.kube.install import edgerollout_crd, engine_rbac, install_objects
from edgekit.kube.rendering import RenderSettings, parse_image, render, revision_for
from edgekit.kube.selectors import format_selector, matches, parse_selector
from edgekit.rehearsal.nodes import FleetSpec, node_objects, parse_counts, spread
from tests.fixtures.agent import make_keypair

DIGEST = "sha256:" + "3f2a9c1b7d0e" + "0" * 52
IMAGE = f"registry.local:5000/models/digits:v2@{DIGEST}"
RESTRICTED = {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
              "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
              "seccompProfile": {"type": "RuntimeDefault"}, "capabilities": {"drop": ["ALL"]}}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(objects)["DaemonSet"]["spec"]["template"]["spec"]
    return spec


# --- selectors and groups --------------------------------------------------------------------
@pytest.mark.parametrize("text", ["a=b", "a==b,c!=d", "tier in (x, y),zone notin (z)", "gpu,!legacy",
                                  "edgekit.io/group=cameras,kubernetes.io/arch=arm64"])
def test_selector_round_trip(text: str) -> None:
    reqs = parse_selector(text)
    assert parse_selector(format_selector(reqs)) == reqs


@pytest.mark.parametrize("text", ["a in (b", "a=b)", "a=b,,c", "bad key=1", "a=b=c", "tier in ()", "",
                                  "x/y/z=1", "-a=b"])
def test_selector_that_does_not_parse(text: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse_selector(text)
    assert err.value.exit_code == 48
    assert "\n" not in err.value.one_line()


def test_selector_matching() -> None:
    reqs = parse_selector("zone in (a,b),!legacy,arch!=amd64")
    assert matches(reqs, {"zone": "a", "arch": "arm64"})
    assert not matches(reqs, {"zone": "a", "arch": "arm64", "legacy": ""})
    assert not matches(reqs, {"zone": "c"})


@pytest.mark.parametrize(("text", "target", "selector", "kind"), [
    ("cameras", None, "edgekit.io/group=cameras", "label"),
    ("cameras", "kubeedge", "apps.kubeedge.io/belonging-to=cameras", "kubeedge"),
    ("cameras", "openyurt", "apps.openyurt.io/nodepool=cameras", "openyurt"),
    ("kubeedge:cams", "k3s", "apps.kubeedge.io/belonging-to=cams", "kubeedge"),
    ("openyurt:gw", None, "apps.openyurt.io/nodepool=gw", "openyurt"),
    ("selector:site=berlin,kubernetes.io/arch=arm64", None, "site=berlin,kubernetes.io/arch=arm64", "selector"),
    ("site in (a,b)", None, "site in (a,b)", "selector"),
])
def test_parse_group(text: str, target: str | None, selector: str, kind: str) -> None:
    group = parse_group(text, target)
    assert (group.selector, group.kind) == (selector, kind)
    assert parse_group(group.spec, target).selector == selector


def test_group_summary_counts_arch_readiness_and_revisions() -> None:
    nodes = node_objects(FleetSpec.simple(10, "cams=10", "arm64=0.7,amd64=0.3"))
    for i, node in enumerate(nodes):
        node["status"]["conditions"] = [{"type": "Ready", "status": "True" if i < 9 else "False"}]
        node["metadata"]["labels"][names.rollout_label("det")] = "r1" if i < 6 else "r2"
    pods = [{"metadata": {"labels": {names.APP_LABEL: "det", names.REVISION_LABEL: "r1"}},
             "spec": {"nodeName": nodes[i]["metadata"]["name"]},
             "status": {"conditions": [{"type": "Ready", "status": "True"}]}} for i in range(4)]
    summary = summarize(parse_group("cams"), node_states(nodes, pods))
    assert (summary.nodes, summary.ready) == (10, 9)
    assert summary.by_arch == {"amd64": 3, "arm64": 7}
    assert summary.apps == {"det": {"r1": 6, "r2": 4}}
    assert summary.pods_ready == {"det": {"r1": 4}}


# --- fleets ----------------------------------------------------------------------------------
def test_fleet_spec_labels_every_group_flavour() -> None:
    spec = FleetSpec.simple(200, "cameras=150,gateways=50", "arm64=0.7,amd64=0.3",
                            accelerators={"nvidia.com/gpu": 0.1})
    nodes = node_objects(spec)
    assert len(nodes) == 200
    labels = [n["metadata"]["labels"] for n in nodes]
    assert Counter(lb["kubernetes.io/arch"] for lb in labels) == {"arm64": 140, "amd64": 60}
    assert Counter(lb[names.GROUP_LABEL] for lb in labels) == {"cameras": 150, "gateways": 50}
    assert all(lb[names.GROUP_LABEL] == lb[names.KUBEEDGE_GROUP_LABEL] == lb[names.OPENYURT_POOL_LABEL]
               for lb in labels)
    assert len({lb["topology.kubernetes.io/zone"] for lb in labels}) == 3
    gpus = [n for n in nodes if "nvidia.com/gpu" in n["status"]["capacity"]]
    assert len(gpus) == 20 and all(n["metadata"]["labels"]["nvidia.com/gpu.present"] == "true" for n in gpus)
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for n in nodes)


def test_spread_is_proportional_and_interleaved() -> None:
    out = spread(10, {"arm64": 0.7, "amd64": 0.3})
    assert Counter(out) == {"arm64": 7, "amd64": 3}
    assert out[:4].count("amd64") >= 1  # not all of one kind first


@pytest.mark.parametrize("text", ["cameras", "cameras=x", "=3", "cameras=-1"])
def test_bad_pool_spec(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_counts(text)


def test_pools_must_add_up() -> None:
    with pytest.raises(ConfigError, match="add up to 60"):
        FleetSpec.simple(50, "a=30,b=30")


# --- images and revisions --------------------------------------------------------------------
def test_image_reference_and_revision() -> None:
    ref = parse_image(IMAGE)
    assert (ref.repository, ref.tag, ref.digest) == ("registry.local:5000/models/digits", "v2", DIGEST)
    assert ref.pinned == f"registry.local:5000/models/digits@{DIGEST}"
    assert revision_for(ref) == "3f2a9c1b7d0e"
    assert revision_for(parse_image("registry.local/models/digits:V2.1_rc")) == "v2-1-rc"


@pytest.mark.parametrize("ref", ["", "UPPER/case", "repo@sha256:xyz", "repo:bad tag", "repo@md5:" + "0" * 32])
def test_bad_image_reference(ref: str) -> None:
    with pytest.raises(ImageReferenceError):
        parse_image(ref)


# --- rendering -------------------------------------------------------------------------------
def test_render_k3s_revision_daemonset() -> None:
    objects = render(RenderSettings(app="digits", image=IMAGE, group=parse_group("cameras")))
    assert [o["kind"] for o in objects] == ["ServiceAccount", "ConfigMap", "Service", "NetworkPolicy", "DaemonSet"]
    assert [o["kind"] for o in sort_for_apply(objects)] == [o["kind"] for o in objects]
    ds = by_kind(objects)["DaemonSet"]
    assert ds["metadata"]["name"] == "digits-3f2a9c1b7d0e"
    spec = pod_spec(objects)
    assert spec["nodeSelector"] == {"rollout.edgekit.io/digits": "3f2a9c1b7d0e", "kubernetes.io/os": "linux",
                                    "edgekit.io/group": "cameras"}
    assert ds["spec"]["selector"]["matchLabels"] == {"edgekit.io/app": "digits",
                                                     "edgekit.io/revision": "3f2a9c1b7d0e"}
    (agent,) = spec["containers"]
    assert agent["command"] == ["edgekit-agent", "serve", "--config", "/etc/edgekit-agent/config.json"]
    assert agent["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert agent["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert agent["securityContext"] == RESTRICTED
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
    # the spool is a hostPath per app (it outlives pods); the other hostPath is the read-only device folder
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(volumes) == {"model", "config", "tmp", "spool", "mqtt-ca", "device"}
    assert volumes["spool"]["hostPath"] == {"path": "/var/lib/edgekit/digits/spool", "type": "DirectoryOrCreate"}
    assert volumes["tmp"]["emptyDir"]
    assert sorted(n for n, v in volumes.items() if "hostPath" in v) == ["device", "spool"]
    assert volumes["device"]["hostPath"]["path"] == "/etc/edgekit/device"
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["device"]["readOnly"] is True and mounts["spool"]["mountPath"] == "/var/lib/edgekit-agent/spool"
    env = {e["name"]: e for e in agent["env"]}
    assert env["EDGEKIT_AGENT_DEVICE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["EDGEKIT_AGENT_GROUP"]["value"] == "cameras"
    assert agent["resources"]["requests"] and agent["resources"]["limits"]["memory"]
    model = next(v for v in spec["volumes"] if v["name"] == "model")
    assert model["image"]["reference"] == f"registry.local:5000/models/digits@{DIGEST}"
    assert "initContainers" not in spec
    # The layer's model/ folder, not the image root, is what the agent sees at /model.
    assert {"name": "model", "mountPath": "/model", "readOnly": True, "subPath": "model"} in agent["volumeMounts"]
    config = json.loads(by_kind(objects)["ConfigMap"]["data"]["config.json"])
    assert config["listen_port"] == 8080 and config["listen_host"] == "0.0.0.0"
    assert config["group"] == "cameras" and config["image"].endswith(DIGEST)
    assert config["spool_dir"] == mounts["spool"]["mountPath"]
    svc = by_kind(objects)["Service"]["spec"]
    assert svc["internalTrafficPolicy"] == "Local"


def test_render_kubeedge_fetches_by_digest_in_an_init_container() -> None:
    objects = render(RenderSettings(app="digits", image=IMAGE, group=parse_group("cameras", "kubeedge"),
                                    target="kubeedge"))
    spec = pod_spec(objects)
    (init,) = spec["initContainers"]
    assert init["securityContext"] == RESTRICTED
    assert init["securityContext"] is not spec["containers"][0]["securityContext"]  # callers may edit one
    assert init["command"] == ["edgekit-agent", "fetch", f"registry.local:5000/models/digits@{DIGEST}",
                               "--to", "/model"]
    assert next(v for v in spec["volumes"] if v["name"] == "model")["emptyDir"]
    assert spec["nodeSelector"]["apps.kubeedge.io/belonging-to"] == "cameras"
    assert {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "node-role.kubernetes.io/edge", "operator": "Exists"} in terms[0]["matchExpressions"]


def test_network_policy_lets_only_the_named_namespaces_reach_the_api() -> None:
    closed = by_kind(render(RenderSettings(app="d", image=IMAGE, group=parse_group("c"))))["NetworkPolicy"]
    assert closed["metadata"]["name"] == "d"
    # every revision's pods of the app; no ingress rule: only the node itself (NetworkPolicy never
    # filters a pod's own node) reaches the agent
    assert closed["spec"] == {"podSelector": {"matchLabels": {"edgekit.io/app": "d"}}, "policyTypes": ["Ingress"]}
    opened = by_kind(render(RenderSettings(app="d", image=IMAGE, group=parse_group("c"),
                                           api_from_namespaces=("shop", "apps", "shop"))))["NetworkPolicy"]
    assert opened["spec"]["ingress"] == [{
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}},
                 {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}],
        "ports": [{"port": 8080, "protocol": "TCP"}]}]


def test_render_insecure_registry_for_local_demos() -> None:
    objects = render(RenderSettings(app="d", image=IMAGE, group=parse_group("c"), target="kubeedge",
                                    registry_insecure=True))
    assert "--insecure" in pod_spec(objects)["initContainers"][0]["command"]
    assert json.loads(by_kind(objects)["ConfigMap"]["data"]["config.json"])["registry_insecure"] is True


def test_render_openyurt_and_set_based_group() -> None:
    objects = render(RenderSettings(app="digits", image=IMAGE, target="openyurt",
                                    group=parse_group("selector:site in (berlin,paris),kubernetes.io/arch=arm64")))
    spec = pod_spec(objects)
    assert spec["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    exprs = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": "site", "operator": "In", "values": ["berlin", "paris"]} in exprs
    assert {"key": "openyurt.io/is-edge-worker", "operator": "In", "values": ["true"]} in exprs
    config = json.loads(by_kind(objects)["ConfigMap"]["data"]["config.json"])
    assert config["group"] == "site-in-berlin-paris-kubernetes.io-arch-arm64"


def test_render_accelerator_requests_targets_and_falls_back_to_cpu() -> None:
    objects = render(RenderSettings(app="det", image=IMAGE, group=parse_group("boxes"), accelerator="nvidia.com/gpu"))
    spec = pod_spec(objects)
    agent = spec["containers"][0]
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == "1"
    exprs = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in exprs
    config = json.loads(by_kind(objects)["ConfigMap"]["data"]["config.json"])
    assert config["execution_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_render_is_pure_and_deterministic() -> None:
    settings = RenderSettings(app="digits", image=IMAGE, group=parse_group("cameras"))
    assert render(settings) == render(settings)


def test_require_digest() -> None:
    settings = RenderSettings(app="digits", image="registry.local/models/digits:v2", group=parse_group("c"),
                              require_digest=True)
    with pytest.raises(DigestRequiredError) as err:
        render(settings)
    assert err.value.exit_code == 63


@pytest.mark.parametrize(("field", "value"), [
    ("app", "Bad_Name"), ("target", "k8s"), ("revision", "UPPER"),
    # the admission policy allows the device hostPath only below /etc/edgekit/
    ("device_credentials_dir", "/etc/kubernetes/pki"), ("device_credentials_dir", "/etc/edgekit/../shadow"),
    ("device_credentials_dir", "/etc/edgekit/"), ("api_from_namespaces", ("Not A Namespace",)),
])
def test_bad_render_settings(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"app": "digits", "image": IMAGE, "group": parse_group("c"), field: value}
    with pytest.raises(ConfigError) as err:
        RenderSettings(**kwargs)
    assert err.value.field == field


# --- CRD and RBAC ----------------------------------------------------------------------------
def _walk(schema: dict[str, Any]) -> list[dict[str, Any]]:
    out = [schema]
    for sub in (schema.get("properties") or {}).values():
        out += _walk(sub)
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"])
    return out


def test_crd_is_structural_with_status_and_printer_columns() -> None:
    crd = edgerollout_crd()
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == ["App", "Group", "Revision", "Phase"]
    for node in _walk(version["schema"]["openAPIV3Schema"]):  # structural: every node has a type
        assert "type" in node or node.get("x-kubernetes-int-or-string"), node


def test_engine_rbac_is_least_privilege() -> None:
    objs = {o["kind"]: o for o in engine_rbac("fleet")}
    (node_rule,) = objs["ClusterRole"]["rules"]
    assert node_rule == {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]}
    for rule in objs["Role"]["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]
    assert objs["Role"]["metadata"]["namespace"] == "fleet"
    writes = [r for r in objs["Role"]["rules"] if "configmaps" in r["resources"] and "create" in r["verbs"]]
    assert writes == [{"apiGroups": [""], "resources": ["configmaps"],
                       "verbs": ["create", "patch", "update", "delete"]}]  # names: admission decides
    installed = install_objects("fleet")
    assert [o["kind"] for o in installed][:2] == ["CustomResourceDefinition", "Namespace"]
    assert installed[1]["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"
    assert installed[1]["metadata"]["labels"]["pod-security.kubernetes.io/audit"] == "restricted"
    policies = [o for o in installed if o["kind"] == "ValidatingAdmissionPolicy"]
    bindings = [o for o in installed if o["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert [b["spec"]["policyName"] for b in bindings] == [p["metadata"]["name"] for p in policies]
    assert all(b["spec"]["validationActions"] == ["Deny"] for b in bindings)
    for p in policies:  # only the engine of this namespace is held to them
        (cond,) = p["spec"]["matchConditions"]
        assert cond["expression"] == "request.userInfo.username == 'system:serviceaccount:fleet:edgekit-engine'"



def test_install_writes_the_trust_configmaps_the_agents_mount(tmp_path: Path) -> None:
    from edgekit.rehearsal.certs import TestCA

    _, pub = make_keypair(tmp_path)
    ca = TestCA(tmp_path / "ca").cert_path.read_text()
    plain = install_objects("fleet")
    assert not [o for o in plain if o["kind"] == "ConfigMap"]  # optional: install without them as before
    installed = install_objects("fleet", public_key_pem=pub.read_text(), mqtt_ca_pem=ca)
    assert installed[:len(plain)] == plain
    trust = {o["metadata"]["name"]: o for o in installed[len(plain):]}
    assert all(o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == "fleet" for o in trust.values())
    # what a rendered agent mounts is what install wrote, under the file names its config reads
    rendered = render(RenderSettings(app="digits", image=IMAGE, group=parse_group("c"), namespace="fleet",
                                     public_key_pem=pub.read_text()))
    pod = next(o for o in rendered if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    files = {}
    for v in pod["volumes"]:
        if v["name"] in ("keys", "mqtt-ca"):
            (key,) = trust[v["configMap"]["name"]]["data"]
            files[v["name"]] = f"{mounts[v['name']]}/{key}"
    config = json.loads(next(o["data"]["config.json"] for o in rendered if "config.json" in o.get("data", {})))
    assert files == {"keys": config["public_key"], "mqtt-ca": config["mqtt_ca_file"]}
    assert trust["edgekit-cosign-key"]["data"] == {"cosign.pub": pub.read_text()}
    assert trust["edgekit-mqtt-ca"]["data"] == {"ca.crt": ca}
    printed = CliRunner().invoke(cli, ["install", "-n", "fleet", "--print", "--public-key", str(pub)])
    assert printed.exit_code == 0 and list(yaml.safe_load_all(printed.output))[-1] == trust["edgekit-cosign-key"]

# --- CLI: bad input, one line, distinct exit codes --------------------------------------------
@pytest.mark.parametrize(("args", "code", "text"), [
    (["render", IMAGE, "--group", "selector:a in (b", "--app", "digits", "--allow-unsigned"], 48, "does not parse"),
    (["render", "registry.local/models/digits:v2", "--group", "c", "--app", "digits", "--require-digest",
      "--allow-unsigned"], 63, "has no digest"),
    (["render", "Not An Image", "--group", "c", "--app", "digits", "--allow-unsigned"], 28, "not an image reference"),
    (["render", IMAGE, "--group", "c", "--app", "Bad_App", "--allow-unsigned"], 2, "app"),
    (["render", IMAGE, "--group", "c", "--app", "digits"], 85, "requires a public key"),
    (["render", IMAGE, "--group", "c", "--app", "digits", "--public-key", "/nonexistent/cosign.pub"], 2,
     "cannot read /nonexistent/cosign.pub"),
    (["groups", "show", "selector:x in (", "--kubeconfig", "/nonexistent/kubeconfig"], 48, "does not parse"),
    (["groups", "list", "--kubeconfig", "/nonexistent/kubeconfig"], 2, "does not exist"),
])
def test_cli_bad_input(args: list[str], code: int, text: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgekit: error:") and text in lines[0]


def test_cli_render_yaml_and_json(tmp_path: Path) -> None:
    _, pub = make_keypair(tmp_path)
    out = CliRunner().invoke(cli, ["render", IMAGE, "--group", "cameras", "--app", "digits", "--public-key", str(pub)])
    assert out.exit_code == 0, out.output
    docs = list(yaml.safe_load_all(out.output))
    assert [d["kind"] for d in docs] == ["ConfigMap", "ServiceAccount", "ConfigMap", "Service", "NetworkPolicy",
                                         "DaemonSet"]
    assert "&id" not in out.output  # no YAML anchors
    out = CliRunner().invoke(cli, ["render", IMAGE, "-g", "cams", "-a", "d", "-t", "kubeedge", "-f", "json"],
                             env={"EDGEKIT_ROLLOUT_PUBLIC_KEY": str(pub)})
    assert json.loads(out.output)[5]["spec"]["template"]["spec"]["initContainers"]
    # a private key or any other file is not a key to ship
    (tmp_path / "not.pub").write_text("hello")
    bad = CliRunner().invoke(cli, ["render", IMAGE, "-g", "c", "-a", "d", "--public-key", str(tmp_path / "not.pub")])
    assert bad.exit_code == 29 and "is not a PEM public key" in bad.output


@pytest.mark.parametrize("target", ["k3s", "kubeedge"])
def test_render_with_a_public_key_ships_it_and_points_the_agent_at_it(tmp_path: Path, target: str) -> None:
    """``render --public-key FILE``: ConfigMap edgekit-cosign-key holds the key, mounted where the
    agent config (and the init container's fetch) read it; the real agent settings load it."""
    from edgekit_agent.settings import load_settings

    _, pub = make_keypair(tmp_path)
    out = CliRunner().invoke(cli, ["render", IMAGE, "-g", "cams", "-a", "digits", "-t", target, "-f", "json",
                                   "--public-key", str(pub)])
    assert out.exit_code == 0, out.output
    objects = json.loads(out.output)
    key_map = objects[0]
    assert key_map["kind"] == "ConfigMap" and key_map["metadata"]["name"] == "edgekit-cosign-key"
    assert key_map["data"] == {"cosign.pub": pub.read_text()}
    spec = pod_spec(objects)
    assert {"name": "keys", "configMap": {"name": "edgekit-cosign-key"}} in spec["volumes"]
    agent = spec["containers"][0]
    keys_mount = next(m for m in agent["volumeMounts"] if m["name"] == "keys")
    config = json.loads(next(o for o in objects if o["kind"] == "ConfigMap" and o is not key_map)
                        ["data"]["config.json"])
    assert config["public_key"] == keys_mount["mountPath"] + "/cosign.pub" and "allow_unsigned" not in config
    (tmp_path / "config.json").write_text(json.dumps(config))
    settings = load_settings(tmp_path / "config.json", env={"EDGEKIT_AGENT_DEVICE": "cam-1"})
    assert settings.public_key == config["public_key"] and not settings.allow_unsigned
    assert settings.signature == "verified"
    if target == "kubeedge":
        fetch = spec["initContainers"][0]
        assert fetch["command"][-2:] == ["--public-key", config["public_key"]]
        assert any(m["name"] == "keys" for m in fetch["volumeMounts"])


def test_render_allow_unsigned_renders_agents_that_run_unsigned_images() -> None:
    out = CliRunner().invoke(cli, ["render", IMAGE, "-g", "cams", "-a", "digits", "-t", "kubeedge", "-f", "json",
                                   "--allow-unsigned"])
    assert out.exit_code == 0, out.output
    objects = json.loads(out.output)
    assert [o["kind"] for o in objects] == ["ServiceAccount", "ConfigMap", "Service", "NetworkPolicy", "DaemonSet"]
    config = json.loads(by_kind(objects)["ConfigMap"]["data"]["config.json"])
    assert config["allow_unsigned"] is True and "public_key" not in config
    spec = pod_spec(objects)
    assert "--allow-unsigned" in spec["initContainers"][0]["command"]
    assert all(v["name"] != "keys" for v in spec["volumes"])


def test_cli_install_print() -> None:
    out = CliRunner().invoke(cli, ["install", "--print", "--namespace", "fleet"])
    assert out.exit_code == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(out.output)]
    assert kinds[0] == "CustomResourceDefinition" and "RoleBinding" in kinds
    assert kinds.count("ValidatingAdmissionPolicy") == kinds.count("ValidatingAdmissionPolicyBinding") == 5
    out = CliRunner().invoke(cli, ["install", "--print", "--agent-repository", "registry.local/agent:1.2",
                                   "--agent-repository", "ghcr.io/acme/agent"])
    policy = next(d for d in yaml.safe_load_all(out.output) if d["metadata"]["name"].startswith("edgekit-engine-daem"))
    repos = next(v for v in policy["spec"]["variables"] if v["name"] == "repositories")
    assert repos["expression"] == "['registry.local/agent', 'ghcr.io/acme/agent']"


def test_cli_render_api_from_namespaces() -> None:
    out = CliRunner().invoke(cli, ["render", IMAGE, "-g", "cams", "-a", "d", "-f", "json", "--allow-unsigned",
                                   "--api-from-namespace", "shop", "--api-from-namespace", "apps"])
    assert out.exit_code == 0, out.output
    (rule,) = json.loads(out.output)[3]["spec"]["ingress"]
    assert [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]] == \
        ["apps", "shop"]


@pytest.mark.parametrize("target", ["k3s", "kubeedge", "openyurt"])
@pytest.mark.parametrize("accelerator", [None, "nvidia.com/gpu"])
def test_rendered_agent_config_loads_in_the_agent(tmp_path: Any, target: str, accelerator: str | None) -> None:
    """The ConfigMap's config.json and the pod's env are what the real agent settings accept."""
    from edgekit_agent.settings import load_settings

    objects = render(RenderSettings(app="digits", image=IMAGE, group=parse_group("cameras", target), target=target,
                                    accelerator=accelerator))
    path = tmp_path / "config.json"
    path.write_text(by_kind(objects)["ConfigMap"]["data"]["config.json"])
    agent = pod_spec(objects)["containers"][0]
    env = {e["name"]: e.get("value", "cam-0001") for e in agent["env"]}  # spec.nodeName -> the node
    settings = load_settings(path, env=env)
    assert (settings.device, settings.group) == ("cam-0001", "cameras")
    assert settings.listen_port == 8080 and settings.model_dir == "/model"
    assert settings.image == f"registry.local:5000/models/digits@{DIGEST}"
    assert settings.broker_tls and settings.mqtt_cert_file == "/etc/edgekit-agent/device/tls.crt"
    mounted = {m["mountPath"] for m in agent["volumeMounts"]}
    for file_setting in (settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file):
        assert file_setting and any(file_setting.startswith(m + "/") for m in mounted), file_setting
    if accelerator:
        assert settings.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_rollouts_render_the_same_network_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine re-renders the per-app NetworkPolicy at every rollout: the namespaces come from the
    rollout settings (env: comma-separated), or a rollout would close what `render` opened."""
    from edgekit.rollout.settings import load_rollout_settings

    monkeypatch.setenv("EDGEKIT_ROLLOUT_API_FROM_NAMESPACES", "shop,apps")
    options = load_rollout_settings().render_options()
    assert options["api_from_namespaces"] == ("shop", "apps")
    policy = by_kind(render(RenderSettings(app="d", image=IMAGE, group=parse_group("c"), **options)))["NetworkPolicy"]
    assert policy == by_kind(render(RenderSettings(app="d", image=IMAGE, group=parse_group("c"),
                                                   api_from_namespaces=("apps", "shop"))))["NetworkPolicy"]


def _engine_settings(words: list[str], *args: str) -> Any:
    """The rollout settings an engine command (push, undo, resume, controller) runs with, parsed
    by the command itself from ``args`` (what it renders every wave's objects with)."""
    from edgekit.cli.rollout_session import session_settings

    # contexts under the CLI's own (its help option names: click keeps a command's help option once made)
    ctx = click.Context(cli, info_name="edgekit", **cli.context_settings)
    command: Any = cli
    for word in words:
        command = command.get_command(ctx, word)
        ctx = click.Context(command, info_name=word, parent=ctx)
    command = getattr(command, "rollout", command)  # push with --group
    parsed = command.make_context(words[-1], list(args), parent=ctx.parent)
    return session_settings(dict(parsed.params))


ENGINE_COMMANDS = [(["push"], [IMAGE, "-g", "c", "-a", "d"]), (["rollout", "undo"], ["-a", "d", "-g", "c"]),
                   (["rollout", "resume"], ["d-c-1"]), (["controller"], [])]


@pytest.mark.parametrize(("words", "args"), ENGINE_COMMANDS)
def test_engine_commands_render_the_namespaces_they_are_given(monkeypatch: pytest.MonkeyPatch, words: list[str],
                                                             args: list[str]) -> None:
    """`--api-from-namespace` on every command that runs an engine: flag > EDGEKIT_ROLLOUT_* > file,
    into the NetworkPolicy the engine renders (settings do not travel in the EdgeRollout)."""
    def policy(*flags: str) -> Any:
        options = _engine_settings(words, *args, "--allow-unsigned", *flags).render_options()
        objects = render(RenderSettings(app="d", image=IMAGE, group=parse_group("c"), **options))
        rules = by_kind(objects)["NetworkPolicy"]["spec"].get("ingress", [])
        return [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for rule in rules for p in rule["from"]]

    assert policy() == []
    assert policy("--api-from-namespace", "shop", "--api-from-namespace", "apps") == ["apps", "shop"]
    monkeypatch.setenv("EDGEKIT_ROLLOUT_API_FROM_NAMESPACES", "metrics")
    assert policy() == ["metrics"]
    assert policy("--api-from-namespace", "shop") == ["shop"]
    with pytest.raises(ConfigError, match="not a namespace name"):
        policy("--api-from-namespace", "Not_A_Namespace")


def test_plaintext_password_is_rendered_only_when_asked(tmp_path: Path) -> None:
    """The agent refuses a password over plain mqtt:// to a broker off its host; `render
    --mqtt-allow-plaintext-password` (a RenderSettings field) is the one way to let it, and the real
    agent settings load the config it renders."""
    from edgekit_agent.errors import ConfigError as AgentConfigError
    from edgekit_agent.settings import load_settings

    def agent_config(*flags: str) -> dict[str, Any]:
        out = CliRunner().invoke(cli, ["render", IMAGE, "-g", "c", "-a", "d", "-f", "json", "--allow-unsigned",
                                       "--broker-url", "mqtt://10.1.2.3:1883", *flags])
        assert out.exit_code == 0, out.output
        return dict(json.loads(by_kind(json.loads(out.output))["ConfigMap"]["data"]["config.json"]))

    closed, opened = agent_config(), agent_config("--mqtt-allow-plaintext-password")
    assert "mqtt_allow_plaintext_password" not in closed and opened.pop("mqtt_allow_plaintext_password") is True
    assert opened == closed  # nothing else changes
    # the real agent settings, with a password (from the pod's environment, e.g. a Secret) for that
    # broker, load only the config that opts in
    env = {"EDGEKIT_AGENT_DEVICE": "cam-1", "EDGEKIT_AGENT_MQTT_USERNAME": "cam-1",
           "EDGEKIT_AGENT_MQTT_PASSWORD": "s3cret"}
    path = tmp_path / "config.json"
    for allowed in (True, False):
        # what `render --mqtt-auth none` writes (node-cert would point the agent at TLS files)
        config = agent_config("--mqtt-auth", "none", *(["--mqtt-allow-plaintext-password"] if allowed else []))
        assert "mqtt_cert_file" not in config and "mqtt_cert_file" in agent_config()
        path.write_text(json.dumps(config))
        if allowed:
            settings = load_settings(path, env=env)
            assert settings.mqtt_allow_plaintext_password and settings.read_password() == "s3cret"
        else:
            with pytest.raises(AgentConfigError, match="plain MQTT"):
                load_settings(path, env=env)


@pytest.mark.parametrize(("words", "args"), ENGINE_COMMANDS)
def test_engine_commands_render_the_plaintext_password_opt_in(monkeypatch: pytest.MonkeyPatch, words: list[str],
                                                             args: list[str]) -> None:
    def config(*flags: str) -> dict[str, Any]:
        options = _engine_settings(words, *args, "--allow-unsigned", *flags).render_options()
        objects = render(RenderSettings(app="d", image=IMAGE, group=parse_group("c"), **options))
        return dict(json.loads(by_kind(objects)["ConfigMap"]["data"]["config.json"]))

    assert "mqtt_allow_plaintext_password" not in config()
    assert config("--mqtt-allow-plaintext-password")["mqtt_allow_plaintext_password"] is True
    monkeypatch.setenv("EDGEKIT_ROLLOUT_MQTT_ALLOW_PLAINTEXT_PASSWORD", "1")
    assert config()["mqtt_allow_plaintext_password"] is True


@pytest.mark.parametrize(("words", "args"), ENGINE_COMMANDS[:2])  # the commands with --insecure-registry
def test_engine_commands_render_the_insecure_registry_into_the_agents(words: list[str], args: list[str]) -> None:
    """The agents fetch and verify from the registry the engine resolved the image on: a plain-HTTP
    one must reach their config and the init container's fetch too (else TLS fails on the device)."""
    def rendered(*flags: str) -> tuple[dict[str, Any], list[str]]:
        options = _engine_settings(words, *args, "--allow-unsigned", *flags).render_options()
        objects = by_kind(render(RenderSettings(app="d", image=IMAGE, group=parse_group("c"),
                                                model_source="init-container", **options)))
        fetch = objects["DaemonSet"]["spec"]["template"]["spec"]["initContainers"][0]["command"]
        return dict(json.loads(objects["ConfigMap"]["data"]["config.json"])), fetch

    config, fetch = rendered()
    assert "registry_insecure" not in config and "--insecure" not in fetch
    config, fetch = rendered("--insecure-registry")
    assert config["registry_insecure"] is True and "--insecure" in fetch
