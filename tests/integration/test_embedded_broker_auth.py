"""The embedded broker (default mode) is not open: loopback only, generated owner-only logins,
anonymous clients and wrong passwords refused with CONNACK 5 before their client id counts."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import aiomqtt
import pytest

from bracketgate.adapters.embedded_broker import LOGINS, EmbeddedBroker
from bracketgate.bus.bus import Bus
from bracketgate.bus.errors import MqttError
from bracketgate.bus.messages import TradeProposal
from bracketgate.bus.mqtt import MqttBridge
from bracketgate.config.settings import Settings

PREFIX = "bgauth"
VALID = {"proposal_id": "p-1", "symbol": "AAPL", "side": "BUY", "quantity": 10, "order_type": "LMT",
         "limit_price": 100.0, "take_profit": 105.0, "stop_loss": 98.0}


def _client(broker: EmbeddedBroker, username: str | None, password: str | None,
            identifier: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, username=username, password=password,
                          identifier=identifier, timeout=5)


async def _refused(client: aiomqtt.Client) -> str:
    with pytest.raises(aiomqtt.MqttError) as info:
        async with client:
            pass
    return str(info.value)


async def test_credentials_file_is_owner_only_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "default" / "mqtt-credentials.json"
    async with EmbeddedBroker(credentials_file=path) as broker:
        first = broker.credentials
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    on_disk = json.loads(path.read_text())
    assert set(on_disk) == set(LOGINS) and on_disk == first
    assert all(len(c["password"]) >= 24 for c in on_disk.values())
    async with EmbeddedBroker(credentials_file=path) as again:
        assert again.credentials == first            # made once, on the first start
        assert "@" not in again.url and first["daemon"]["password"] in again.login_url("daemon")


async def test_a_credentials_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mqtt-credentials.json"
    async with EmbeddedBroker(credentials_file=path):
        pass
    path.chmod(0o644)
    with pytest.raises(MqttError, match="chmod 600"):
        await EmbeddedBroker(credentials_file=path).start()


def test_binds_loopback_only() -> None:
    with pytest.raises(MqttError, match="loopback only"):
        EmbeddedBroker(host="0.0.0.0")


async def test_anonymous_and_wrong_password_are_not_authorized() -> None:
    async with EmbeddedBroker() as broker:
        demo = broker.credentials["demo"]
        for user, password in ((None, None), ("demo", "wrong"), ("nobody", demo["password"]),
                               ("demo", None)):
            message = await _refused(_client(broker, user, password))
            assert "authori" in message.lower(), message     # CONNACK 5 "Not authorized"
        async with _client(broker, demo["username"], demo["password"]) as ok:
            await ok.subscribe(f"{PREFIX}/x", qos=1)


async def test_a_refused_client_with_the_daemons_id_does_not_touch_its_session() -> None:
    """amqtt alone would take over the daemon's connection (or delete its persistent session)
    for a client that reuses its id, before refusing the login."""
    settings = Settings(mqtt_url="mqtt://127.0.0.1:1", mqtt_prefix=PREFIX,
                        mqtt_client_id="bg-daemon-id", _env_file=None)  # type: ignore[call-arg]
    bus = Bus()
    got: asyncio.Queue[TradeProposal] = asyncio.Queue()

    async def sink(p: TradeProposal) -> None:
        await got.put(p)

    bus.subscribe(TradeProposal, sink, name="sink")
    await bus.start()
    async with EmbeddedBroker() as broker:
        async with MqttBridge(settings, bus, url=broker.login_url("daemon")) as bridge:
            await bridge.wait_connected(5)
            for clean in (True, False):
                intruder = aiomqtt.Client("127.0.0.1", broker.port, identifier="bg-daemon-id",
                                          clean_session=clean, timeout=5)
                await _refused(intruder)
            demo = broker.credentials["demo"]
            async with _client(broker, demo["username"], demo["password"]) as agent:
                await agent.publish(f"{PREFIX}/proposals/alpha", json.dumps(VALID), qos=1)
            proposal = await asyncio.wait_for(got.get(), 5)
            assert proposal.proposal_id == "p-1"
            assert bridge.connected
    await bus.close()
