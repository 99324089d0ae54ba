"""Default mode (nothing configured): the embedded broker is not open. The daemon writes its
owner-only credentials file; the operator CLI finds it; anonymous clients and wrong passwords are
refused; the README's mosquitto_pub example (login read with jq) gets its decision."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.daemon import DaemonProcess

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e]


async def _default_daemon(tmp: Path) -> DaemonProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "MQTT_"))}
    env.update({"PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json", "DATA_DIR": str(tmp / "data")})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "run.py"), cwd=str(tmp), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    d = DaemonProcess(proc, "bracketgate", env)
    await d.wait_log(lambda e: e.get("event") == "ready", timeout=30)
    return d


def _cli(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "MQTT_"))}
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=tmp, capture_output=True,
                          text=True, timeout=60, env={**base, "DATA_DIR": str(tmp / "data"), **env})


async def test_default_mode_broker_needs_the_generated_logins(tmp_path: Path) -> None:
    d = await _default_daemon(tmp_path)
    try:
        creds_path = tmp_path / "data" / "default" / "mqtt-credentials.json"
        assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
        creds = json.loads(creds_path.read_text())
        endpoints = json.loads((tmp_path / "data" / "endpoints.json").read_text())
        assert "@" not in endpoints["mqtt_url"]                  # no secret in the endpoints file
        port = endpoints["mqtt_url"].rsplit(":", 1)[1]
        everything = "\n".join(d.raw)
        assert all(c["password"] not in everything for c in creds.values())   # nor in the logs

        st = await asyncio.to_thread(_cli, tmp_path, "status", "--json")
        assert st.returncode == 0, st.stdout + st.stderr
        assert json.loads(st.stdout)["status"]["state"] == "online"

        url = f"mqtt://127.0.0.1:{port}"
        anonymous = await asyncio.to_thread(_cli, tmp_path, "status", MQTT_URL=url)
        assert anonymous.returncode == 6 and "not authorized" in anonymous.stderr
        wrong = await asyncio.to_thread(_cli, tmp_path, "halt", MQTT_URL=url, MQTT_USERNAME="operator",
                                        MQTT_PASSWORD="guessed")
        assert wrong.returncode == 6 and "guessed" not in wrong.stdout + wrong.stderr

        if shutil.which("mosquitto_pub") and shutil.which("jq"):   # the README's example, verbatim
            sub = await asyncio.create_subprocess_shell(
                f'mosquitto_sub -h 127.0.0.1 -p {port} -R -C 1 -W 20 -t "bracketgate/decisions/demo"'
                ' -u "$(jq -r .demo.username data/default/mqtt-credentials.json)"'
                ' -P "$(jq -r .demo.password data/default/mqtt-credentials.json)"',
                cwd=tmp_path, stdout=asyncio.subprocess.PIPE)
            await asyncio.sleep(1.0)   # subscribed before the proposal goes out
            pub = await asyncio.create_subprocess_shell(
                f'mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t bracketgate/proposals/demo'
                ' -u "$(jq -r .demo.username data/default/mqtt-credentials.json)"'
                ' -P "$(jq -r .demo.password data/default/mqtt-credentials.json)"'
                ' -m \'{"proposal_id": "readme-0001", "symbol": "AAPL", "side": "BUY", "quantity": 1,'
                ' "order_type": "MKT", "take_profit": 260.0, "stop_loss": 200.0}\'', cwd=tmp_path)
            assert await pub.wait() == 0
            out, _ = await asyncio.wait_for(sub.communicate(), 25)
            assert json.loads(out)["proposal_id"] == "readme-0001"
            refused = await asyncio.create_subprocess_shell(
                f"mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t bracketgate/proposals/demo -m x",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            text, _ = await refused.communicate()
            assert refused.returncode != 0 and b"not authori" in text.lower(), text
    finally:
        assert await d.terminate() == 0
