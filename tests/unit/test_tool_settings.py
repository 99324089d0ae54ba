"""One settings path: IBKR_* aliases of IB_*, conflicts, and where the operator tools connect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bracketgate.bus.errors import ConfigError
from bracketgate.config.settings import IB_ALIASES, Settings, load_settings, tool_connection

SCRUB = [n.upper() for n in Settings.model_fields] + [a.upper() for a in IB_ALIASES.values()] + [
    "TOOLS_CLIENT_ID", "DATA_DIR"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_aliases_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IBKR_HOST", "10.0.0.9")
    monkeypatch.setenv("IBKR_PORT", "7497")
    monkeypatch.setenv("IBKR_CLIENT_ID", "9001")
    s = load_settings()
    assert (s.ib_host, s.ib_port, s.ib_client_id, s.mode) == ("10.0.0.9", 7497, 9001, "paper")


def test_aliases_from_dotenv_and_equal_values_agree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IBKR_HOST=gw.lan\nIBKR_PORT=4002\nIB_PORT=4002\nOTHER_TOOL=x\n")
    s = load_settings()
    assert (s.ib_host, s.ib_port) == ("gw.lan", 4002)


@pytest.mark.parametrize("dotenv,env", [
    ("IB_PORT=4002\nIBKR_PORT=7497\n", {}),
    ("IB_PORT=4002\n", {"IBKR_PORT": "7497"}),
    ("", {"IB_CLIENT_ID": "1", "IBKR_CLIENT_ID": "9001"}),
    ("IBKR_HOST=a\n", {"IB_HOST": "b"}),
])
def test_alias_conflict_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          dotenv: str, env: dict[str, str]) -> None:
    (tmp_path / ".env").write_text(dotenv)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match="disagree") as e:
        load_settings()
    assert e.value.code == "ALIAS_CONFLICT" and "\n" not in str(e.value)


def test_explicit_env_file_is_the_one_read(tmp_path: Path) -> None:
    (tmp_path / "other.env").write_text("IBKR_PORT=7497\nIBKR_HOST=h\n")
    (tmp_path / ".env").write_text("IB_PORT=4002\n")      # not read: another file was named
    s = load_settings(_env_file=str(tmp_path / "other.env"))
    assert (s.ib_host, s.ib_port) == ("h", 7497)


def test_tool_connection_defaults_and_endpoints_file(tmp_path: Path) -> None:
    conn = tool_connection(load_settings())
    assert (conn["host"], conn["port"], conn["client_id"], conn["endpoint_from"]) == (
        "127.0.0.1", 4002, 9001, "default")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "endpoints.json").write_text(json.dumps({"ib_host": "127.0.0.1", "ib_port": 40123}))
    conn = tool_connection(load_settings())
    assert conn["port"] == 40123 and conn["endpoint_from"].endswith("endpoints.json")


def test_tool_client_id_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IB_HOST=gw\nIB_CLIENT_ID=1\n")    # the daemon's id
    s = load_settings()
    assert tool_connection(s)["client_id"] == 9001                  # not taken from .env
    monkeypatch.setenv("IBKR_CLIENT_ID", "1")                         # same value: no conflict
    assert tool_connection(load_settings())["client_id"] == 1
    monkeypatch.setenv("TOOLS_CLIENT_ID", "77")
    assert tool_connection(load_settings())["client_id_from"] == "TOOLS_CLIENT_ID"
    conn = tool_connection(load_settings(), client_id=5)
    assert (conn["client_id"], conn["client_id_from"]) == (5, "--client-id")
    monkeypatch.setenv("TOOLS_CLIENT_ID", "many")
    with pytest.raises(ConfigError, match="TOOLS_CLIENT_ID"):
        tool_connection(load_settings())
