"""The broker-side setup of docs/OPERATIONS.md on real mosquitto: logins (mosquitto_passwd), the
shipped ACL (config/mosquitto/acl) and a TLS listener with a CA made here by the shipped
config/mosquitto/make-ca.sh (openssl). The daemon trades through it; the ACL holds: an agent's
proposal on another agent's topic and a non-operator's control are never delivered, and an
agent reads only its own decisions."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest

from tests.fixtures.daemon import DaemonProcess, MqttProbe
from tests.fixtures.mosquitto import MosquittoServer

REPO = Path(__file__).resolve().parents[2]
ACL = REPO / "config" / "mosquitto" / "acl"
MAKE_CA = REPO / "config" / "mosquitto" / "make-ca.sh"
LOGINS = {"bracketgate": "daemon-pw-1", "operator": "operator-pw-2", "alpha": "alpha-pw-3",
          "beta": "beta-pw-4"}

pytestmark = [pytest.mark.e2e]


def proposal(pid: str) -> dict[str, Any]:
    return {"proposal_id": pid, "symbol": "AAPL", "side": "BUY", "quantity": 1, "order_type": "LMT",
            "limit_price": 200.0, "take_profit": 210.0, "stop_loss": 196.0}


class LoginProbe(MqttProbe):
    """MqttProbe with a login (and TLS), subscribed only to `topics` (under the prefix)."""

    def __init__(self, url: str, prefix: str, user: str, *, topics: list[str], ca: Path | None = None) -> None:
        super().__init__(url, prefix)
        u = urlsplit(url)
        self.topics = topics
        tls = aiomqtt.TLSParameters(ca_certs=str(ca)) if ca else None
        self.client = aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883, username=user,
                                     password=LOGINS[user], identifier=f"{user}-{uuid.uuid4().hex[:6]}",
                                     tls_params=tls, timeout=5)
        self.granted: dict[str, Any] = {}

    async def __aenter__(self) -> LoginProbe:
        await self.client.__aenter__()
        for topic in self.topics:
            self.granted[topic] = await self.client.subscribe(f"{self.prefix}/{topic}", qos=1)
        self._task = asyncio.create_task(self._read())
        return self


def _secured(mosquitto: MosquittoServer, prefix: str) -> None:
    for user, password in LOGINS.items():
        mosquitto.add_user(user, password)
    mosquitto.add_acl(ACL.read_text().replace("bracketgate/", f"{prefix}/"))


def _url(user: str, host: str, port: int, scheme: str = "mqtt") -> str:
    return f"{scheme}://{user}:{LOGINS[user]}@{host}:{port}"


async def test_the_acl_holds_with_the_daemon_trading(mosquitto: MosquittoServer, paper_tws_process: Any,
                                                      tmp_path: Path) -> None:
    prefix = f"bgacl{uuid.uuid4().hex[:6]}"
    _secured(mosquitto, prefix)
    mosquitto.restart()
    tws = paper_tws_process
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, prefix=prefix, tmp=tmp_path,
                                  mqtt_url=_url("bracketgate", mosquitto.host, mosquitto.port))
    try:
        mine = ["decisions/alpha", "orders/alpha", "decisions/beta", "events", "status"]
        async with LoginProbe(mosquitto.url, prefix, "alpha", topics=mine) as alpha, \
                LoginProbe(mosquitto.url, prefix, "beta", topics=["decisions/beta"]) as beta:
            await alpha.propose("alpha", proposal("acl-own-1"))
            assert (await alpha.decision("alpha", "acl-own-1"))["verdict"] == "approved"

            # alpha forges beta's identity: mosquitto drops it, the daemon never sees it
            await alpha.propose("beta", proposal("acl-forged-1"))
            # alpha tries to halt: not the operator, dropped
            await alpha.publish("control", {"action": "halt", "reason": "not mine to say"})
            # a barrier: alpha's next own proposal is decided after both were (not) delivered
            await alpha.propose("alpha", proposal("acl-own-2"))
            assert (await alpha.decision("alpha", "acl-own-2"))["verdict"] == "approved"
            assert not [e for e in d.logs if e.get("proposal_id") == "acl-forged-1"]
            assert not beta.on("decisions/beta")
            assert not [e for e in alpha.on("events") if isinstance(e, dict) and e.get("new") == "HALTED"]

            # beta's own proposal is decided, and alpha does not read beta's decisions
            await beta.propose("beta", proposal("acl-beta-1"))
            assert (await beta.decision("beta", "acl-beta-1"))["verdict"] == "approved"

            # the operator may halt (through the CLI, with its login)
            env = {**os.environ, "MQTT_URL": _url("operator", mosquitto.host, mosquitto.port),
                   "MQTT_PREFIX": prefix}
            halted = subprocess.run([sys.executable, str(REPO / "run.py"), "halt", "--reason", "op"],
                                    env=env, capture_output=True, text=True, timeout=30)
            assert halted.returncode == 0, halted.stdout + halted.stderr
            await alpha.wait_topic("events", lambda e: isinstance(e, dict) and e.get("new") == "HALTED")
            assert not alpha.on("decisions/beta")            # subscribed, never delivered
            assert LOGINS["operator"] not in halted.stdout + halted.stderr
        controls = [e for e in d.logs if "control" in str(e.get("event"))]
        assert all(e.get("by") != "alpha" for e in controls)
    finally:
        assert await d.terminate() == 0


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    out = tmp_path / "ca"
    subprocess.run(["bash", str(MAKE_CA), str(out), "localhost", "127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    return out


async def test_tls_with_a_ca_made_here(mosquitto: MosquittoServer, paper_tws_process: Any,
                                       tmp_path: Path, ca: Path) -> None:
    prefix = f"bgtls{uuid.uuid4().hex[:6]}"
    _secured(mosquitto, prefix)
    port = mosquitto.add_tls_listener(ca / "server.crt", ca / "server.key", ca / "ca.crt")
    mosquitto.restart()
    tws = paper_tws_process
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, prefix=prefix, tmp=tmp_path,
                                  mqtt_url=_url("bracketgate", "127.0.0.1", port, "mqtts"),
                                  extra_env={"MQTT_CA_FILE": str(ca / "ca.crt")})
    try:
        tls_url = f"mqtts://127.0.0.1:{port}"
        async with LoginProbe(tls_url, prefix, "alpha", topics=["decisions/alpha"], ca=ca / "ca.crt") as alpha:
            await alpha.propose("alpha", proposal("tls-1"))
            assert (await alpha.decision("alpha", "tls-1"))["verdict"] == "approved"
        assert any(e.get("event") == "mqtt_connected" for e in d.logs)

        # the operator CLI over TLS with the same CA file
        env = {**os.environ, "MQTT_URL": _url("operator", "127.0.0.1", port, "mqtts"),
               "MQTT_CA_FILE": str(ca / "ca.crt"), "MQTT_PREFIX": prefix}
        st = subprocess.run([sys.executable, str(REPO / "run.py"), "status", "--json"], env=env,
                            capture_output=True, text=True, timeout=30)
        assert st.returncode == 0, st.stdout + st.stderr
        assert json.loads(st.stdout)["status"]["state"] == "online"

        # without the CA the server is not trusted: no connection, and no password printed
        env.pop("MQTT_CA_FILE")
        bad = subprocess.run([sys.executable, str(REPO / "run.py"), "status", "--json"], env=env,
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 4 and LOGINS["operator"] not in bad.stdout + bad.stderr
        assert "certificate" in bad.stderr.lower() or "ssl" in bad.stderr.lower(), bad.stderr
    finally:
        assert await d.terminate() == 0


async def test_a_daemon_whose_login_is_refused_says_not_authorized(
        mosquitto: MosquittoServer, paper_tws_process: Any, tmp_path: Path) -> None:
    """Not "unreachable": the broker answered and refused the login. One line, exit 4, and the
    password appears nowhere in what the daemon printed."""
    prefix = f"bgauth{uuid.uuid4().hex[:6]}"
    _secured(mosquitto, prefix)
    mosquitto.restart()
    tws = paper_tws_process
    wrong = "wrong-password-31337"
    d = await DaemonProcess.spawn(ib_host=tws.host, ib_port=tws.port, prefix=prefix, tmp=tmp_path,
                                  mqtt_url=f"mqtt://bracketgate:{wrong}@{mosquitto.host}:"
                                           f"{mosquitto.port}", wait_ready=False,
                                  extra_env={"IB_CONNECT_TIMEOUT": "2"})
    try:
        rc = await d.wait_exit(timeout=30)
    finally:
        await d.kill()
    out = "\n".join(d.raw)
    assert rc == 4, out[-2000:]
    assert "refused the login: not authorized" in out
    assert "unreachable" not in [ln for ln in d.raw if ln.startswith("bracketgate:")][0]
    assert wrong not in out
