"""Agent settings: file < EDGEKIT_AGENT_* env < flags; every bad value is one line naming the field, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from edgekit_agent.errors import ConfigError
from edgekit_agent.settings import AgentSettings, load_settings

from tests.fixtures.agent import run_cli, write_config


def test_layers_file_env_flags(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json", {"device": "from-file", "group": "g1", "interval": 5,
                                                "broker-url": "mqtt://127.0.0.1:1883"})
    s = load_settings(config, env={"EDGEKIT_AGENT_GROUP": "g2", "EDGEKIT_AGENT_SPOOL_MAX_BYTES": "1024",
                                   "EDGEKIT_AGENT_EXECUTION_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"},
                      overrides={"device": "from-flag"})
    assert (s.device, s.group, s.interval, s.spool_max_bytes) == ("from-flag", "g2", 5.0, 1024)
    assert s.execution_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert (s.broker_host, s.broker_port, s.broker_tls) == ("127.0.0.1", 1883, False)


def test_device_defaults_to_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-7")
    assert AgentSettings().device == "node-7"


def test_chains_are_kept_in_the_spool_volume_unless_chain_dir_says_otherwise() -> None:
    from edgekit.kube.rendering import SPOOL_DIR

    # the rendered DaemonSet mounts a writable volume at the spool dir only: the default must be in it
    assert load_settings(env={}).kept_chains == f"{SPOOL_DIR}/chains"
    assert load_settings(env={"EDGEKIT_AGENT_SPOOL_DIR": "/data/spool"}).kept_chains == "/data/spool/chains"
    assert load_settings(env={"EDGEKIT_AGENT_CHAIN_DIR": "/data/chains"}).kept_chains == "/data/chains"
    assert load_settings(env={"EDGEKIT_AGENT_SPOOL_DIR": ""}).kept_chains is None


def test_mqtts_port_default_and_password_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    s = load_settings(overrides={"broker_url": "mqtts://broker.local", "mqtt_username": "dev-1",
                                 "mqtt_password_file": str(pw), "device": "d"})
    assert (s.broker_port, s.broker_tls, s.read_password()) == (8883, True, "s3cret")
    assert s.redacted()["mqtt_password"] is None


BAD = [
    ({"interval": -1}, "interval"),
    ({"interval": "often"}, "interval"),
    ({"probe_interval": 0}, "probe_interval"),
    ({"broker_url": "http://127.0.0.1:1883"}, "broker_url"),
    ({"broker_url": "mqtt://user:pw@127.0.0.1"}, "broker_url"),
    ({"mqtt_protocol": "4"}, "mqtt_protocol"),
    ({"device": "a/b"}, "device"),
    ({"group": "+"}, "group"),
    ({"listen_port": 70000}, "listen_port"),
    ({"spool_max_bytes": 0}, "spool_max_bytes"),
    ({"reconnect_min": 10, "reconnect_max": 1}, "reconnect_max"),
    ({"mqtt_password": "x"}, "mqtt_username"),
    ({"mqtt_cert_file": "/etc/hostname"}, "mqtt_key_file"),
    ({"broker_url": "mqtt://127.0.0.1", "mqtt_ca_file": "/etc/hostname"}, "broker_url"),
    ({"broker_url": "mqtt://broker.example", "mqtt_username": "u", "mqtt_password": "x"}, "broker_url"),
    ({"image": "registry.local/models/digits:1.0"}, "image"),
    ({"error_burst_ratio": 2}, "error_burst_ratio"),
    ({"log_level": "loud"}, "log_level"),
    ({"no_such_setting": 1}, "no_such_setting"),
    ({"mqtt_ca_file": "/nonexistent/ca.pem", "broker_url": "mqtts://127.0.0.1"}, "mqtt_ca_file"),
    ({"header_timeout_s": 0}, "header_timeout_s"),
    ({"body_timeout_s": -1}, "body_timeout_s"),
    ({"max_connections": 0}, "max_connections"),
    ({"max_json_depth": 0}, "max_json_depth"),
    ({"max_json_depth": 100_000}, "max_json_depth"),
    ({"api_token_file": "/nonexistent/token"}, "api_token_file"),
]


@pytest.mark.parametrize(("values", "field"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_check_config_names_the_bad_field(tmp_path: Path, values: dict[str, object], field: str) -> None:
    config = write_config(tmp_path / "c.json", {"device": "d1", **values})
    if field in ("mqtt_ca_file", "api_token_file"):
        with pytest.raises(ConfigError) as info:
            load_settings(config).check_files()
    else:
        with pytest.raises(ConfigError) as info:
            load_settings(config)
    assert info.value.exit_code == 2
    assert info.value.one_line().startswith(field), info.value.one_line()


def test_api_token_file(tmp_path: Path) -> None:
    assert AgentSettings(device="d1").read_api_token() is None
    (tmp_path / "token").write_text("s3cret\n")
    assert AgentSettings(device="d1", api_token_file=str(tmp_path / "token")).read_api_token() == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as info:
        AgentSettings(device="d1", api_token_file=str(tmp_path / "empty")).read_api_token()
    assert info.value.one_line().startswith("api_token_file") and "empty" in info.value.one_line()
    with pytest.raises(ConfigError):
        AgentSettings(device="d1", api_token_file=str(tmp_path / "empty")).check_files()


def test_check_config_cli(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.json", {"device": "d1", "group": "line-3"})
    result = run_cli("check-config", "--config", str(good), "--listen-port", "9000")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["device"], shown["group"], shown["listen_port"]) == ("d1", "line-3", 9000)

    bad = write_config(tmp_path / "bad.json", {"device": "d1", "interval": "soon"})
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit-agent: error: interval:"), result.stderr

    result = run_cli("check-config", "--config", str(good), env={"EDGEKIT_AGENT_MQTT_PROTOCOL": "7"})
    assert result.returncode == 2 and "mqtt_protocol" in result.stderr

    result = run_cli("check-config", "--config", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and result.stderr.startswith("edgekit-agent: error: config:")

    (tmp_path / "broken.json").write_text("{not json")
    result = run_cli("check-config", "--config", str(tmp_path / "broken.json"))
    assert result.returncode == 2 and "not valid JSON" in result.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.json", {"device": "d1", "broker_url": "ftp://x"})
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "broker_url" in result.stderr


def test_serve_on_a_busy_port_exits_30(tmp_path: Path, digits_folder: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path / "c.json", {"device": "d1", "model_dir": str(digits_folder),
                                                    "listen_port": port, "spool_dir": None})
        result = run_cli("serve", "--config", str(config))
    assert result.returncode == 30
    assert f"edgekit-agent: error: cannot listen on 127.0.0.1:{port}" in result.stderr
