"""One settings path for the MQTT operator commands: `run.py submit|status` read `.env` in the
cwd (MQTT_URL, MQTT_USERNAME/MQTT_PASSWORD) as the daemon does, the environment still winning."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_operator_redaction import COMMANDS, SECRET, _check, _run
from tests.fixtures.mosquitto import MosquittoServer
from tests.fixtures.ports import free_port


def test_env_file_names_the_broker(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / ".env").write_text(f"MQTT_URL=mqtt://127.0.0.1:{port}\n")
    for cmd in (COMMANDS[0], COMMANDS[1]):
        rc, out = _run(cmd, {}, tmp_path)
        assert rc == 4 and f"127.0.0.1:{port}" in out, out
    # the environment wins over .env
    other = free_port()
    rc, out = _run(COMMANDS[1], {"MQTT_URL": f"mqtt://127.0.0.1:{other}"}, tmp_path)
    assert rc == 4 and f"127.0.0.1:{other}" in out and f":{port}" not in out


def test_env_file_login_is_used_and_redacted(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    mosquitto.add_user("operator", "the-right-one")
    mosquitto.restart()
    (tmp_path / ".env").write_text(
        f"MQTT_URL={mosquitto.url}\nMQTT_USERNAME=operator\nMQTT_PASSWORD={SECRET}\n")
    results = [(c, *_run(c, {}, tmp_path)) for c in COMMANDS[:2]]
    _check(results, 6, "not authorized")
