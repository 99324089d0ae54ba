"""bus/mqtt_wire.py: the tuned wire under the bridge's aiomqtt client, against a real mosquitto.

Joined writes, buffered reads, the 3.1.1 PUBACK read without paho's decoder and the outbox sent
through paho: every message arrives once, in order, and the counters show the cheap path was the
one taken (so a paho or aiomqtt upgrade that bypasses it fails here). The outbox's failure paths
(no PUBACK, a cancel) run against a stand-in paho, the one place a fake is needed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
import pytest

from bracketgate.bus.errors import MqttError
from bracketgate.bus.mqtt import _paho
from bracketgate.bus.mqtt_wire import MERGE_MAX, Wire, coalesce, send_outbox, tune
from tests.fixtures.mosquitto import MosquittoServer

WAIT = 10.0


def _pkt(command: int, data: bytes, *, qos: int = 1, pos: int = 0,
         info: Any = None) -> dict[str, Any]:
    return {"command": command, "mid": 1, "qos": qos, "pos": pos, "to_process": len(data) - pos,
            "packet": data, "info": info}


def _wire_bytes(out: deque[Any]) -> bytes:
    return b"".join(bytes(p["packet"][p["pos"]:]) for p in out)


# --------------------------------------------------------------------------- coalesce (no socket)

def test_coalesce_joins_runs_and_keeps_packets_paho_completes_apart() -> None:
    qos0 = _pkt(paho.PUBLISH, b"\x30q0", qos=0, info=object())
    disconnect = _pkt(paho.DISCONNECT, b"\xe0\x00", qos=0)
    out = deque([_pkt(paho.PUBACK, b"\x40\x02\x00\x01"), _pkt(paho.PUBLISH | 2, b"\x32pub1"),
                 qos0, _pkt(paho.PUBACK, b"\x40\x02\x00\x02"),
                 _pkt(paho.PUBACK, b"\x40\x02\x00\x03"), disconnect])
    before = _wire_bytes(out)
    coalesce(out)
    assert _wire_bytes(out) == before                 # the same bytes, the same order
    assert len(out) == 4                              # [acks+publish], qos0, [two acks], disconnect
    assert out[1] is qos0 and out[3] is disconnect    # paho's on_publish / close still run
    assert out[0]["to_process"] == len(out[0]["packet"]) and out[0]["pos"] == 0


def test_coalesce_takes_a_partly_written_packet_from_where_paho_stopped() -> None:
    out = deque([_pkt(paho.PUBLISH | 2, b"ABCDEFGH", pos=5),
                 _pkt(paho.PUBACK, b"\x40\x02\x00\x09")])
    coalesce(out)
    assert len(out) == 1 and out[0]["packet"] == b"FGH\x40\x02\x00\x09"


def test_coalesce_bounds_a_merged_packet() -> None:
    third = b"x" * (MERGE_MAX // 3)
    out = deque([_pkt(paho.PUBLISH | 2, third) for _ in range(6)])
    coalesce(out)
    assert [len(p["packet"]) for p in out] == [3 * len(third)] * 2   # three to a packet
    assert _wire_bytes(out) == third * 6


def test_coalesce_leaves_a_lone_packet_as_it_is() -> None:
    one = _pkt(paho.PUBACK, b"\x40\x02\x00\x01")
    out = deque([one])
    coalesce(out)
    assert list(out) == [one]


# --------------------------------------------------------------------------- against mosquitto

@dataclass
class Item:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


async def _collect(url: str, topic: str, count: int, ready: asyncio.Event,
                   got: list[bytes]) -> None:
    u = urlsplit(url)
    async with aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                              identifier=f"wire-rx-{uuid.uuid4().hex[:6]}") as rx:
        await rx.subscribe(topic, qos=1)
        ready.set()
        async for m in rx.messages:
            got.append(bytes(m.payload))  # type: ignore[arg-type]
            if len(got) >= count:
                return


def _client(url: str) -> aiomqtt.Client:
    u = urlsplit(url)
    return aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                          identifier=f"wire-{uuid.uuid4().hex[:6]}", max_inflight_messages=64)


@pytest.mark.mosquitto
async def test_outbox_through_the_tuned_wire_delivers_every_message_once_in_order(
        mosquitto: MosquittoServer) -> None:
    count = 800
    topic = f"wire/{uuid.uuid4().hex[:6]}"
    got: list[bytes] = []
    ready = asyncio.Event()
    rx = asyncio.create_task(_collect(mosquitto.url, topic, count, ready, got))
    await asyncio.wait_for(ready.wait(), WAIT)
    client = _client(mosquitto.url)
    wake = asyncio.Event()
    wire = tune(client, _paho(client), wake)
    acked: list[Item] = []
    idle = asyncio.Event()
    async with client:
        outbox: deque[Item] = deque(Item(topic, b"m%04d" % i) for i in range(count))
        writer = asyncio.create_task(send_outbox(wire, outbox, idle, acked.append, 64, 10.0))
        try:
            async with asyncio.timeout(WAIT):
                while len(acked) < count:
                    idle.clear()
                    await idle.wait()
                await rx
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        inner = _paho(client)
        assert inner._inflight_messages == 0 and not inner._out_messages   # every PUBACK taken
    assert [i.payload for i in acked] == [b"m%04d" % i for i in range(count)]   # acked in order
    assert got == [b"m%04d" % i for i in range(count)]                          # once, in order
    assert not outbox
    assert wire.stats["sends_saved"] > 0          # bursts went out joined
    assert wire.stats["reads_buffered"] > 0       # PUBACKs came several to a recv()


@pytest.mark.mosquitto
async def test_a_burst_in_is_read_from_the_buffer_every_message_in_order(
        mosquitto: MosquittoServer) -> None:
    count = 1000
    topic = f"wire/in/{uuid.uuid4().hex[:6]}"
    client = _client(mosquitto.url)
    wire = tune(client, _paho(client))
    async with client:
        await client.subscribe(topic, qos=1)
        u = urlsplit(mosquitto.url)
        async with aiomqtt.Client(u.hostname or "127.0.0.1", u.port or 1883,
                                  identifier=f"wire-tx-{uuid.uuid4().hex[:6]}") as tx:
            await asyncio.gather(*(tx.publish(topic, b"n%04d" % i, qos=1) for i in range(count)))
        got: list[bytes] = []
        async with asyncio.timeout(WAIT):
            async for m in client.messages:
                got.append(bytes(m.payload))  # type: ignore[arg-type]
                if len(got) >= count:
                    break
    assert got == [b"n%04d" % i for i in range(count)]
    assert wire.stats["reads_buffered"] > count   # most packets never cost a recv() of their own
    assert wire.stats["recvs"] < count


def test_a_client_without_the_internals_is_refused() -> None:
    class NotPaho:
        pass

    async def make() -> None:
        Wire(aiomqtt.Client("127.0.0.1", 1), NotPaho())  # type: ignore[arg-type]

    with pytest.raises(MqttError, match="mqtt_wire.py must be adapted"):
        asyncio.run(make())


# --------------------------------------------------------------------------- failure paths

class _Info:
    def __init__(self) -> None:
        self.rc = paho.MQTT_ERR_SUCCESS
        self.done = False

    def is_published(self) -> bool:
        return self.done


class _StandInPaho:
    """What send_outbox asks of paho: publish() -> info; the test decides when PUBACKs come."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, _Info]] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> _Info:
        info = _Info()
        self.sent.append((topic, payload, info))
        return info


class _StandInWire:
    def __init__(self) -> None:
        self.inner = _StandInPaho()
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()

    def ack(self, n: int) -> None:
        for _, _, info in self.inner.sent[:n]:
            info.done = True
        self.wake.set()


async def test_outbox_keeps_the_window_and_acks_in_order() -> None:
    wire = _StandInWire()
    outbox = deque(Item("t", b"%d" % i) for i in range(10))
    acked: list[Item] = []
    task = asyncio.create_task(send_outbox(
        wire, outbox, asyncio.Event(), acked.append, 4, 10.0))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert len(wire.inner.sent) == 4 and len(outbox) == 6   # the window, no more
    wire.ack(2)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [i.payload for i in acked] == [b"0", b"1"] and len(wire.inner.sent) == 6
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # the four in flight, unacknowledged, back at the front in order, before the four never sent
    assert [i.payload for i in outbox] == [b"%d" % i for i in range(2, 10)]


async def test_outbox_ends_the_connection_when_a_puback_is_late() -> None:
    wire = _StandInWire()
    outbox = deque([Item("t", b"late")])
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        await asyncio.wait_for(send_outbox(
            wire, outbox, asyncio.Event(), lambda _: None, 4, 0.2), WAIT)  # type: ignore[arg-type]
    assert [i.payload for i in outbox] == [b"late"]   # sent again after the reconnect


async def test_outbox_refused_by_paho_is_kept_whole() -> None:
    wire = _StandInWire()

    def refuse(topic: str, payload: bytes, qos: int, retain: bool) -> _Info:
        info = _Info()
        info.rc = paho.MQTT_ERR_NO_CONN
        return info

    wire.inner.publish = refuse  # type: ignore[method-assign]
    outbox = deque([Item("t", b"a"), Item("t", b"b")])
    with pytest.raises(aiomqtt.MqttCodeError):
        await send_outbox(wire, outbox, asyncio.Event(),  # type: ignore[arg-type]
                          lambda _: None, 4, 10.0)
    assert [i.payload for i in outbox] == [b"a", b"b"]
