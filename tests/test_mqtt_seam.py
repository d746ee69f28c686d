"""The one MQTT seam (edgekit_agent.mqtt): shared settings and their former fleet names, the error
family and reason codes, client set-up, backoff, and the guard around paho's private methods."""

from __future__ import annotations

import dataclasses
import inspect
import json
import random
import re
import tomllib
from pathlib import Path

import paho.mqtt as paho_mqtt
import paho.mqtt.client as paho
import pytest
from edgekit_agent.errors import (
    BrokerAuthError,
    BrokerError,
    BrokerProtocolError,
    ConfigError,
    EdgekitError,
    TelemetryAuthError,
    TelemetryError,
    TelemetryTLSError,
    TemporaryError,
)
from edgekit_agent.mqtt import Backoff, MqttSettings, connack_error, connect_error
from edgekit_agent.mqtt.connecting import falls_back, new_client
from edgekit_agent.mqtt.readahead import PAHO_RANGE, PahoVersionError, ReadAheadClient, check_paho
from edgekit_agent.mqtt.will import Will
from edgekit_agent.settings import AgentSettings, load_settings
from paho.mqtt.enums import MQTTProtocolVersion

import edgekit.errors
from edgekit.fleet.settings import RENAMED, FleetSettings, load_fleet_settings

ROOT = Path(__file__).resolve().parents[1]
V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311


# --- one set of setting names ------------------------------------------------------------------
def test_agent_and_fleet_share_the_mqtt_setting_names() -> None:
    shared = {f.name for f in dataclasses.fields(MqttSettings)}
    for cls in (AgentSettings, FleetSettings):
        assert shared <= {f.name for f in dataclasses.fields(cls)}
    assert set(RENAMED.values()) <= shared


def test_former_fleet_names_are_read_with_a_deprecation_warning(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = tmp_path / "fleet.json"
    config.write_text(json.dumps({"brokers": ["mqtts://b:8883"], "ca_file": str(ca), "keepalive": 20}))
    with pytest.warns(DeprecationWarning) as caught:
        s = load_fleet_settings(config, env={"EDGEKIT_FLEET_USERNAME": "fleet", "EDGEKIT_FLEET_PASSWORD": "pw"},
                                overrides={"cert_file": str(ca), "key_file": str(ca)})
    assert sorted(str(w.message) for w in caught) == [
        "setting EDGEKIT_FLEET_PASSWORD in the environment is deprecated: use EDGEKIT_FLEET_MQTT_PASSWORD",
        "setting EDGEKIT_FLEET_USERNAME in the environment is deprecated: use EDGEKIT_FLEET_MQTT_USERNAME",
        f"setting ca_file in {config} is deprecated: use mqtt_ca_file",
        "setting cert_file is deprecated: use mqtt_cert_file",
        f"setting keepalive in {config} is deprecated: use mqtt_keepalive",
        "setting key_file is deprecated: use mqtt_key_file",
    ]
    assert all(w.filename == __file__ for w in caught)      # points at the caller
    assert (s.mqtt_ca_file, s.mqtt_keepalive, s.mqtt_username, s.read_password()) == (str(ca), 20, "fleet", "pw")
    assert (s.mqtt_cert_file, s.mqtt_key_file) == (str(ca), str(ca))
    with pytest.warns(DeprecationWarning, match="EDGEKIT_FLEET_USERNAME in the environment is deprecated: "
                                                "use EDGEKIT_FLEET_MQTT_USERNAME"):
        s = load_fleet_settings(env={"EDGEKIT_FLEET_USERNAME": "old", "EDGEKIT_FLEET_MQTT_USERNAME": "new"})
    assert s.mqtt_username == "new"          # the current name wins within a layer


def test_current_fleet_names_raise_no_warning(recwarn: pytest.WarningsRecorder) -> None:
    s = load_fleet_settings(env={"EDGEKIT_FLEET_MQTT_USERNAME": "fleet", "EDGEKIT_FLEET_MQTT_KEEPALIVE": "15"})
    assert (s.mqtt_username, s.mqtt_keepalive) == ("fleet", 15)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("load", ["agent", "fleet"])
def test_a_password_over_plain_mqtt_off_loopback_is_refused(load: str, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw")

    def settings(url: str, env: dict[str, str] | None = None, **more: object) -> object:
        login = {"mqtt_username": "u", "mqtt_password_file": str(secret), **more}
        if load == "agent":
            return load_settings(env=env or {}, overrides={"broker_url": url, "device": "d", **login})
        return load_fleet_settings(env=env or {}, overrides={"brokers": [url], **login})

    field = "broker_url" if load == "agent" else "brokers"
    with pytest.raises(ConfigError, match="clear text") as err:
        settings("mqtt://broker.example:1883")
    assert err.value.field == field and err.value.exit_code == 2 and "mqtts://" in (err.value.hint or "")
    for url in ("mqtt://127.0.0.1:1883", "mqtt://localhost", "mqtt://[::1]:1883", "mqtts://broker.example"):
        settings(url)                                                   # loopback or TLS: fine
    settings("mqtt://broker.example", mqtt_allow_plaintext_password=True)  # said so explicitly
    prefix = "EDGEKIT_AGENT_" if load == "agent" else "EDGEKIT_FLEET_"
    settings("mqtt://broker.example", env={f"{prefix}MQTT_ALLOW_PLAINTEXT_PASSWORD": "true"})
    if load == "fleet":  # no password, no problem
        load_fleet_settings(env={}, overrides={"brokers": ["mqtt://broker.example"], "mqtt_username": "u"})


def test_fleet_cli_refuses_a_plaintext_password_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgekit.cli import cli

    secret = tmp_path / "pw"
    secret.write_text("pw")
    result = CliRunner().invoke(cli, ["fleet", "status", "--broker", "mqtt://broker.example:1883", "--username", "u",
                                      "--password-file", str(secret)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("edgekit: error: brokers: mqtt://broker.example:1883 is plain MQTT")
    assert "Traceback" not in result.stderr


# --- one error family ----------------------------------------------------------------------------
def test_broker_errors_are_one_family_rooted_in_the_agent() -> None:
    assert edgekit.errors.BrokerUnreachableError is BrokerError is edgekit.errors.BrokerError
    assert BrokerAuthError is TelemetryAuthError is edgekit.errors.TelemetryAuthError
    assert issubclass(BrokerError, TelemetryError) and issubclass(BrokerError, TemporaryError)
    assert not issubclass(TelemetryAuthError, TemporaryError)
    assert issubclass(edgekit.errors.NoTelemetryError, TelemetryError)
    err = BrokerError("down", reason_code=136, hint="later")
    assert (err.exit_code, err.reason_code, err.one_line()) == (51, 136, "down (later)")
    assert isinstance(err, EdgekitError) and err.retry_after is None


@pytest.mark.parametrize(("code", "kind", "exit_code"), [
    (134, TelemetryAuthError, 52), (135, TelemetryAuthError, 52), (140, TelemetryAuthError, 52),
    (132, BrokerProtocolError, 55), (136, BrokerError, 51), (137, BrokerError, 51),
])
def test_connack_codes_map_to_the_family_and_keep_the_code(code: int, kind: type, exit_code: int) -> None:
    err = connack_error(code, "mqtt://b:1883", auth_hint="check the login")
    assert type(err) is kind and err.reason_code == code and err.exit_code == exit_code
    assert err.message.startswith("mqtt://b:1883 refused")


def test_socket_errors_map_to_unreachable_or_tls() -> None:
    import ssl

    assert type(connect_error(ConnectionRefusedError(111, "Connection refused"), "mqtt://b")) is BrokerError
    tls = connect_error(ssl.SSLCertVerificationError("certificate verify failed"), "mqtts://b", tls_hint="ca")
    assert type(tls) is TelemetryTLSError and tls.hint == "ca" and "certificate" in tls.message


@pytest.mark.parametrize(("setting", "protocol", "reason", "dropped", "expected"), [
    ("auto", V5, 132, False, True), ("auto", V5, None, True, True), ("auto", V5, 135, False, False),
    ("5", V5, 132, False, False), ("auto", V311, 132, False, False), ("3.1.1", V311, None, True, False),
])
def test_falls_back_to_311_only_on_auto_after_a_v5_refusal(setting: str, protocol: MQTTProtocolVersion,
                                                           reason: int | None, dropped: bool,
                                                           expected: bool) -> None:
    assert falls_back(setting, protocol, reason, dropped_before_connack=dropped) is expected


# --- client set-up and backoff --------------------------------------------------------------------
def test_new_client_sets_will_and_login_and_translates_bad_tls_files(tmp_path: Path) -> None:
    s = MqttSettings(mqtt_username="dev-1")
    will = Will("edgekit/v1/g/dev-1/status", b'{"state":"offline"}')
    client = new_client(s, client_id="c1", protocol=V5, tls=False, password="pw", will=will)
    assert client._username == b"dev-1" and client._will_topic == will.topic.encode()
    assert will.properties(V5) is not None and will.properties(V311) is None
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(TelemetryTLSError) as err:
        new_client(MqttSettings(mqtt_ca_file=str(bad)), client_id="c2", protocol=V5, tls=True, password=None,
                   tls_hint="check --ca-file")
    assert err.value.exit_code == 53 and err.value.hint == "check --ca-file"


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(1))
    delays = [backoff.next() for _ in range(8)]
    bases = [min(8.0, 0.5 * 2**n) for n in range(8)]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bases, strict=True))
    assert len({round(d, 6) for d in delays[5:]}) > 1       # capped, but still jittered
    backoff.reset()
    assert backoff.next() <= 0.5


# --- the guard around paho's private methods -------------------------------------------------------
def test_installed_paho_is_in_the_range_the_overrides_were_tested_on() -> None:
    check_paho()
    (lo_major, lo_minor), (hi_major, hi_minor) = PAHO_RANGE
    pin = f"paho-mqtt>={lo_major}.{lo_minor},<{hi_major}.{hi_minor}"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pin in deps, f"pyproject.toml must pin {pin} (readahead.PAHO_RANGE), found {deps}"


def test_paho_outside_the_range_is_refused_with_a_clear_error() -> None:
    for version in ("3.0.0", "2.3.0", "1.6.1", "garbage"):
        with pytest.raises(PahoVersionError, match=re.escape(f"found paho-mqtt {version}")):
            check_paho(version)


def test_the_private_paho_methods_we_override_still_look_the_same() -> None:
    """If this fails after a paho upgrade, re-read readahead.py against the new paho before
    widening PAHO_RANGE."""
    expected = {
        "_create_socket": ["self"],
        "_handle_publish": ["self"],
        "_packet_queue": ["self", "command", "packet", "mid", "qos", "info"],
        "loop_read": ["self", "max_packets"],
    }
    for name, params in expected.items():
        method = getattr(paho.Client, name, None)
        assert method is not None, f"paho-mqtt {paho_mqtt.__version__} has no Client.{name}"
        assert list(inspect.signature(method).parameters) == params, (name, paho_mqtt.__version__)
    client = ReadAheadClient(paho.CallbackAPIVersion.VERSION2, protocol=V5)
    assert {"command", "packet"} <= set(client._in_packet)
    assert client._protocol == V5 and hasattr(client, "_sock")
