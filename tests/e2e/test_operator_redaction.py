"""Every error path of the operator CLI (`run.py submit|status|halt|reduce|resume`) against a
broker refusing the login, an unreachable port and bad URLs: all output (stdout + stderr) is
grepped for the password, and each failure says what it is with its own exit code
(6 not authorized, 4 unreachable, 2 bad URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.mosquitto import MosquittoServer
from tests.fixtures.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SECRET = "Zq9-s3cret-Pw"   # what must never be printed
COMMANDS = [
    ["submit", "--agent", "demo", "--symbol", "AAPL", "--side", "BUY", "--qty", "1", "--limit", "100",
     "--tp", "105", "--sl", "98", "--timeout", "1"],
    ["status", "--timeout", "1"],
    ["halt", "--reason", "test", "--timeout", "1"],
    ["reduce", "--timeout", "1"],
    ["resume", "--timeout", "1"],
]


def _run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "DATA_DIR"))}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def _all_commands(env: dict[str, str], cwd: Path) -> list[tuple[list[str], int, str]]:
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda c: _run(c, env, cwd), COMMANDS))
    return [(cmd, rc, out) for cmd, (rc, out) in zip(COMMANDS, results, strict=True)]


def _check(results: list[tuple[list[str], int, str]], code: int, says: str) -> None:
    for cmd, rc, out in results:
        assert SECRET not in out, f"{cmd[0]} printed the password:\n{out}"
        assert "Zq9" not in out                              # not even a piece of it
        assert rc == code, f"{cmd[0]}: exit {rc}, wanted {code}:\n{out}"
        assert says in out, f"{cmd[0]}:\n{out}"
        error = json.loads(out.strip().splitlines()[-1])
        assert error["exit_code"] == code


@pytest.fixture
def refusing(mosquitto: MosquittoServer) -> MosquittoServer:
    mosquitto.add_user("operator", "the-right-one")
    mosquitto.restart()
    return mosquitto


def test_a_refused_login_says_not_authorized_and_never_prints_the_password(
        refusing: MosquittoServer, tmp_path: Path) -> None:
    url = f"mqtt://operator:{SECRET}@127.0.0.1:{refusing.port}"
    _check(_all_commands({"MQTT_URL": url}, tmp_path), 6, "not authorized")
    by_env = {"MQTT_URL": refusing.url, "MQTT_USERNAME": "operator", "MQTT_PASSWORD": SECRET}
    _check(_all_commands(by_env, tmp_path), 6, "not authorized")
    anonymous = {"MQTT_URL": refusing.url}
    _check(_all_commands(anonymous, tmp_path), 6, "not authorized")


def test_default_mode_login_from_the_credentials_file_is_redacted(refusing: MosquittoServer, tmp_path: Path) -> None:
    """No MQTT_URL: the endpoints file names the broker, the credentials file the operator login."""
    data = tmp_path / "data"
    (data / "default").mkdir(parents=True)
    (data / "endpoints.json").write_text(json.dumps({"mqtt_url": refusing.url}))
    creds = {r: {"username": r, "password": SECRET} for r in ("daemon", "operator", "demo")}
    (data / "default" / "mqtt-credentials.json").write_text(json.dumps(creds))
    _check(_all_commands({"DATA_DIR": str(data)}, tmp_path), 6, "not authorized")


def test_unreachable_says_unreachable_without_the_password(tmp_path: Path) -> None:
    url = f"mqtt://operator:{SECRET}@127.0.0.1:{free_port()}"
    _check(_all_commands({"MQTT_URL": url}, tmp_path), 4, "unreachable")
    tls = f"mqtts://operator:{SECRET}@127.0.0.1:{free_port()}"
    _check(_all_commands({"MQTT_URL": tls}, tmp_path), 4, "unreachable")


@pytest.mark.parametrize("url", [
    f"mqtt://operator:{SECRET}@127.0.0.1:notaport",
    f"http://operator:{SECRET}@127.0.0.1:1883",
    f"mqtt://operator:{SECRET}@:1883",
])
def test_a_bad_url_is_a_usage_error_without_the_password(url: str, tmp_path: Path) -> None:
    _check(_all_commands({"MQTT_URL": url}, tmp_path), 2, "bad MQTT_URL")
