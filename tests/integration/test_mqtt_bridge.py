"""The MQTT bridge against a real mosquitto (and once against the embedded amqtt broker).

An outside agent (aiomqtt) publishes proposals and watches every topic; a sink on the bus plays
the risk governor. Every wait is on a message or an event, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from bracketgate.adapters.embedded_broker import EmbeddedBroker
from bracketgate.bus.bus import Bus, Overflow
from bracketgate.bus.messages import (
    Alert,
    ControlCommand,
    DenialCode,
    Fill,
    Leg,
    OrderEvent,
    PortfolioSnapshot,
    Reason,
    RiskDecision,
    Status,
    TradeProposal,
    TradingState,
    TradingStateChanged,
    Verdict,
)
from bracketgate.bus.errors import MqttError, MqttNotConnected
from bracketgate.bus.mqtt import MqttBridge, _paho, backoff_delay
from bracketgate.config.settings import Settings
from tests.fixtures.mosquitto import MosquittoServer

pytestmark = pytest.mark.mosquitto

PREFIX = "bg"
TS = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)
WAIT = 5.0

VALID = {"proposal_id": "p-1", "symbol": "AAPL", "side": "BUY", "quantity": 10, "order_type": "LMT",
         "limit_price": 175.0, "take_profit": 180.0, "stop_loss": 172.5}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mqtt_prefix": PREFIX, "mqtt_client_id": "bracketgate-test", "mqtt_keepalive": 5,
        "portfolio_publish_interval": 0.2, "log_format": "json",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Agent:
    """An outside strategy agent: publishes proposals, collects everything under the prefix."""

    def __init__(self, url: str, *, client_id: str | None = None, clean: bool = True,
                 subscribe: str = f"{PREFIX}/#", credentials: tuple[str, str] | None = None) -> None:
        parts = urlsplit(url)
        user, password = credentials or (None, None)
        self._client = aiomqtt.Client(parts.hostname or "127.0.0.1", parts.port or 1883,
                                      username=user, password=password,
                                      identifier=client_id, clean_session=clean,
                                      socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
        self._subscribe = subscribe
        self._inbox: dict[str, asyncio.Queue[aiomqtt.Message]] = defaultdict(asyncio.Queue)
        self._reader: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()

    async def __aenter__(self) -> Agent:
        await self._client.__aenter__()
        await self._client.subscribe(self._subscribe, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        if not self.lost.is_set():
            await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        try:
            async for msg in self._client.messages:
                self._inbox[msg.topic.value].put_nowait(msg)
        except aiomqtt.MqttError:
            self.lost.set()

    async def next(self, topic: str, timeout: float = WAIT) -> aiomqtt.Message:
        async with asyncio.timeout(timeout):
            return await self._inbox[topic].get()

    async def next_json(self, topic: str, timeout: float = WAIT) -> dict[str, Any]:
        return json.loads((await self.next(topic, timeout)).payload)  # type: ignore[arg-type]

    def pending(self, topic: str) -> int:
        return self._inbox[topic].qsize()

    async def propose(self, agent_id: str, payload: bytes | dict[str, Any], *, retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self._client.publish(f"{PREFIX}/proposals/{agent_id}", body, qos=1, retain=retain)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=1, retain=retain)


class Sink:
    """A bus subscriber that hands messages to the test."""

    def __init__(self, bus: Bus, topic: type[Any], **kwargs: Any) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        bus.subscribe(topic, self._handle, name=f"test-{topic.__name__}", **kwargs)

    async def _handle(self, msg: Any) -> None:
        self.queue.put_nowait(msg)

    async def next(self, timeout: float = WAIT) -> Any:
        async with asyncio.timeout(timeout):
            return await self.queue.get()


class Rig:
    def __init__(self, bus: Bus, bridge: MqttBridge, agent: Agent, proposals: Sink, controls: Sink):
        self.bus, self.bridge, self.agent, self.proposals, self.controls = bus, bridge, agent, proposals, controls


def sever(bridge: MqttBridge) -> None:
    """Kill the bridge's TCP connection without an MQTT DISCONNECT (as a crash would)."""
    client = bridge._client
    assert client is not None
    sock = client._client.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
async def rig(mosquitto: MosquittoServer) -> AsyncIterator[Rig]:
    bus = Bus()
    proposals = Sink(bus, TradeProposal)
    controls = Sink(bus, ControlCommand)
    bridge = MqttBridge(make_settings(), bus, url=mosquitto.url)
    await bus.start()
    async with Agent(mosquitto.url) as agent:
        await bridge.start()
        await bridge.wait_connected(WAIT)
        try:
            yield Rig(bus, bridge, agent, proposals, controls)
        finally:
            await bridge.close()
            await bus.close()


# --------------------------------------------------------------------------- intake


async def test_valid_proposal_reaches_bus_with_agent_from_topic(rig: Rig) -> None:
    await rig.agent.propose("alpha", VALID)
    proposal = await rig.proposals.next()
    assert isinstance(proposal, TradeProposal)
    assert proposal.agent_id == "alpha" and proposal.proposal_id == "p-1"
    assert proposal.limit_price == 175.0 and proposal.quantity == 10
    assert rig.agent.pending(f"{PREFIX}/decisions/alpha") == 0


GARBAGE: list[tuple[str, str, bytes, str, str, set[str | None]]] = [
    # (case, topic agent, payload, code, echoed proposal_id, fields named in the reasons)
    ("not json", "alpha", b"buy 10 AAPL please", "MALFORMED_JSON", "", {None}),
    ("not utf-8", "alpha", b"\xff\xfe{", "MALFORMED_JSON", "", {None}),
    ("json list", "alpha", b'[{"proposal_id": "x"}]', "MALFORMED_JSON", "", {None}),
    ("wrong types", "alpha", json.dumps(VALID | {"proposal_id": "g-1", "quantity": "ten", "side": 5}).encode(),
     "VALIDATION_ERROR", "g-1", {"quantity", "side"}),
    ("NaN", "alpha", json.dumps(VALID | {"proposal_id": "g-2", "limit_price": float("nan")}).encode(),
     "VALIDATION_ERROR", "g-2", {"limit_price"}),
    ("negative prices", "alpha", json.dumps(VALID | {"proposal_id": "g-3", "stop_loss": -1.0,
                                                    "take_profit": -5}).encode(),
     "VALIDATION_ERROR", "g-3", {"stop_loss", "take_profit"}),
    ("oversized", "alpha", b'{"proposal_id": "g-4", "pad": "' + b"x" * 20_000 + b'"}',
     "PAYLOAD_TOO_LARGE", "g-4", {None}),
    ("unknown field", "alpha", json.dumps(VALID | {"proposal_id": "g-5", "colour": "red"}).encode(),
     "VALIDATION_ERROR", "g-5", {"colour"}),
    ("missing fields", "alpha", b'{"proposal_id": "g-6"}', "VALIDATION_ERROR", "g-6",
     {"symbol", "side", "quantity", "take_profit", "stop_loss"}),
    ("agent contradicts topic", "alpha", json.dumps(VALID | {"proposal_id": "g-7", "agent_id": "beta"}).encode(),
     "VALIDATION_ERROR", "g-7", {"agent_id"}),
    ("invalid topic agent id", "bad!agent", json.dumps(VALID | {"proposal_id": "g-8"}).encode(),
     "VALIDATION_ERROR", "g-8", {"agent_id"}),
    ("bad geometry shape", "alpha", json.dumps(VALID | {"proposal_id": "g-9", "order_type": "MKT"}).encode(),
     "VALIDATION_ERROR", "g-9", {None}),
]


async def test_garbage_payloads_each_get_an_invalid_decision(rig: Rig) -> None:
    for case, agent_id, payload, code, proposal_id, fields in GARBAGE:
        await rig.agent.propose(agent_id, payload)
        decision = await rig.agent.next_json(f"{PREFIX}/decisions/{agent_id}")
        assert decision["verdict"] == "invalid", case
        assert decision["agent_id"] == agent_id, case
        assert decision["proposal_id"] == proposal_id, case
        assert {r["code"] for r in decision["reasons"]} == {code}, case
        assert {r["field"] for r in decision["reasons"]} == fields, (case, decision["reasons"])
        assert all(r["message"] for r in decision["reasons"]), case
        RiskDecision.model_validate(decision)  # the answer itself honours the contract
    # ... and the bridge keeps serving: nothing reached the bus, a valid one does
    assert rig.proposals.queue.empty()
    await rig.agent.propose("alpha", VALID | {"proposal_id": "after-garbage"})
    assert (await rig.proposals.next()).proposal_id == "after-garbage"
    assert rig.bridge.counters["invalid"] == len(GARBAGE)


async def test_oversized_payload_reason_carries_limit_and_size(rig: Rig) -> None:
    await rig.agent.propose("alpha", b'{"x": "' + b"y" * 17_000 + b'"}')
    decision = await rig.agent.next_json(f"{PREFIX}/decisions/alpha")
    (reason,) = decision["reasons"]
    assert reason["limit"] == 16 * 1024 and reason["value"] > 17_000


async def test_overloaded_intake_is_rejected_with_overloaded(mosquitto: MosquittoServer) -> None:
    bus = Bus()
    release = asyncio.Event()
    entered = asyncio.Event()
    seen: list[str] = []

    async def slow_governor(p: TradeProposal) -> None:
        entered.set()
        await release.wait()
        seen.append(p.proposal_id)

    bus.subscribe(TradeProposal, slow_governor, name="risk", maxsize=1, overflow=Overflow.REJECT)
    await bus.start()
    bridge = MqttBridge(make_settings(), bus, url=mosquitto.url)
    async with Agent(mosquitto.url) as agent, bridge:
        await bridge.wait_connected(WAIT)
        await agent.propose("alpha", VALID | {"proposal_id": "o-1"})
        await entered.wait()                                        # o-1 in the handler
        await agent.propose("alpha", VALID | {"proposal_id": "o-2"})  # o-2 fills the queue
        await agent.propose("alpha", VALID | {"proposal_id": "o-3"})  # o-3 refused
        decision = await agent.next_json(f"{PREFIX}/decisions/alpha")
        assert decision["proposal_id"] == "o-3" and decision["verdict"] == "rejected"
        assert [r["code"] for r in decision["reasons"]] == ["OVERLOADED"]
        release.set()
        await bus.drain(WAIT)
        assert seen == ["o-1", "o-2"]
    await bus.close()


async def test_stop_intake_defers_proposals_to_the_next_session(mosquitto: MosquittoServer) -> None:
    """After stop_intake() a proposal is neither taken in nor acknowledged, and the subscription
    stays: it and the ones published while the daemon is away come with the next session."""
    settings = make_settings(mqtt_client_id="bracketgate-stop")
    bus1 = Bus()
    first_sink, controls = Sink(bus1, TradeProposal), Sink(bus1, ControlCommand)
    await bus1.start()
    async with Agent(mosquitto.url) as agent:
        async with MqttBridge(settings, bus1, url=mosquitto.url) as first:
            await first.wait_connected(WAIT)
            await first.stop_intake()
            await agent.propose("alpha", VALID | {"proposal_id": "late"})
            # the control topic is still served: its command proves the proposal was read
            await agent.publish(f"{PREFIX}/control", b'{"action": "halt", "reason": "marker"}')
            assert (await controls.next()).reason == "marker"
            assert first.counters["deferred"] == 1
        assert first_sink.queue.empty()
        await bus1.close()
        await agent.propose("alpha", VALID | {"proposal_id": "while-down"})
    bus2 = Bus()
    sink = Sink(bus2, TradeProposal)
    await bus2.start()
    async with MqttBridge(settings, bus2, url=mosquitto.url) as second:
        await second.wait_connected(WAIT)
        got = [(await sink.next()).proposal_id for _ in range(2)]
        assert got == ["late", "while-down"]
        with pytest.raises(TimeoutError):  # each exactly once
            await sink.next(timeout=0.3)
    await bus2.close()


# --------------------------------------------------------------------------- acknowledgement


class Broker:
    """A bare paho client with manual acknowledgement: what mosquitto itself does."""

    def __init__(self, url: str, client_id: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.client_id = client_id
        self.got: list[tuple[int, bool, bytes]] = []  # (mid, dup, payload)
        self._arrived = threading.Condition()
        self._client: paho.Client | None = None

    def connect(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=False, manual_ack=True)
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect(self.host, self.port)
        client.loop_start()
        client.subscribe("ack/#", qos=1)
        assert subscribed.wait(WAIT)
        self._client = client
        return client

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._arrived:
            self.got.append((msg.mid, bool(msg.dup), msg.payload))
            self._arrived.notify_all()

    def wait(self, count: int) -> list[tuple[int, bool, bytes]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.got) >= count, WAIT), self.got
            got, self.got = self.got[:count], self.got[count:]
            return got

    def disconnect(self) -> None:
        assert self._client is not None
        self._client.disconnect()
        self._client.loop_stop()


def publish_qos1(url: str, topic: str, *payloads: bytes) -> None:
    parts = urlsplit(url)
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="ack-publisher")
    pub.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    pub.loop_start()
    try:
        for payload in payloads:
            pub.publish(topic, payload, qos=1).wait_for_publish(WAIT)
    finally:
        pub.disconnect()
        pub.loop_stop()


def test_mosquitto_redelivers_unacknowledged_qos1_with_dup(mosquitto: MosquittoServer) -> None:
    """What the bridge relies on: a persistent session's unacknowledged QoS 1 messages come
    again, DUP set, on the next connection — also after the broker restarts — and acknowledged
    ones never do. (Not within a connection: MQTT 3.1.1 resends only on reconnect.)"""
    sub = Broker(mosquitto.url, "ack-sub")
    client = sub.connect()
    publish_qos1(mosquitto.url, "ack/x", b"m0", b"m1", b"m2")
    first = sub.wait(3)
    assert [(dup, p) for _, dup, p in first] == [(False, b"m0"), (False, b"m1"), (False, b"m2")]
    client.ack(first[0][0], 1)
    sub.disconnect()  # a clean DISCONNECT: the session (and m1, m2 in flight) stays

    client = sub.connect()
    again = sub.wait(2)
    assert [(dup, p) for _, dup, p in again] == [(True, b"m1"), (True, b"m2")]
    client.ack(again[0][0], 1)  # m1 done; m2 still unacknowledged ...
    sub.disconnect()
    mosquitto.restart()  # ... and kept in the broker's persistence across a restart

    client = sub.connect()
    (last,) = sub.wait(1)
    assert last[1:] == (True, b"m2")
    client.ack(last[0], 1)
    sub.disconnect()
    client = sub.connect()
    publish_qos1(mosquitto.url, "ack/x", b"m3")
    assert [p for _, _, p in sub.wait(1)] == [b"m3"]  # nothing acknowledged came back
    sub.disconnect()


async def test_paho_client_reached_for_manual_ack() -> None:
    """Fails when aiomqtt stops keeping its paho client in `_client` (see bus/mqtt.py `_paho`)."""
    bridge = MqttBridge(make_settings(), Bus(), url="mqtt://127.0.0.1:1")
    client = bridge._make_client()
    inner = _paho(client)
    assert isinstance(inner, paho.Client)
    assert inner._manual_ack is True  # paho's flag behind manual_ack_set(True)
    assert callable(inner.ack) and callable(inner.manual_ack_set)  # paho's public API

    class Renamed:
        _paho_client = inner

    with pytest.raises(MqttError, match="manual acknowledgement"):
        _paho(Renamed())  # type: ignore[arg-type]


async def test_proposal_acknowledged_only_once_the_hook_made_it_durable(
        mosquitto: MosquittoServer) -> None:
    settings = make_settings(mqtt_client_id="bracketgate-hook")
    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def slow_journal(p: TradeProposal) -> None:
        calls.append(p.proposal_id)
        entered.set()
        await release.wait()

    bus1 = Bus()
    await bus1.start()
    async with Agent(mosquitto.url) as agent:
        async with MqttBridge(settings, bus1, url=mosquitto.url, on_proposal=slow_journal) as first:
            await first.wait_connected(WAIT)
            await agent.propose("alpha", VALID | {"proposal_id": "held"})
            await entered.wait()
        # closed while the hook ran: not acknowledged, so the broker still holds it
        await bus1.close()

        async def journal(p: TradeProposal) -> None:
            calls.append(p.proposal_id)

        bus2 = Bus()
        sink = Sink(bus2, TradeProposal)
        await bus2.start()
        async with MqttBridge(settings, bus2, url=mosquitto.url, on_proposal=journal) as second:
            await second.wait_connected(WAIT)
            assert (await sink.next()).proposal_id == "held"
            await agent.propose("alpha", b"garbage")  # acknowledged after its answer is queued
            assert (await agent.next_json(f"{PREFIX}/decisions/alpha"))["verdict"] == "invalid"
        await bus2.close()
        assert calls == ["held", "held"]

        bus3 = Bus()
        sink = Sink(bus3, TradeProposal)
        await bus3.start()
        async with MqttBridge(settings, bus3, url=mosquitto.url, on_proposal=journal) as third:
            await third.wait_connected(WAIT)
            await agent.propose("alpha", VALID | {"proposal_id": "marker"})
            assert (await sink.next()).proposal_id == "marker"  # nothing acknowledged came back
        await bus3.close()
        assert agent.pending(f"{PREFIX}/decisions/alpha") == 0
    assert calls == ["held", "held", "marker"]


async def test_failing_hook_gets_the_proposal_redelivered(mosquitto: MosquittoServer) -> None:
    failures = ["journal is full"]
    calls: list[str] = []

    async def flaky_journal(p: TradeProposal) -> None:
        calls.append(p.proposal_id)
        if failures:
            raise OSError(failures.pop())

    bus = Bus()
    sink = Sink(bus, TradeProposal)
    await bus.start()
    with capture_logs() as logs:
        async with Agent(mosquitto.url) as agent, \
                MqttBridge(make_settings(mqtt_client_id="bracketgate-flaky"), bus,
                           url=mosquitto.url, on_proposal=flaky_journal) as bridge:
            await bridge.wait_connected(WAIT)
            await agent.propose("alpha", VALID | {"proposal_id": "flaky"})
            # offered while its write is in flight (the gate decides meanwhile), not
            # acknowledged when the write failed: redelivered, written, offered again (the
            # gate answers a repeat from its memory; nothing is placed for it before an intent
            # is journaled behind its write: agents/execution.py, tests/unit/test_journal_early)
            assert (await sink.next()).proposal_id == "flaky"
            assert (await sink.next()).proposal_id == "flaky"
            await bridge.wait_connected(WAIT)  # the redelivery may come before the SUBACKs
            assert bridge.counters["not_durable"] == 1 and bridge.counters["connects"] == 2
            with pytest.raises(TimeoutError):
                await sink.next(timeout=0.3)
    await bus.close()
    assert calls == ["flaky", "flaky"]
    (failed,) = [e for e in logs if e["event"] == "proposal_not_durable"]
    assert failed["code"] == "NOT_DURABLE" and failed["proposal_id"] == "flaky"
    assert "journal is full" in failed["error"]


# --------------------------------------------------------------------------- outbound


async def test_decisions_orders_events_and_status_on_their_topics(rig: Rig) -> None:
    bus, agent = rig.bus, rig.agent
    await bus.publish(RiskDecision(proposal_id="p-9", agent_id="alpha", verdict=Verdict.REJECTED,
                                   reasons=[Reason(code=DenialCode.DAILY_LOSS_LIMIT, message="m",
                                                   limit=-2000.0, value=-2150.3)], ts=TS))
    await bus.publish(OrderEvent(proposal_id="p-9", agent_id="alpha", order_id=7, leg=Leg.ENTRY,
                                 symbol="AAPL", status="Submitted", ts=TS))
    await bus.publish(Fill(proposal_id="p-9", agent_id="alpha", order_id=7, leg=Leg.ENTRY, exec_id="e1",
                           symbol="AAPL", side="BUY", quantity=10, price=175.0, ts=TS))
    await bus.publish(TradingStateChanged(old=TradingState.ACTIVE, new=TradingState.HALTED,
                                          reason="loss", by="auto", ts=TS))
    await bus.publish(Alert(code="UNPROTECTED_FILL", message="no stop", ts=TS))
    await bus.publish(Status(state="online", mode="paper", ts=TS))

    decision = await agent.next_json(f"{PREFIX}/decisions/alpha")
    assert decision["verdict"] == "rejected" and decision["reasons"][0]["code"] == "DAILY_LOSS_LIMIT"
    order = await agent.next(f"{PREFIX}/orders/alpha")
    assert json.loads(order.payload)["type"] == "order_event" and order.qos == 1  # type: ignore[arg-type]
    fill = await agent.next_json(f"{PREFIX}/orders/alpha")
    assert fill["type"] == "fill" and fill["exec_id"] == "e1"
    assert (await agent.next_json(f"{PREFIX}/events"))["type"] == "trading_state"
    assert (await agent.next_json(f"{PREFIX}/events"))["type"] == "alert"
    # status: "starting" from the bridge's connect, then ours — retained for late subscribers
    statuses = [await agent.next_json(f"{PREFIX}/status")]
    while statuses[-1]["state"] != "online":
        statuses.append(await agent.next_json(f"{PREFIX}/status"))
    async with Agent(rig.bridge.endpoint and f"mqtt://{rig.bridge.endpoint}",
                     subscribe=f"{PREFIX}/status") as late:
        retained = await late.next(f"{PREFIX}/status")
        assert retained.retain and json.loads(retained.payload)["state"] == "online"  # type: ignore[arg-type]


async def test_portfolio_is_retained_rate_limited_and_latest(rig: Rig) -> None:
    for i in range(30):
        await rig.bus.publish(PortfolioSnapshot(ts=TS, account=f"U{i}"))
    seen = [await rig.agent.next_json(f"{PREFIX}/portfolio")]
    while seen[-1]["account"] != "U29":
        seen.append(await rig.agent.next_json(f"{PREFIX}/portfolio"))
    assert len(seen) <= 3  # first one at once, then at most one per interval: the latest
    async with Agent(f"mqtt://{rig.bridge.endpoint}", subscribe=f"{PREFIX}/portfolio") as late:
        retained = await late.next(f"{PREFIX}/portfolio")
        assert retained.retain and json.loads(retained.payload)["account"] == "U29"  # type: ignore[arg-type]


async def test_clean_close_publishes_retained_offline(mosquitto: MosquittoServer) -> None:
    bus = Bus()
    await bus.start()
    async with MqttBridge(make_settings(), bus, url=mosquitto.url) as bridge:
        await bridge.wait_connected(WAIT)
        await bus.publish(Status(state="online", ts=TS))
    async with Agent(mosquitto.url, subscribe=f"{PREFIX}/status") as late:
        status = await late.next_json(f"{PREFIX}/status")
        assert status["state"] == "offline" and status["detail"] == "clean shutdown"
    await bus.close()


async def test_last_will_offline_when_the_connection_dies(rig: Rig) -> None:
    await rig.bus.publish(Status(state="online", ts=TS))
    while (await rig.agent.next_json(f"{PREFIX}/status"))["state"] != "online":
        pass
    sever(rig.bridge)
    will = await rig.agent.next(f"{PREFIX}/status")
    assert json.loads(will.payload) == {"state": "offline"}  # type: ignore[arg-type]
    # the bridge reconnects and puts its real status back over the will
    await rig.bridge.wait_disconnected(WAIT)
    await rig.bridge.wait_connected(WAIT)
    assert (await rig.agent.next_json(f"{PREFIX}/status"))["state"] == "online"
    await rig.agent.propose("alpha", VALID | {"proposal_id": "after-will"})
    assert (await rig.proposals.next()).proposal_id == "after-will"


async def test_proposals_published_while_down_arrive_after_restart(mosquitto: MosquittoServer) -> None:
    settings = make_settings(mqtt_client_id="bracketgate-persist")
    bus1 = Bus()
    await bus1.start()
    async with MqttBridge(settings, bus1, url=mosquitto.url) as first:
        await first.wait_connected(WAIT)  # persistent session + subscription now exist
    await bus1.close()
    async with Agent(mosquitto.url) as agent:
        for i in range(3):
            await agent.propose("alpha", VALID | {"proposal_id": f"away-{i}"})
    bus2 = Bus()
    sink = Sink(bus2, TradeProposal)
    await bus2.start()
    async with MqttBridge(settings, bus2, url=mosquitto.url) as second:
        await second.wait_connected(WAIT)
        got = [(await sink.next()).proposal_id for _ in range(3)]
    assert got == ["away-0", "away-1", "away-2"]
    await bus2.close()


async def test_reconnects_after_broker_restart_and_flushes_outbox(mosquitto: MosquittoServer) -> None:
    bus = Bus()
    sink = Sink(bus, TradeProposal)
    await bus.start()
    # the watcher keeps a persistent session too, so it gets what is sent while it reconnects
    watcher_id = "watcher-restart"
    async with MqttBridge(make_settings(), bus, url=mosquitto.url) as bridge:
        await bridge.wait_connected(WAIT)
        async with Agent(mosquitto.url, client_id=watcher_id, clean=False) as watcher:
            mosquitto.stop()
            await bridge.wait_disconnected(WAIT)
            await watcher.lost.wait()
        # a decision while the broker is down waits in the outbox
        await bus.publish(RiskDecision(proposal_id="queued", agent_id="alpha",
                                       verdict=Verdict.APPROVED, ts=TS))
        mosquitto.start()
        await bridge.wait_connected(WAIT)
        async with Agent(mosquitto.url, client_id=watcher_id, clean=False) as watcher:
            decision = await watcher.next_json(f"{PREFIX}/decisions/alpha")
            assert decision["proposal_id"] == "queued"
            await watcher.propose("alpha", VALID | {"proposal_id": "after-restart"})
            assert (await sink.next()).proposal_id == "after-restart"
        assert bridge.counters["connects"] == 2
    await bus.close()


# --------------------------------------------------------------------------- control


async def test_control_commands_reach_the_bus(rig: Rig) -> None:
    with capture_logs() as logs:
        await rig.agent.publish(f"{PREFIX}/control", b"halt now")
        await rig.agent.publish(f"{PREFIX}/control", b'{"action": "explode"}')
        await rig.agent.publish(f"{PREFIX}/control", b'{"action": "halt", "reason": "risk desk"}')
        command = await rig.controls.next()
    assert command == ControlCommand(action="halt", reason="risk desk")
    invalid = [e for e in logs if e["event"] == "control_invalid"]
    assert [e["code"] for e in invalid] == ["MALFORMED_JSON", "VALIDATION_ERROR"]
    assert rig.controls.queue.empty()


async def test_retained_control_is_not_replayed_on_reconnect(rig: Rig) -> None:
    # a retained command is acted on once, live; its replay after a reconnect is ignored
    await rig.agent.publish(f"{PREFIX}/control", b'{"action": "reduce", "reason": "sticky"}', retain=True)
    assert (await rig.controls.next()).reason == "sticky"
    # acknowledged once handled, one loop turn later: a later message through proves it was sent
    # (else the broker would redeliver the live copy, DUP, and no longer flagged retained)
    await rig.agent.propose("alpha", VALID | {"proposal_id": "barrier"})
    assert (await rig.proposals.next()).proposal_id == "barrier"
    with capture_logs() as logs:
        sever(rig.bridge)
        await rig.bridge.wait_disconnected(WAIT)
        await rig.bridge.wait_connected(WAIT)
        await rig.agent.publish(f"{PREFIX}/control", b'{"action": "resume", "reason": "marker"}')
        assert (await rig.controls.next()).reason == "marker"
    assert any(e["event"] == "control_ignored" and e["code"] == "RETAINED" for e in logs)
    await rig.agent.publish(f"{PREFIX}/control", b"", retain=True)  # clear it


# --------------------------------------------------------------------------- auth and TLS


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "broker.crt", directory / "broker.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")
async def test_tls_and_password_from_settings_never_logged(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    tls_port = mosquitto.add_tls_listener(cert, key)
    mosquitto.add_user("gate", "hunter2-secret")
    mosquitto.restart()
    bus = Bus()
    sink = Sink(bus, TradeProposal)
    await bus.start()
    with capture_logs() as logs:
        # wrong password: refused with the broker's code, retried, never connected
        wrong = make_settings(mqtt_url=f"mqtts://gate:wrong-secret@127.0.0.1:{tls_port}", mqtt_ca_file=cert)
        async with MqttBridge(wrong, bus, url=None) as bridge:
            with pytest.raises(MqttNotConnected):
                await bridge.wait_connected(0.5)
        good = make_settings(mqtt_url=f"mqtts://127.0.0.1:{tls_port}", mqtt_username="gate",
                             mqtt_password="hunter2-secret", mqtt_ca_file=cert)
        async with MqttBridge(good, bus) as bridge:
            await bridge.wait_connected(WAIT)
            async with Agent(mosquitto.url, credentials=("gate", "hunter2-secret")) as agent:
                await agent.propose("alpha", VALID)
                assert (await sink.next()).agent_id == "alpha"
    await bus.close()
    lost = [e for e in logs if e["event"] == "mqtt_connection_lost"]
    assert lost and lost[0]["code"] == 135  # "Not authorized" (paho reports MQTT 5 reason codes)
    text = repr(logs)
    assert "hunter2-secret" not in text and "wrong-secret" not in text


# --------------------------------------------------------------------------- embedded broker


def _login(broker: EmbeddedBroker, role: str) -> tuple[str, str]:
    return broker.credentials[role]["username"], broker.credentials[role]["password"]


async def test_bridge_through_the_embedded_broker() -> None:
    bus = Bus()
    sink = Sink(bus, TradeProposal)
    await bus.start()
    async with EmbeddedBroker() as broker:
        assert broker.url.startswith("mqtt://127.0.0.1:")
        async with Agent(broker.url, credentials=_login(broker, "demo")) as agent:
            async with MqttBridge(make_settings(), bus, url=broker.login_url("daemon")) as bridge:
                await bridge.wait_connected(WAIT)
                await agent.propose("alpha", VALID)
                proposal = await sink.next()
                assert proposal.agent_id == "alpha"
                await bus.publish(RiskDecision(proposal_id=proposal.proposal_id, agent_id="alpha",
                                               verdict=Verdict.APPROVED, ts=TS))
                assert (await agent.next_json(f"{PREFIX}/decisions/alpha"))["verdict"] == "approved"
                await agent.propose("alpha", b"nope")
                assert (await agent.next_json(f"{PREFIX}/decisions/alpha"))["verdict"] == "invalid"
                await bus.publish(Status(state="online", ts=TS))
                async with Agent(broker.url, subscribe=f"{PREFIX}/status", credentials=_login(broker, "demo")) as late:
                    while True:  # amqtt may first replay other retained messages (see its quirks)
                        msg = await late.next(f"{PREFIX}/status")
                        if json.loads(msg.payload)["state"] == "online":  # type: ignore[arg-type]
                            assert msg.retain
                            break
    await bus.close()


async def test_embedded_broker_keeps_the_persistent_session() -> None:
    """amqtt queues QoS 1 for a disconnected persistent session only for non-anonymous clients:
    EmbeddedBroker's PasswordAuthPlugin makes that work (see adapters/embedded_broker.py)."""
    settings = make_settings(mqtt_client_id="bracketgate-embedded")
    async with EmbeddedBroker() as broker:
        bus1 = Bus()
        await bus1.start()
        async with MqttBridge(settings, bus1, url=broker.login_url("daemon")) as first:
            await first.wait_connected(WAIT)
        await bus1.close()
        async with Agent(broker.url, credentials=_login(broker, "demo")) as agent:
            await agent.propose("alpha", VALID | {"proposal_id": "while-away"})
        bus2 = Bus()
        sink = Sink(bus2, TradeProposal)
        await bus2.start()
        async with MqttBridge(settings, bus2, url=broker.login_url("daemon")) as second:
            await second.wait_connected(WAIT)
            assert (await sink.next()).proposal_id == "while-away"
        await bus2.close()


# --------------------------------------------------------------------------- pure


def test_backoff_is_jittered_exponential_and_capped() -> None:
    lows = [backoff_delay(n, rng=lambda: 0.0) for n in range(10)]
    highs = [backoff_delay(n, rng=lambda: 1.0) for n in range(10)]
    assert highs[0] == pytest.approx(0.2) and lows[0] == pytest.approx(0.1)
    assert highs[1] == pytest.approx(0.4) and highs[-1] == pytest.approx(10.0)
    assert all(a <= b for a, b in zip(highs, highs[1:], strict=False))
    assert backoff_delay(1000, rng=lambda: 1.0) == 10.0
