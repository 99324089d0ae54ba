"""Settings: env and .env parsing, mode computation, the live guard, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bracketgate.bus.errors import ConfigError
from bracketgate.config.settings import Settings, describe_mode, load_settings

OWN_VARS = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No inherited variables, no stray .env: each test starts from nothing."""
    for name in OWN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_are_default_mode() -> None:
    s = load_settings()
    assert s.mode == "default"
    assert s.ib_host is None and s.ib_port is None and s.mqtt_url is None
    assert s.ib_client_id == 1 and s.ib_live is False
    assert s.ib_max_market_data_lines == 90   # of IB's default 100 lines: room for other tools
    assert s.mqtt_client_id == "bracketgate" and s.mqtt_prefix == "bracketgate"
    assert s.mqtt_max_payload == 16 * 1024
    assert s.portfolio_publish_interval == 0.5
    assert s.risk_limits_file == Path(__file__).resolve().parents[2] / "config" / "limits.default.toml"
    assert s.journal_path == Path("data/default/journal.sqlite")
    s.validate_live_guard()
    assert describe_mode(s) == "MODE=DEFAULT ib=embedded-paper-tws mqtt=embedded prefix=bracketgate"


def test_env_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IB_HOST", "10.0.0.5")
    monkeypatch.setenv("IB_PORT", "7497")
    monkeypatch.setenv("IB_CLIENT_ID", "7")
    monkeypatch.setenv("IB_CONNECT_TIMEOUT", "2.5")
    monkeypatch.setenv("IB_MAX_MARKET_DATA_LINES", "40")
    monkeypatch.setenv("MQTT_URL", "mqtt://broker.lan:1884")
    monkeypatch.setenv("MQTT_USERNAME", "gate")
    monkeypatch.setenv("MQTT_PASSWORD", "s3cret")
    monkeypatch.setenv("MQTT_PREFIX", "desk1")
    monkeypatch.setenv("MQTT_TLS_INSECURE", "true")
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    s = load_settings()
    assert (s.ib_host, s.ib_port, s.ib_client_id, s.ib_connect_timeout) == ("10.0.0.5", 7497, 7, 2.5)
    assert s.ib_max_market_data_lines == 40
    assert (s.mqtt_host, s.mqtt_port, s.mqtt_prefix) == ("broker.lan", 1884, "desk1")
    assert s.mqtt_password is not None and s.mqtt_password.get_secret_value() == "s3cret"
    assert s.mqtt_tls and s.mqtt_tls_insecure
    assert (s.log_format, s.log_level) == ("json", "DEBUG")
    assert s.mode == "paper"
    assert "s3cret" not in repr(s)


def test_dotenv_file_and_env_precedence(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "# a comment\nIB_HOST=127.0.0.1\nIB_PORT=4002\nMQTT_PREFIX=fromfile\n"
        "UNRELATED_TOOL_VAR=ignored\n")
    s = load_settings()
    assert (s.ib_host, s.ib_port, s.mqtt_prefix) == ("127.0.0.1", 4002, "fromfile")
    monkeypatch.setenv("MQTT_PREFIX", "fromenv")
    assert load_settings().mqtt_prefix == "fromenv"  # the environment wins over .env


def test_dotenv_typo_in_own_variable_is_an_error(clean_env: Path) -> None:
    (clean_env / ".env").write_text("MQTT_PREFX=oops\n")
    with pytest.raises(ConfigError, match="MQTT_PREFX"):
        load_settings()


def test_explicit_env_file(clean_env: Path) -> None:
    other = clean_env / "other.env"
    other.write_text("IB_CLIENT_ID=42\n")
    assert load_settings(_env_file=other).ib_client_id == 42


def test_unknown_init_kwargs_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(ib_hots="x")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="IB_HOTS"):
        load_settings(ib_hots="x")


def test_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.ib_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "default"),
        ({"MQTT_URL": "mqtt://127.0.0.1:1883"}, "paper"),
        ({"IB_HOST": "127.0.0.1"}, "paper"),
        ({"IB_HOST": "127.0.0.1", "IB_PORT": "7497"}, "paper"),
        ({"IB_HOST": "127.0.0.1", "IB_PORT": "4001"}, "live"),
        ({"IB_HOST": "127.0.0.1", "IB_PORT": "7496"}, "live"),
        ({"IB_HOST": "127.0.0.1", "IB_PORT": "4002", "IB_LIVE": "true"}, "live"),
    ],
)
def test_mode(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mode: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert load_settings().mode == mode


def test_ib_port_defaults_to_paper_gateway_with_a_host() -> None:
    assert load_settings(ib_host="gw").ib_port == 4002


@pytest.mark.parametrize("port", [4001, 7496])
def test_live_guard(port: int) -> None:
    s = load_settings(ib_host="127.0.0.1", ib_port=port)
    with pytest.raises(ConfigError, match="IB_LIVE") as ei:
        s.validate_live_guard()
    assert ei.value.code == "LIVE_GUARD"
    load_settings(ib_host="127.0.0.1", ib_port=port, ib_live=True).validate_live_guard()


def test_live_flag_needs_a_real_gateway() -> None:
    with pytest.raises(ConfigError, match="IB_HOST"):
        load_settings(ib_live=True, mqtt_url="mqtt://127.0.0.1").validate_live_guard()


def test_url_credentials_are_split_out_and_never_described() -> None:
    s = load_settings(mqtt_url="mqtts://gate:p%40ss@broker.example", ib_host="127.0.0.1")
    assert s.mqtt_url == "mqtts://broker.example:8883"
    assert s.mqtt_username == "gate"
    assert s.mqtt_password is not None and s.mqtt_password.get_secret_value() == "p@ss"
    assert s.mqtt_tls
    line = describe_mode(s)
    assert line == ("MODE=PAPER ib=127.0.0.1:4002 mqtt=mqtts://broker.example:8883 user=gate tls "
                    "prefix=bracketgate")
    assert "p@ss" not in line and "p%40ss" not in line


def test_live_mode_line_is_loud() -> None:
    s = load_settings(ib_host="gw", ib_port=4001, ib_live=True, mqtt_url="mqtt://127.0.0.1")
    assert describe_mode(s).startswith("!!! LIVE TRADING")
    assert "MODE=LIVE" in describe_mode(s)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mqtt_url": "http://broker"},
        {"mqtt_url": "mqtt://"},
        {"mqtt_url": "mqtt://u:a@h", "mqtt_password": "b", "mqtt_username": "u"},
        {"mqtt_prefix": "a/#"},
        {"mqtt_prefix": "a/"},
        {"mqtt_client_id": "a b"},
        {"log_level": "LOUD"},
        {"log_format": "xml"},
        {"ib_port": 70000},
        {"mqtt_cert_file": "c.pem"},
        {"mqtt_password": "x"},
        {"ib_max_market_data_lines": 0},
    ],
)
def test_invalid_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_settings(**kwargs)


def test_env_example_documents_every_variable() -> None:
    example = (Path(__file__).resolve().parents[2] / "config" / ".env.example").read_text()
    missing = [name for name in OWN_VARS if f"{name}=" not in example]
    assert missing == []
