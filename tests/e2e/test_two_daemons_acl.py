"""The per-account mosquitto ACL of docs/DEPLOY.md ("Two accounts, one broker"), taken from the
doc itself, on real mosquitto with both daemons trading under their own logins: each daemon
works within its prefix; an agent of account A is decided on A and can reach nothing of B; the
operator of A halts A and cannot halt B."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
import aiomqtt
import pytest

from tests.fixtures.daemon import MqttProbe, run_cli
from tests.fixtures.mosquitto import MosquittoServer
from tests.fixtures.two_daemons import TwoAccounts

pytestmark = [pytest.mark.e2e, pytest.mark.mosquitto]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "docs" / "DEPLOY.md"
PASSWORDS = {u: f"{u}-pw" for u in ("bracketgate-a", "bracketgate-b", "alpha", "beta",
                                     "operator-a", "operator-b")}


def deploy_acl() -> str:
    """The ACL block of DEPLOY.md for account A, and its copy for account B."""
    blocks = re.findall(r"```\n(# account A.*?)```", DEPLOY.read_text(), re.S)
    assert len(blocks) == 1, "DEPLOY.md: the per-account ACL block moved"
    a = blocks[0]
    b = (a.replace("acct-a", "acct-b").replace("bracketgate-a", "bracketgate-b")
         .replace("alpha", "beta").replace("operator-a", "operator-b"))
    return a + "\n" + b


def url(mosquitto: MosquittoServer, user: str) -> str:
    return f"mqtt://{user}:{PASSWORDS[user]}@{mosquitto.host}:{mosquitto.port}"


class Login(MqttProbe):
    """An MQTT client with a login, subscribed to exactly `topics` (full names)."""

    def __init__(self, mosquitto: MosquittoServer, user: str, topics: list[str]) -> None:
        super().__init__(mosquitto.url, prefix="")
        self.topics = topics
        self.client = aiomqtt.Client(mosquitto.host, mosquitto.port, username=user,
                                     password=PASSWORDS[user],
                                     identifier=f"{user}-{uuid.uuid4().hex[:6]}", timeout=5)

    async def __aenter__(self) -> Login:
        await self.client.__aenter__()
        for topic in self.topics:
            await self.client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for msg in self.client.messages:
            raw = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            self.messages.append((str(msg.topic), json.loads(raw), bool(msg.retain)))
            self._changed.set()


def proposal(pid: str, px: float) -> str:
    return json.dumps({"proposal_id": pid, "symbol": "AAPL", "side": "BUY", "quantity": 1,
                       "limit_price": px - 1, "take_profit": px + 3, "stop_loss": px - 3})


async def test_per_account_acl_of_deploy_md(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    for user, password in PASSWORDS.items():
        mosquitto.add_user(user, password)
    mosquitto.add_acl(deploy_acl())
    mosquitto.restart()
    async with TwoAccounts(mosquitto.url, tmp_path, prefixes=("acct-a", "acct-b"),
                           urls={"a": url(mosquitto, "bracketgate-a"),
                                 "b": url(mosquitto, "bracketgate-b")}) as two:
        a, b = two.sides
        await a.tws.set_price("AAPL", 230.0)
        await b.tws.set_price("AAPL", 240.0)
        alpha_topics = ["acct-a/decisions/alpha", "acct-a/status", "acct-b/decisions/alpha"]
        async with Login(mosquitto, "alpha", alpha_topics) as alpha, \
                Login(mosquitto, "beta", ["acct-b/decisions/beta", "acct-b/status"]) as beta:
            for who, pfx in ((alpha, "acct-a"), (beta, "acct-b")):   # both daemons online
                await who.wait_topic(f"{pfx}/status", lambda m: m.get("state") == "online", 30)
            # mosquitto grants alpha's subscription to acct-b but delivers nothing of it:
            # a message there (from B's daemon login) never arrives, one on acct-a does
            for user, topic in (("bracketgate-b", "acct-b/decisions/alpha"),
                                ("bracketgate-a", "acct-a/decisions/alpha")):
                async with aiomqtt.Client(mosquitto.host, mosquitto.port, username=user,
                                          password=PASSWORDS[user]) as c:
                    await c.publish(topic, json.dumps({"marker": user}), qos=1)
            await alpha.wait_topic("acct-a/decisions/alpha", lambda m: m.get("marker"), 10)
            assert not [m for m in alpha.messages if m[0].startswith("acct-b/")]

            await alpha.client.publish("acct-a/proposals/alpha", proposal("acl-a1", 230.0), qos=1)
            dec = await alpha.wait_topic("acct-a/decisions/alpha",
                                         lambda m: m.get("proposal_id") == "acl-a1", 30)
            assert dec["verdict"] == "approved", dec
            # alpha on B's topic: mosquitto PUBACKs and drops it; daemon B never sees it
            await alpha.client.publish("acct-b/proposals/alpha", proposal("acl-x1", 240.0), qos=1)
            await beta.client.publish("acct-b/proposals/beta", proposal("acl-b1", 240.0), qos=1)
            dec = await beta.wait_topic("acct-b/decisions/beta",
                                        lambda m: m.get("proposal_id") == "acl-b1", 30)
            assert dec["verdict"] == "approved", dec   # decided after alpha's: that one is gone
            assert not [e for e in b.d.logs if e.get("proposal_id") == "acl-x1"]
            assert not [o for o in (await b.tws.state())["orders"] if o["orderRef"] == "acl-x1"]

            # the operator of A halts A ...
            rc, out, err = await run_cli(a.d, "halt", "--reason", "acl",
                                         env={"MQTT_URL": url(mosquitto, "operator-a")})
            assert rc == 0, out + err
            await alpha.wait_topic("acct-a/status", lambda m: m.get("trading_state") == "HALTED", 20)
            # ... and cannot halt B: its control is dropped, no answer (exit 3), B trades on
            rc, out, err = await run_cli(b.d, "halt", "--reason", "acl", "--timeout", "2",
                                         env={"MQTT_URL": url(mosquitto, "operator-a")})
            assert rc == 3, out + err
            assert not [e for e in b.d.logs if e.get("event") == "control_received"]
            await beta.client.publish("acct-b/proposals/beta", proposal("acl-b2", 240.0), qos=1)
            dec = await beta.wait_topic("acct-b/decisions/beta",
                                        lambda m: m.get("proposal_id") == "acl-b2", 30)
            assert dec["verdict"] == "approved", dec
