"""The mosquitto test environment itself: plain, TLS, passwords, ACL, restart on the same port."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.rehearsal.mosquitto import MosquittoBroker, device_acl
from tests.fixtures.mqtt import MQTT_USERS, MqttRecorder

pytestmark = pytest.mark.mqtt


def _client(broker: MosquittoBroker, *, username: str | None = None, password: str | None = None,
            cert: str | None = None, protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
            ) -> tuple[mqtt.Client, dict[Any, Any]]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    if username:
        c.username_pw_set(username, password)
    if broker.tls:
        pair = broker.client_certs[cert] if cert else None
        c.tls_set(ca_certs=str(broker.ca_path), certfile=str(pair.cert) if pair else None,
                  keyfile=str(pair.key) if pair else None)
    result: dict[Any, Any] = {}
    connected = threading.Event()

    def on_connect(client: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        result["rc"] = rc
        connected.set()

    def on_publish(client: mqtt.Client, u: Any, mid: int, rc: Any, p: Any) -> None:
        result[mid] = rc

    c.on_connect = on_connect
    c.on_publish = on_publish
    c.connect(broker.host, broker.port)
    c.loop_start()
    connected.wait(10)
    return c, result


def _publish_rc(c: mqtt.Client, result: dict[Any, Any], topic: str) -> Any:
    info = c.publish(topic, b"{}", qos=1)
    info.wait_for_publish(10)
    return result[info.mid]


def test_plain_publish_subscribe_and_restart_on_same_port(
        mqtt_broker_factory: Callable[..., MosquittoBroker]) -> None:
    broker = mqtt_broker_factory()
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    port = broker.port
    c, _ = _client(broker)
    c.publish("t/retained", b"kept", qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()
    broker.stop()
    assert not broker.running
    broker.start()
    assert broker.port == port and broker.running
    # Persistence: the retained message survives the restart.
    with MqttRecorder(broker, "t/#") as rec:
        msgs = rec.wait_for(lambda m: len(m) >= 1)
    assert msgs[0].payload == b"kept" and msgs[0].retain


def test_tls_with_client_certificate(mqtt_broker_tls: MosquittoBroker) -> None:
    assert mqtt_broker_tls.url.startswith("mqtts://") and mqtt_broker_tls.ca_path is not None
    c, res = _client(mqtt_broker_tls, cert="dev-1")
    try:
        assert not res["rc"].is_failure
    finally:
        c.loop_stop()
        c.disconnect()


def test_password_and_acl(mqtt_broker_auth_acl: MosquittoBroker) -> None:
    bad, res = _client(mqtt_broker_auth_acl, username="dev-1", password="wrong")
    bad.loop_stop()
    assert res["rc"].is_failure and "authori" in str(res["rc"]).lower()

    c, res = _client(mqtt_broker_auth_acl, username="dev-1", password=MQTT_USERS["dev-1"])
    try:
        assert not res["rc"].is_failure
        assert not _publish_rc(c, res, "edgekit/v1/g/dev-1/health").is_failure
        denied = _publish_rc(c, res, "edgekit/v1/g/dev-2/health")
        assert denied.is_failure and denied.getName() == "Not authorized"
    finally:
        c.loop_stop()
        c.disconnect()


def test_client_cert_identity_as_username_with_acl(
        mqtt_broker_factory: Callable[..., MosquittoBroker]) -> None:
    broker = mqtt_broker_factory(tls=True, client_certs=["dev-9"], require_certificate=True,
                                 use_identity_as_username=True, acl=device_acl())
    c, res = _client(broker, cert="dev-9")
    try:
        assert not res["rc"].is_failure
        assert not _publish_rc(c, res, "edgekit/v1/g/dev-9/status").is_failure
        assert _publish_rc(c, res, "edgekit/v1/g/other/status").is_failure
        # a device cannot ask another one to run a bench
        assert _publish_rc(c, res, "edgekit/v1/g/other/bench/app/request").is_failure
    finally:
        c.loop_stop()
        c.disconnect()


def test_device_acl_text() -> None:
    acl = device_acl("root/v2", readers=("dash",), admins=())
    assert "pattern write root/v2/+/%u/#" in acl
    assert "user dash\ntopic read root/v2/#" in acl
    assert "user bench\ntopic read root/v2/#\ntopic write root/v2/+/+/bench/+/request" in acl
